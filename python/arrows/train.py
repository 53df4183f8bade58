"""`arrows train`: the training loop (one process per device; see distributed.py for launching,
preflight.py for what is checked before a run starts, resume.py for where it continues from).

A step is one optimizer update over `batch_size × aggregate` windows (split evenly over the
processes). The loop: set the step's learning rate, accumulate `aggregate` micro-batches, clip the
gradient norm, step AdamW; then log, validate, sample and checkpoint at their cadences. Everything
the next step depends on is in the checkpoint, so a run killed at any point and resumed on CPU
reproduces the uninterrupted run's losses exactly.

A step never waits for the device: a non-finite loss skips its update inside fused AdamW, and the
loss is read back while the next step runs (on a GPU the host queues step n+1 while step n
computes). Only validation, samples and checkpoints, which need the weights of their own step,
wait for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from arrows import checkpoint
from arrows.distributed import (World, close_group, die_with_parent, external_world, init_group, launched_externally,
                                launcher_description, spawn)
from arrows.errors import (ArrowsError, BatchSizeError, CancelledError, InputError, naming_file, note_sigterm,
                           terminated)
from arrows.metrics import Metrics, require_wandb
from arrows.preflight import (check_attention, check_batch_split, check_devices, check_host_memory, check_run_folder, check_schedule_fits,
                              device_of, verify_data)
from arrows.resume import check_resumable, data_identity, end_recorded, finished_at, more_target, resume_point, where_it_stands
from arrows.schedule import lr_at


class TrainingStopped(ArrowsError):
    """Training met a non-finite loss or ran out of memory; the last checkpoint is intact."""


class _StopRequest:
    """A request to stop training, noted by a signal handler and acted on by the loop between two
    steps (fit): the run saves a checkpoint of the step it has reached, then ends. The signals:
    - Ctrl-C (SIGINT); a second one interrupts at once, keeping the last checkpoint written;
    - SIGTERM: `kill`, a cluster's preemption or time limit (SLURM sends it, then SIGKILL after a
      grace period), `docker stop`, systemd; a study's runs when the study process ends;
    - SIGUSR1: from the process that spawned this one (distributed.spawn), when that one alone was
      interrupted. Never "at once": the terminal's Ctrl-C may have reached this process too.

    Why not let KeyboardInterrupt fly wherever it lands: inside torch.save, the zip writer's clean-up
    turns it into a RuntimeError ("unexpected pos"), and the run ended with a traceback and exit
    code 1 instead of 130 (seen about once in 20 Ctrl-Cs at random instants). Handlers are installed
    only in the main thread, and only over Python's defaults: an inherited "ignore", or a handler
    of a program that runs arrows, stays in place. `announce` (rank 0's) says at once that the run
    is stopping: the loop may be in a long validation."""

    def __init__(self, announce=None):
        self.signal_name: str | None = None  # set by the first stop signal
        self._announce = announce
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                                (signal.SIGTERM, terminated), (signal.SIGUSR1, signal.SIG_DFL), (signal.SIGUSR1, _stop_before_training)):
            if signum not in self._previous and signal.getsignal(signum) is default:
                self._previous[signum] = signal.signal(signum, self._note)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _note(self, signum, frame):
        first = self.signal_name is None
        if signum == signal.SIGTERM:
            note_sigterm()  # the command's handler, back once training has stopped, ignores repeats
        if self.signal_name in (None, "SIGUSR1"):  # the spawning process's request names no cause; a signal of its own does
            self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the second one interrupts at once
        if first and self._announce is not None:
            again = "; Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
            cause = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, "interrupted")
            text = f"{cause}: stopping after this step, with a checkpoint of it{again}"
            try:
                self._announce(text)
            except RuntimeError:  # "reentrant call": the handler ran inside a write to the same stream
                os.write(sys.stderr.fileno(), f"\n{text}\n".encode())

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


@dataclass
class TrainOptions:
    device: str = "auto"  # "auto", "cpu" or "cuda"
    gpus: list[int] | None = None  # CUDA devices, one process each
    nproc: int = 1  # CPU processes (gloo)
    resume: str = "auto"  # "auto" (latest checkpoint if any), "never", or a checkpoint path
    more: int | None = None  # train this many steps beyond the checkpoint instead of up to steps_to_train
    compile: bool = True  # torch.compile on CUDA
    wandb: str | None = None
    dry_run: bool = False
    extra: dict = field(default_factory=dict)


def process_count(opts: TrainOptions) -> int:
    """How many processes train: the external launcher's, one per listed GPU, or --nproc."""
    if launched_externally():
        import os

        return int(os.environ.get("WORLD_SIZE") or os.environ["SLURM_NTASKS"])
    return len(opts.gpus) if opts.gpus else opts.nproc


def make_loaders(config, rank: int, world_size: int, device: str = "cpu"):
    """(training loader, validation loader) of process `rank`; each process gets its share of every
    batch. Refuses batch sizes that do not split evenly over the processes."""
    from arrows.loader import WindowLoader

    t = config.training
    check_batch_split(config, world_size)
    common = dict(backward=t.backwards, permutation=t.permutation, valid_fraction=t.valid_fraction, seed=t.seed,
                  rank=rank, world_size=world_size, threads=t.threads, device=device, stride=t.stride,
                  vocab_size=config.model.vocab_size)
    L = config.model.attn_length
    try:
        train_loader = WindowLoader(t.dataset_folder, L, t.batch_size // world_size, **common)
    except BatchSizeError as e:
        # The loader speaks of its own arguments ("lower the batch size"); a config's user needs the
        # keys. Only there: its other errors are about the data itself (an .h5's bos_id attribute).
        raise BatchSizeError(f"{e} (the config's training_params.batch_size, model_params.attn_length and "
                             "training_params.valid_fraction decide the batches)") from None
    valid_loader = WindowLoader(t.dataset_folder, L, t.val_batch_size // world_size, split="valid", **common)
    steps_per_epoch = len(train_loader) // t.aggregate
    if steps_per_epoch == 0:
        raise InputError(f"training_params.aggregate {t.aggregate}: a step takes {t.aggregate} batches of {t.batch_size} windows, and the "
                         f"training split holds only {len(train_loader)} such batches ({train_loader.windows:,} windows); lower aggregate "
                         f"or batch_size, or train on more data")
    return train_loader, valid_loader


def train(config, opts: TrainOptions) -> dict:
    """Train (or dry-run) `config`; returns the summary of rank 0."""
    check_devices(opts)
    if opts.wandb is not None:
        require_wandb(opts.wandb)  # before the run folder is made
    check_attention(config, opts)
    check_host_memory(config, opts)
    if opts.nproc > 1 and launched_externally():
        # The launcher's count would win silently; in a SLURM allocation's own shell (salloc, the
        # job script outside srun) this process would then wait for tasks that never start.
        raise InputError(f"--nproc {opts.nproc}: this process was started as one of a group by {launcher_description()}, which "
                         f"sets how many processes train; drop --nproc, or start arrows outside that launcher (outside srun, "
                         f"or without those variables)")
    check_batch_split(config, process_count(opts))
    check_run_folder(config)
    if opts.dry_run:
        verify_data(config)
        return dry_run(config, opts)
    world = external_world(opts.gpus, opts.device) if launched_externally() else None
    if world is not None and "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun killed with SIGKILL (kill -9, the out-of-memory killer) left its processes
        # training on, unseen, to the end of the run. Its death now reaches them as SIGTERM: they stop
        # after the same step with a checkpoint of it, saved by rank 0, which holds the folder's lock.
        arm = die_with_parent(os.getppid(), signal.SIGTERM)
        if arm is not None:
            arm()
    # The run folder is locked first, by the one process that launches (or rank 0 under torchrun).
    with _lock_run(config.run_dir) if world is None or world.is_main else contextlib.nullcontext():
        verify_data(config)
        if world is not None:
            return _worker_main(world, config, opts)
        nprocs = process_count(opts)
        if nprocs > 1:
            latest = config.run_dir / "checkpoints" / checkpoint.LATEST
            return spawn(_spawned, nprocs, (config, opts), after_failure=lambda: where_it_stands(latest))
        return _worker_main(World(0, 1, 0, device_of(opts, 0)), config, opts)


def _stop_before_training(signum, frame):
    raise KeyboardInterrupt


def _spawned(rank: int, config, opts: TrainOptions) -> dict:
    import os

    # The spawning process asks for a stop with SIGUSR1 when only it was interrupted (see
    # distributed.spawn): before the training loop that is a Ctrl-C; the loop then takes the signal
    # over as "stop after this step" (_StopRequest).
    signal.signal(signal.SIGUSR1, _stop_before_training)
    nprocs = process_count(opts)  # before RANK/WORLD_SIZE are set below: the spawning count
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank))
    return _worker_main(World(rank, nprocs, rank, device_of(opts, rank)), config, opts, spawned=True)


def _worker_main(world: World, config, opts: TrainOptions, spawned: bool = False) -> dict:
    import torch

    if world.device == "cpu" and spawned:
        # Share the cores between the processes spawned here instead of oversubscribing them. Under
        # torchrun or SLURM each process has its share already (torchrun's OMP_NUM_THREADS, the
        # cores SLURM gives a task), and the world counts the processes of every machine.
        torch.set_num_threads(max(1, (torch.get_num_threads() or 1) // world.world_size))
    init_group(world)
    try:
        return Trainer(config, world, opts).fit()
    except Exception as e:
        # When it failed, before close_group below makes the other processes fail in turn: the
        # spawning process names the first failure (distributed.spawn).
        with contextlib.suppress(AttributeError):  # an exception type without a __dict__
            e.failed_at = time.monotonic()
        raise
    finally:
        close_group(world)


class Trainer:
    def __init__(self, config, world: World, opts: TrainOptions):
        import torch

        from arrows.models import build_model

        self.config, self.world, self.opts = config, world, opts
        t, o = config.training, config.optim
        self.t, self.o = t, o
        self.run_dir = config.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = torch.device(world.device)
        self.cuda = self.device.type == "cuda"
        L = config.model.attn_length
        self.L = L
        self.train_loader, self.valid_loader = make_loaders(config, world.rank, world.world_size, world.device)
        self.steps_per_epoch = len(self.train_loader) // t.aggregate
        self.tokens_per_step = t.batch_size * t.aggregate * L  # all processes together
        self.data_identity = data_identity(t.dataset_folder)

        # The same initial weights in every process (DDP also broadcasts rank 0's).
        torch.manual_seed(t.seed)
        self.model = build_model(config.model_dict()).to(self.device)
        # Fused AdamW on every device: one kernel per step, and it can skip a step on the device
        # itself (`found_inf`, see _train_step).
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=True)
        self.step = 0
        self.step_saved = None  # the step of the latest checkpoint on disk
        # Loss sum and step count of the steps since the last logged record, carried over by a
        # checkpoint: a resume between two records logged the next one over fewer steps than the
        # uninterrupted run's (step_log 5, save_every 3: step 10's loss averaged steps 7-10).
        self.unlogged = (0.0, 0)
        self.changed_settings = []  # on resume: settings that differ from the checkpoint's (check_resumable)
        self._stop: _StopRequest | None = None  # while fit trains: a stop asked for by a signal
        self._stop_agreed = False  # every process has seen a stop request (see fit)
        resume_from = resume_point(opts.resume, self.run_dir)
        if resume_from is not None:
            self._load(resume_from)
        else:
            # Seeded per rank after init: dropout differs between ranks, as independent batches would.
            torch.manual_seed(t.seed + 1000 * world.rank)
        self.total_steps = self._planned_steps()
        check_schedule_fits(config, self.total_steps)
        self.attention_choice = self._choose_attention()
        self.net = self.model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[self.device.index] if self.cuda else None)
        if self.cuda and opts.compile:
            # For the RNNs dynamo leaves nn.GRU/nn.LSTM to cuDNN (a graph break) and compiles the
            # embedding and the head + loss around them. The chunked head always runs outside the
            # graph (head_loss.py says why).
            self.net = torch.compile(self.net)
        self.tokenizer = self._tokenizer()

    # ---- setup helpers -------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        payload = checkpoint.load(path)
        finished = finished_at(payload, self.config, self.opts.more, self.steps_per_epoch)
        self.changed_settings = check_resumable(path, payload, self.config, self.world.world_size, finished)
        ranks = payload["per_rank"]
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint of an earlier arrows may carry the unfused setting
            group.update(fused=True, foreach=None)
            # The config's betas and weight decay, not the checkpoint's that load_state_dict restored: a
            # resume may change them (check_resumable), and the change was said but not made. (The
            # learning rate is set at every step from the schedule.)
            group.update(betas=tuple(self.o.betas), weight_decay=self.o.weight_decay)
        self.step = int(payload["step"])
        self.unlogged = tuple(payload.get("unlogged", (0.0, 0)))  # not in checkpoints before 2026-11-29
        if len(ranks) == self.world.world_size:  # else finished: nothing of the data is read again
            mine_rank = ranks[self.world.rank]
            self.train_loader.load_state_dict(mine_rank["loader"])
            checkpoint.set_rng_state(mine_rank["rng"], self.device)
        self.resumed_from = self.step
        self.step_saved = self.step
        self.resumed_plan = {k: payload.get(k) for k in ("more", "total_steps")}  # see more_target
        self.resumed_config = payload["config"]  # what it trained under until now (see _write_config)
        self.resumed_path = path

    def _choose_attention(self) -> str | None:
        """With `attention: "auto"` on CUDA, measure the kernels at this run's shape and switch the
        model to the fastest correct one (before it is compiled); every process uses rank 0's
        choice. Returns the line that says what was chosen, or None when nothing was measured."""
        m = self.config.model
        if not (self.cuda and m.model_type == "gpt" and m.attention == "auto"):
            return None
        from arrows.models.attention_choice import choose_attention, describe

        batch, head_dim = self.t.batch_size // self.world.world_size, m.embed_dim // m.n_heads
        choice, report = choose_attention(batch, m.n_heads, self.L, head_dim, m.dropout, self.device, compiled=self.opts.compile)
        if self.world.distributed:
            import torch.distributed as dist

            shared = [choice]
            dist.broadcast_object_list(shared, src=0)
            choice = shared[0]
        self.model.set_attention_impl(choice)
        return describe(choice, report, f"B={batch} H={m.n_heads} T={self.L} D={head_dim} dropout={m.dropout}")

    def _planned_steps(self) -> int:
        if self.opts.more is not None:
            return more_target(self.opts.more, self.step, getattr(self, "resumed_plan", None), end_recorded(self.run_dir, self.step))
        if self.t.steps_to_train is not None:
            return int(self.t.steps_to_train)
        return self.steps_per_epoch  # steps_to_train null: one epoch

    def _tokenizer(self):
        """For decoding samples (None: no samples)."""
        from arrows.data import find_tokenizer

        return find_tokenizer(self.t.dataset_folder, self.t.tokenizer_path)

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        import torch

        w, t = self.world, self.t
        resumed = getattr(self, "resumed_from", None)
        if self.step >= self.total_steps:
            # Nothing to train: the run folder, its config.json and summary.json stay as they are,
            # unless the run was killed in its last moments (_finish_end).
            finished_end = self._finish_end() if w.is_main else False
            if w.is_main and self.changed_settings:
                # An edited config given to a finished run (or study) trains nothing: its report is of the
                # settings the run trained under, which the edit would otherwise seem to have changed.
                print(f"note: {self.run_dir} has trained all its steps; these settings of the config differ from those it "
                      f"trained under and were not used: {'; '.join(self.changed_settings)} (arrows train --more N trains N steps more under them)",
                      file=sys.stderr, flush=True)
            return {"run_dir": str(self.run_dir), "steps": self.step, "valid_loss": None, "tokens_seen": self.step * self.tokens_per_step,
                    "nothing_to_do": True, "finished_end": finished_end}
        if w.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_partial(self.ckpt_dir)
            for p in self.run_dir.glob("*.json.tmp"):  # left by a crash in _write_whole
                p.unlink()
            if resumed is None:
                self._start_over()
            else:
                self._adopt_resume_point()
                self._make_missed_backup()
            self._write_config()
            self.metrics = Metrics(self.run_dir, resume_step=resumed, config=self.config.to_dict(), wandb_project=self.opts.wandb)
            if self.changed_settings:
                self.metrics.log({"step": self.step, "changed_settings": "; ".join(self.changed_settings)})
            if self.attention_choice:
                print(self.attention_choice, file=sys.stderr, flush=True)
                self.metrics.log({"step": self.step, "attention": self.attention_choice})
        batches = self._batches()
        bar = self._bar = _Progress(self.total_steps, self.step) if w.is_main else None
        # The logging window: loss sum and steps since the last record (a resume's checkpoint
        # carries them over), the steps timed in this process, the time they started from (the
        # previous window's last step), and the seconds since then spent validating, sampling and
        # saving, which tokens/s leaves out.
        self._window = [*self.unlogged, 0, time.perf_counter(), 0.0]
        self._last_valid = None
        stop = self._stop = _StopRequest(announce=bar.note if bar is not None else None)
        try:
            # On CUDA a step is queued without waiting for the GPU; its loss is read back while the
            # GPU runs the next one (`pending`). Validation, samples and checkpoints need the weights
            # of their very step, so at those steps the loop waits.
            pending = None
            while self.step < self.total_steps:
                # One process stops at once. Several must stop after the same step, for the
                # checkpoint is written together: the request travels with each step's loss to every
                # process (_train_step), and each acts on it as it reads that loss (_after_step).
                if self._stop_agreed or (stop.requested and not w.distributed):
                    break
                result = self._train_step(batches)
                self.step += 1
                if pending is not None:
                    self._after_step(*pending)
                pending = (self.step, result)
                if self._due(self.step):
                    self._after_step(*pending)
                    pending = None
            if self.step < self.total_steps:  # stopped on request
                if pending is not None:
                    self._after_step(*pending)  # its loss joins the record being summed (the checkpoint's `unlogged`)
                if self.step_saved != self.step:
                    self._save(checkpoint.LATEST)
                by = " by SIGTERM" if stop.signal_name == "SIGTERM" else ""  # else Ctrl-C, or another process's request
                raise CancelledError(f"interrupted{by} at step {self.step}; its checkpoint is saved in {self.ckpt_dir / checkpoint.LATEST}: "
                                     f"run the same command to continue")
        except KeyboardInterrupt:  # a second Ctrl-C
            saved = self.step_saved
            where = f"the checkpoint of step {saved} in {self.ckpt_dir} is intact" if saved is not None else "no checkpoint was written yet"
            raise CancelledError(f"interrupted at step {self.step}; {where}: run the same command to continue") from None
        except torch.cuda.OutOfMemoryError:
            from arrows.models.head_loss import resolve_head_loss

            raise TrainingStopped(
                f"CUDA out of memory at training_params.batch_size {t.batch_size} (× attn_length {self.L}); lower batch_size and raise "
                f"aggregate to keep the same effective batch"
                + (", or set model_params.head_loss to \"chunked\" (or add --head-loss chunked; the batch's logits are then never held at once)"
                   if resolve_head_loss(self.config.model.head_loss, "cuda") == "plain" else "")
                + ", or use a smaller model. The last checkpoint is intact."
            ) from None
        finally:
            stop.restore()
            if bar is not None:
                bar.close()
            if w.is_main:
                # What stopped the run is what it says: closing the log retries a record whose write
                # failed, and the second failure replaced the first one's message.
                with contextlib.suppress(OSError) if sys.exc_info()[0] is not None else contextlib.nullcontext():
                    self.metrics.close()
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "valid_loss": self._last_valid, "tokens_seen": self.step * self.tokens_per_step}
        if w.is_main:
            _write_whole(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def _start_over(self) -> None:
        """A run that starts afresh in a folder an earlier run used (`--resume never`) removes that
        run's checkpoints, summary and old configs, as Metrics removes its logs: nothing of it is
        left to mix with this run (a start-over killed before its first save was resumed from the
        earlier run's checkpoint)."""
        removed = checkpoint.remove_earlier_run(self.ckpt_dir)
        (self.run_dir / "tokenizer.json").unlink(missing_ok=True)  # this run writes its own, if its data has one
        for p in [self.run_dir / "summary.json", *self.run_dir.glob("config.until_step_*.json")]:
            if p.is_file():
                p.unlink()
                removed.append(p.name)
        if removed:
            print(f"note: starting over in {self.run_dir}: removed the earlier run's {', '.join(removed)}", file=sys.stderr, flush=True)

    def _adopt_resume_point(self) -> None:
        """A run resumed from another checkpoint than its latest.pt (`--resume step_N.pt`) makes it
        its latest.pt at once: the records after step N are dropped (Metrics), and a newer latest.pt
        left in place was what the next `--resume auto` continued from (after an interruption before
        the next save), past the dropped records."""
        latest = self.ckpt_dir / checkpoint.LATEST
        if latest.exists() and latest.samefile(self.resumed_path):
            return
        checkpoint.copy(self.resumed_path, latest)

    def _finish_end(self) -> bool:
        """A run killed after its last checkpoint but before its summary.json (while it wrote the last
        backup, or just after) had nothing left to train when resumed, and its summary.json (or that
        of this end, after an earlier end's: --more) and last backup were never made: they are made
        here, as the uninterrupted run made them, and True is returned. The last step's validation
        loss is the one its metrics.jsonl holds (logged before that checkpoint)."""
        from arrows import metrics

        path = self.run_dir / "summary.json"
        if end_recorded(self.run_dir, self.step):
            return False
        self._make_missed_backup()
        valid = []
        with contextlib.suppress(FileNotFoundError):
            valid = [r["valid_loss"] for r in metrics.read(self.run_dir) if r.get("step") == self.step and "valid_loss" in r]
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "valid_loss": valid[-1] if valid else None,
                   "tokens_seen": self.step * self.tokens_per_step}
        _write_whole(path, json.dumps(summary, indent=2) + "\n")
        return True

    def _make_missed_backup(self) -> None:
        """At a backup step the run writes latest.pt, then step_N.pt: killed between the two, it
        resumes from latest.pt at step N and never comes back to that step, so the backup of step N
        is made here, a copy of the checkpoint it resumes from."""
        if "backup" not in self._due(self.step):
            return
        backup = self.ckpt_dir / f"step_{self.step:08d}.pt"
        if not backup.exists():
            checkpoint.copy(self.resumed_path, backup)

    def _write_config(self) -> None:
        """config.json: the resolved config the run trains under. When a resumed run continues under
        changed settings (a new lr, more steps), the one it trained under so far is kept beside it
        as config.until_step_N.json, and the change is said and logged."""
        path = self.run_dir / "config.json"
        if self.changed_settings:
            # The checkpoint's config, not config.json: that is already the changed one when a resume
            # under these changes stopped before its next save (and was moved over the true one).
            until = self.run_dir / f"config.until_step_{self.step}.json"
            _write_whole(until, json.dumps(self.resumed_config, indent=2) + "\n")
            said = "; ".join(self.changed_settings)
            print(f"note: continuing from step {self.step} with changed settings: {said}", file=sys.stderr, flush=True)
        _write_whole(path, json.dumps(self.config.to_dict(), indent=2) + "\n")
        # A copy of the tokenizer, so that `arrows generate` needs only the run folder (copied off a
        # cluster, or with its data gone): without it, generate needed the data or a hand-set
        # tokenizer_path. (A resume keeps the data, whose identity includes its tokenizer's hash.)
        if self.tokenizer is not None:
            _write_whole(self.run_dir / "tokenizer.json", self.tokenizer.to_str())

    def _due(self, step: int) -> set[str]:
        """What runs after `step` besides logging: "validate", "sample", "save", "backup". Each
        needs the model as it is after that very step (not only its loss)."""
        t, last = self.t, step == self.total_steps
        due = set()
        if last or step % (t.valid_every or self.total_steps) == 0:
            due.add("validate")
        if t.sample_every and (last or step % t.sample_every == 0):
            due.add("sample")
        if last or step % t.save_every == 0:
            due.add("save")
        if t.backup_every and step % t.backup_every == 0:
            # latest.pt too: it is what a resume continues from, and must never be older than a
            # backup (backup_every 1500 with save_every 1000 resumed from step 1000, not 1500).
            due.update(("save", "backup"))
        return due

    def _after_step(self, step: int, result: "_StepResult") -> None:
        """Read step `step`'s loss back; stop on a non-finite one; log, validate, sample and save at
        their cadences (the last three only when `step` is the latest step: see fit and _due)."""
        w, t = self.world, self.t
        loss, grad_norm = result.read()
        self._stop_agreed = self._stop_agreed or result.stop_requested()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            saved = (f"The checkpoint of step {self.step_saved} in {self.ckpt_dir} is intact" if self.step_saved is not None
                     else "No checkpoint was written yet")
            raise TrainingStopped(
                f"the loss became {loss} (gradient norm {grad_norm}) at step {step}; its update was skipped and training stopped. "
                f"{saved}. Lower optim_params.lr or raise warmup_steps, then resume."
            )
        self._window[0] += loss
        self._window[1] += 1
        self._window[2] += 1
        if step % t.step_log == 0 or step == self.total_steps:
            # Timed up to the moment this step was handed to the device, not to now: a step whose
            # loss is read at once (before a checkpoint) and one read a step later (CUDA) count
            # the same; the pauses for checkpoints and validation are not training.
            window_loss, window_steps, timed_steps, window_t0, paused = self._window
            seconds = max(result.queued_at - window_t0 - paused, 1e-9)
            record = {"step": step, "loss": window_loss / window_steps, "lr": self._lr(step - 1), "grad_norm": grad_norm,
                      "tokens_per_s": self.tokens_per_step * timed_steps / seconds, "epoch": result.epoch, "time": time.time()}
            if w.is_main:
                self.metrics.log(record)
                self._bar.update(step, record)
            self._window = [0.0, 0, 0, result.queued_at, 0.0]
        if step != self.step:
            return
        pause_t0 = time.perf_counter()
        try:
            self._validate_sample_save(step)
        finally:
            self._window[4] += time.perf_counter() - pause_t0

    def _validate_sample_save(self, step: int) -> None:
        """What is due after `step` besides logging (see _due)."""
        w = self.world
        due = self._due(step)
        if "validate" in due:
            self._last_valid = self._validate()
            if w.is_main:
                self.metrics.log({"step": step, "valid_loss": self._last_valid})
                self._bar.note(f"step {step}: validation loss {self._last_valid:.4f}")
        if w.is_main and "sample" in due:
            sample = self._sample()
            if sample is not None:
                self._bar.note(f"step {step}: sample {sample[:120]!r}")
        if "save" in due:
            self._save(checkpoint.LATEST)
        if "backup" in due:
            self._save(f"step_{step:08d}.pt")

    def _lr(self, step: int) -> float:
        return lr_at(step, self.o, self.total_steps, self.t.cooldown_finish)

    def _batches(self):
        """Training batches forever, epoch after epoch (the loader tracks its position)."""
        while True:
            yield from self.train_loader

    def _train_step(self, batches) -> "_StepResult":
        import torch

        lr = self._lr(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.net.train()
        agg = self.t.aggregate
        total = torch.zeros((), device=self.device)
        for micro in range(agg):
            x, y = next(batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # Gradients are averaged between processes only on the last micro-batch.
            sync = self.world.distributed and micro < agg - 1
            with (self.net.no_sync() if sync and hasattr(self.net, "no_sync") else contextlib.nullcontext()):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                    _, loss = self.net(x, y)
                (loss / agg).backward()
            total += loss.detach() / agg
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.o.clip if self.o.clip is not None else float("inf"))
        # With the loss goes this process's stop request (see fit): averaged, it is above 0 in every
        # process when any process was asked to stop, and all of them read it at the same step.
        stop = torch.full((), float(self._stop is not None and self._stop.requested), device=self.device)
        if self.world.distributed:
            import torch.distributed as dist

            reduced = torch.stack([total.float(), stop])
            dist.all_reduce(reduced, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.device.type != "cuda":
                reduced /= self.world.world_size  # gloo has no AVG
            total, stop = reduced[0], reduced[1]
        # Nothing here waits for the device. A non-finite loss or gradient norm makes fused AdamW
        # skip the whole update (and not count the step), on the device: `found_inf` is the protocol
        # GradScaler uses. _after_step reads the loss back later and stops the run.
        stats = torch.stack([total.float(), grad_norm.float(), stop])
        self.optimizer.found_inf = (~torch.isfinite(stats[:2]).all()).float()
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)
        if not self.cuda:
            return _StepResult(stats, epoch=self.train_loader.epoch)
        # Copied to pinned memory without waiting; read once the GPU is past this step.
        host = torch.empty(3, dtype=torch.float32, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _StepResult(host, done, epoch=self.train_loader.epoch)

    def _validate(self) -> float:
        import torch

        self.net.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.valid_loader.set_epoch(0)  # the same spans, in the same order, every time
        try:
            with torch.no_grad():
                for b, (x, y) in enumerate(self.valid_loader):
                    if self.t.valid_batches is not None and b >= self.t.valid_batches:
                        break
                    x, y = x.to(self.device), y.to(self.device)
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                        _, loss = self.model(x, y)
                    sums += torch.stack([loss.double() * y.numel(), torch.tensor(float(y.numel()), dtype=torch.float64, device=self.device)])
        except torch.cuda.OutOfMemoryError:
            # Not the training batch (fit's message): validation has its own, val_batch_size.
            saved = f"the checkpoint of step {self.step_saved} is intact" if self.step_saved is not None else "no checkpoint was written yet"
            raise TrainingStopped(
                f"CUDA out of memory validating at step {self.step}, at training_params.val_batch_size {self.t.val_batch_size} "
                f"(× attn_length {self.L}); lower val_batch_size (the training batch fitted); {saved}."
            ) from None
        if self.world.distributed:
            import torch.distributed as dist

            dist.all_reduce(sums)
        return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")

    def _sample(self) -> str | None:
        """A short text from BOS, decoded in reading order (a backward model's output is flipped).
        Uses its own generator: the training random stream is untouched (exact resume)."""
        import torch

        if self.tokenizer is None:
            return None
        gen = torch.Generator(device=self.device).manual_seed(self.t.seed + self.step)
        start = torch.full((1, 1), self.train_loader.bos_id, dtype=torch.long, device=self.device)
        self.model.eval()
        with torch.no_grad():
            ids = self.model.generate(start, self.t.sample_tokens, generator=gen)[0, 1:].tolist()
        if self.t.backwards:
            ids = ids[::-1]  # back into reading order (a permuted model's output stays as generated)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        path = self.run_dir / "samples.jsonl"
        with naming_file(path), open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "text": text}) + "\n")
        return text

    def _save(self, name: str) -> None:
        import torch.distributed as dist

        per_rank = {"loader": self.train_loader.state_dict(), "rng": checkpoint.rng_state(self.device)}
        if self.world.distributed:
            gathered = [None] * self.world.world_size
            dist.all_gather_object(gathered, per_rank)
        else:
            gathered = [per_rank]
        if self.world.is_main:
            payload = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "total_steps": self.total_steps,
                "per_rank": gathered,  # each process's loader position and random states
                "config": self.config.to_dict(),
                "more": self.opts.more,  # the --more N it trains under (see more_target)
                # The id every training window began with, which sampling must begin with too: the
                # data's (a store made with --bos records its own), which the run folder alone
                # cannot tell once the data is gone.
                "bos_id": self.train_loader.bos_id,
                "data": self.data_identity,  # a resume may find the data moved (check_resumable)
                "unlogged": self._window[:2],  # loss sum and steps since the last logged record
            }
            checkpoint.save(self.ckpt_dir / name, payload)
        if self.world.distributed:
            dist.barrier()
        if name == checkpoint.LATEST:
            # In every process, not only the one that wrote it: any of them may be the one that
            # stops first and says where the run stands (distributed.spawn reports its message).
            self.step_saved = self.step


