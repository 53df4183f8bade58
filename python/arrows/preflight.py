"""What a run checks before anything starts (and all that `arrows train --dry-run` checks), so that
a mistake is said at once, naming the key, file or option to change, rather than at step 1 or hours
into the run: the devices asked for, the memory a CPU run needs, the token store's checksums, the
run folder, how the batch splits over the processes and whether the schedule fits the run. Also
which device each process trains on (`device_of`)."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from arrows.errors import CorruptDataError, InputError

if TYPE_CHECKING:
    from arrows.train import TrainOptions


def check_run_folder(config) -> None:
    """The run folder (save_loc/run_name) can be made: no file, nor a link to nothing, stands at it
    or above it. Said before anything starts (--dry-run too), where making it failed with "File exists"."""
    run_dir = config.run_dir
    if run_dir.resolve() == Path(config.training.dataset_folder).resolve():
        # The run writes its own tokenizer.json into its folder: over the store's, re-serialized with
        # another hash, and the store was then refused as damaged.
        raise InputError(f"{run_dir}: the run folder (training_params.save_loc / run_name) is the token store it trains on "
                         f"(dataset_folder); the run would write its files into the store, its tokenizer.json over the "
                         f"store's; give another save_loc or run_name")
    for inside in ("checkpoints", "tensorboard"):
        # Found only when first written: the first checkpoint, hours into the run.
        p = run_dir / inside
        if p.exists() and not p.is_dir():
            raise InputError(f"{p}: a file, where the run keeps its {inside} (a folder); move the file away")
    for p in (run_dir, *run_dir.parents):
        if p.is_symlink() and not p.exists():
            # A link to a disk not mounted, or to a folder since removed: making the folder failed with "File exists".
            raise InputError(f"{p}: a symbolic link to {os.readlink(p)}, which does not exist, where the run folder {run_dir} "
                             f"(training_params.save_loc / run_name) needs a folder; mount or make its target, or give another "
                             f"save_loc or run_name")
        if p.exists():
            if not p.is_dir():
                raise InputError(f"{p}: a file, where the run folder {run_dir} (training_params.save_loc / run_name) needs a folder; "
                                 "move the file, or give another save_loc or run_name")
            return


def check_batch_split(config, world_size: int) -> None:
    t = config.training
    for name, size in (("batch_size", t.batch_size), ("val_batch_size", t.val_batch_size)):
        if size % world_size:
            raise InputError(f"training_params.{name} {size} does not split evenly over {world_size} processes: "
                             f"make it a multiple of {world_size}, or use another process count")


def check_schedule_fits(config, total_steps: int) -> None:
    """The check the config makes of warmup + cooldown against steps_to_train, for a total it
    could not know: one epoch (steps_to_train null) or `--more N`. The schedule is otherwise laid
    over a run too short for it (the learning rate never reached its peak, and the run ended
    without a cooldown)."""
    t, o = config.training, config.optim
    if t.cooldown_finish is None:
        return
    cool = math.ceil(t.cooldown_finish * total_steps)
    if o.warmup_steps + cool > total_steps:
        raise InputError(f"optim_params.warmup_steps: {o.warmup_steps} warmup steps and a cooldown of {cool} steps (cooldown_finish) "
                         f"do not fit in the {total_steps} steps this run trains; lower warmup_steps, or train more steps")


def check_devices(opts: TrainOptions) -> None:
    """The GPUs or CUDA asked for are there, and --nproc is not asked of a CUDA run."""
    if opts.nproc > 1 and opts.device != "cpu" and not opts.gpus and device_of(opts, 0) != "cpu":
        # --nproc starts CPU processes; on a CUDA machine each took the GPU of its rank, and a process
        # whose GPU was not there crashed ("invalid device ordinal") once started.
        raise InputError(f"--nproc {opts.nproc} starts processes on the CPU, and this run is on CUDA ({device_of(opts, 0)}): "
                         f"add --device cpu to train on the CPU, or use --gpus (one process per GPU, e.g. --gpus "
                         f"{','.join(map(str, range(opts.nproc)))}) to train on GPUs")
    if not (opts.gpus or opts.device == "cuda"):
        return
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    asked = f"--gpus {','.join(map(str, opts.gpus))}" if opts.gpus else "--device cuda"
    if visible == 0:
        raise InputError(f"{asked}: no CUDA device is visible; train on the CPU with --device cpu")
    missing = [g for g in opts.gpus or [] if g >= visible]
    if missing:
        raise InputError(f"{asked}: only {visible} CUDA device(s) are visible, numbered 0 to {visible - 1}")


def check_attention(config, opts: TrainOptions) -> None:
    """The GPU-only attention paths, refused up front on a CPU run instead of failing at step 1."""
    if config.model.model_type != "gpt" or device_of(opts, 0) != "cpu":
        return
    if config.model.attention == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError("model_params.attention 'triton' runs on CUDA and this run is on the CPU; use 'sdpa' "
                         "(or set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter, very slowly)")
    if config.model.attention == "flex":
        raise InputError("model_params.attention 'flex' trains on CUDA only (FlexAttention has no backward pass on the CPU); use 'sdpa'")


def available_memory_bytes() -> int | None:
    """Memory this process could still take: MemAvailable, or less under a memory limit of its control
    group (v1 or v2, or any group above it: a container, a SLURM job). None where neither can be read
    (not Linux). The same figure `arrows tokenize` checks its BPE training against."""
    from arrows._arrows import available_memory

    return available_memory()


# Peak memory of a CPU step per fp32 logit, measured with the nano GPT (vocabulary 50257): the plain
# head holds the logits, their log-softmax and their gradient (4.2 × the logits), the chunked one
# a chunk of logits and its gradient (2.2 ×); validation, without gradients, about half of each.
_LOGIT_COPIES = {"plain": 4.0, "chunked": 2.0}


def head_memory_bytes(config, processes: int) -> tuple[int, int]:
    """About how much memory the head's logits take at once in a CPU training step and in a
    validation step, all `processes` of this machine together."""
    from arrows.models.head_loss import DEFAULT_CHUNK_ROWS, resolve_head_loss

    m, t = config.model, config.training
    head = resolve_head_loss(m.head_loss, "cpu")
    copies = _LOGIT_COPIES[head]

    def held(batch: int, grad: bool) -> int:
        rows = batch * m.attn_length  # all processes together
        if head == "chunked":
            rows = min(rows, DEFAULT_CHUNK_ROWS * processes)
        return int(rows * m.vocab_size * 4 * (copies if grad else copies / 2))

    return held(t.batch_size, True), held(t.val_batch_size, False)


def check_host_memory(config, opts: TrainOptions) -> None:
    """A CPU run whose head cannot fit is refused before it starts: the kernel's out-of-memory
    killer would end it at the first step without a word (the paper's nano config, batch 250,
    needs about 51 GB with the plain head). CUDA runs get torch's out-of-memory error instead, which
    the trainer turns into the same advice."""
    if device_of(opts, 0) != "cpu":
        return
    available = available_memory_bytes()
    if available is None:
        return
    processes = opts.nproc  # a CPU run: --gpus does not apply
    train_bytes, valid_bytes = head_memory_bytes(config, processes)
    need, what = max((train_bytes, "training"), (valid_bytes, "validation"))
    if need <= available:
        _check_model_memory(config, processes, available)
        return
    m, t = config.model, config.training
    key = "batch_size" if what == "training" else "val_batch_size"
    batch = getattr(t, key)
    advice = f"lower training_params.{key}" + (" and raise aggregate to keep the same effective batch" if what == "training" else "")
    if m.head_loss == "plain":  # "auto" is chunked on a CPU already
        chunked = head_memory_bytes(replace(config, model=replace(m, head_loss="chunked")), processes)
        advice = (f"add --head-loss chunked (model_params.head_loss; the logits are then made a chunk of rows at a time: about "
                  f"{max(chunked) / 1e9:.1f} GB), or {advice}")
    raise InputError(
        f"a {what} step on the CPU holds the logits of {batch} windows × attn_length {m.attn_length} over vocab_size "
        f"{m.vocab_size}: about {need / 1e9:.1f} GB with model_params.head_loss \"{m.head_loss}\""
        f"{' (chunked on the CPU)' if m.head_loss == 'auto' else ''}, and this machine has "
        f"{available / 1e9:.1f} GB available. To fit, {advice}."
    )


# fp32 weights, their gradients and AdamW's two moments: the bytes a CPU run holds per parameter.
_BYTES_PER_PARAMETER = 16


def _check_model_memory(config, processes: int, available: int) -> None:
    """A CPU run whose model alone cannot be trained in the memory available is refused before it
    starts (its --dry-run too): building it ended in torch's allocator traceback ("can't allocate
    memory: you tried to allocate 160000000000 bytes") for an LSTM of hidden size 100,000, and
    one that the system lets allocate would be killed at its first step."""
    from arrows.models import count_parameters

    m = config.model
    parameters = count_parameters(config.model_dict())
    need = parameters * _BYTES_PER_PARAMETER * processes
    if need <= available:
        return
    each = f" in each of the {processes} processes" if processes > 1 else ""
    raise InputError(
        f"model_params: this {m.model_type} model has {parameters:,} parameters (n_layers {m.n_layers}, embed_dim {m.embed_dim}); "
        f"training it on the CPU takes about {need / 1e9:.1f} GB (weights, gradients and AdamW's two moments, "
        f"{_BYTES_PER_PARAMETER} bytes per parameter{each}), and this machine has {available / 1e9:.1f} GB available. "
        f"Use a smaller model{' or fewer --nproc processes' if processes > 1 else ''}, or train on a GPU."
    )


def verify_data(config) -> None:
    """Check every shard's checksum and the tokenizer's hash before anything trains: a damaged or
    mixed-up token store is refused, naming each bad file. (Opening a store checks only headers and
    sizes; this reads the whole store once, at disk speed.)"""
    folder = Path(config.training.dataset_folder)
    if not (folder / "manifest.json").is_file():
        return  # a reference .h5 file: no checksums to check
    from arrows.data import TokenStore

    store = TokenStore(folder)
    nbytes = len(store) * store.dtype.itemsize
    if nbytes > 1e9:  # a noticeable pause: say what it is
        print(f"checking the checksums of {len(store.manifest['shards'])} shards ({nbytes / 1e9:.1f} GB) before training", file=sys.stderr, flush=True)
    problems = store.verify()
    if problems:
        raise CorruptDataError(
            f"{folder}: the token store is damaged, nothing was trained:\n  " + "\n  ".join(problems)
            + "\nRe-create it with `arrows tokenize ... --force`."
        )


def device_of(opts: TrainOptions, local_rank: int) -> str:
    """The device the process of `local_rank` trains on: its GPU of --gpus; CUDA with --device cuda,
    or with auto where CUDA is present; else the CPU."""
    import torch

    if opts.gpus:
        return f"cuda:{opts.gpus[local_rank]}"
    if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible")
        return f"cuda:{local_rank}"
    return "cpu"