def _write_whole(path: Path, text: str) -> None:
    """Write the file `path` whole or not at all: a temporary file beside it, renamed over it. Written
    in place, config.json was left empty by a full disk (and `arrows generate` needs it), and could be
    read half-written by an `arrows generate` while a resumed run started. A failed write names the file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with naming_file(path):
            tmp.write_text(text, encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


class _StepResult:
    """A step's (loss, gradient norm) and whether any process was asked to stop as it was queued,
    readable once the device has computed them."""

    def __init__(self, values, done=None, *, epoch: int):
        self.values, self.done = values, done  # done: a CUDA event recorded after the copy to `values`
        # The epoch of the step's last batch, taken as the step is queued: its record may be logged
        # after the next step has drawn its batches (from the next epoch, after an epoch's last step).
        self.epoch = epoch
        self.queued_at = time.perf_counter()  # when the step was handed to the device (on a CPU: done)

    def read(self) -> tuple[float, float]:
        if self.done is not None:
            self.done.synchronize()
        return float(self.values[0]), float(self.values[1])

    def stop_requested(self) -> bool:
        """After read()."""
        return float(self.values[2]) > 0


def _lock_run(run_dir: Path):
    """An exclusive lock on the run folder, held while the returned file is open: a second
    `arrows train` into it is refused at once."""
    import errno

    from arrows.folder_lock import hold_lock

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    try:
        f = open(path, "a")
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        if not path.exists():
            # A folder this process cannot write to (a read-only mount, another user's runs) cannot be
            # written by this run either: nothing to guard. A finished run is then left as it is
            # ("nothing to do"), where this failed with ".lock: Read-only file system"; any other
            # run fails at its first write, which names the file.
            return contextlib.nullcontext()
        f = open(path)  # flock needs no write access to the file
    return hold_lock(f, f"{run_dir}: another arrows train is running in this folder")


class _Progress:
    """A bar with loss, tokens/s and ETA on a terminal; plain lines otherwise (rank 0 only)."""

    def __init__(self, total: int, start: int):
        self.total, self.live = total, sys.stderr.isatty()
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, record: dict) -> None:
        info = f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  lr {record['lr']:.2e}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        else:
            print(f"step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def dry_run(config, opts: TrainOptions) -> dict:
    """Check config, data, tokenizer, devices and the run folder's checkpoint as training would
    (rank 0's view); report the model and the plan. No training."""
    from arrows.models import count_parameters

    t = config.training
    nprocs = process_count(opts)
    loader, _ = make_loaders(config, 0, nprocs)
    steps_per_epoch = len(loader) // t.aggregate
    planned = t.steps_to_train or steps_per_epoch
    start, changed, payload = 0, [], None
    path = resume_point(opts.resume, config.run_dir)
    ckpts = config.run_dir / "checkpoints"
    if path is not None:
        payload = checkpoint.load(path)
        changed = check_resumable(path, payload, config, nprocs, finished_at(payload, config, opts.more, steps_per_epoch))
        start = int(payload["step"])
    if opts.more is not None:
        planned = more_target(opts.more, start, payload, end_recorded(config.run_dir, start))
    check_schedule_fits(config, planned)
    return {
        "model_type": config.model.model_type,
        "parameters": count_parameters(config.model_dict()),
        "devices": [device_of(opts, rank) for rank in range(nprocs)],
        "tokens": loader.tokens,
        "train_windows": loader.windows,
        "steps_per_epoch": steps_per_epoch,
        "start_step": start,
        "resume_from": None if path is None else str(path),
        "changed_settings": changed,
        "planned_steps": planned,
        "tokens_per_step": t.batch_size * t.aggregate * config.model.attn_length,
        "run_dir": str(config.run_dir),
        # what starting over (no checkpoint to resume) removes (Trainer._start_over)
        "removes": [] if path is not None else sorted(p.name for p in [ckpts / checkpoint.LATEST, *ckpts.glob("step_*.pt")] if p.is_file()),
    }
