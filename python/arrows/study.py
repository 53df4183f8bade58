"""`arrows study`: forward and backward runs with identical settings, then `compare`.

The two directions share everything but `backwards`: the initial weights (same seed), the order
of the windows (same seed, same spans; the backward run reads each one flipped) and the split.
A study folder holds `fw/` and `bw/` (with several seeds, `seed<S>/fw` and `seed<S>/bw`), the
per-run configs, `study.json` and the comparison report in `report/`. A config with a
`permutation` makes the second run read each window in that order instead (`perm/`, not `bw/`).

Runs are resumable: running the same study again continues each run from its checkpoint (a
finished run has nothing to do), then compares again. The folder keeps its seed count.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from arrows.compare import STUDY_FILE
from arrows.errors import CancelledError, CorruptDataError, InputError
from arrows.folder_lock import hold_lock
from arrows.output_file import atomic_output
from arrows.report import check_report_folder


@dataclass
class StudyRun:
    name: str  # folder inside the study: "fw", "seed1/bw", ...
    config: object  # the resolved arrows.config.Config
    devices: list[int] | None = None  # GPUs for this run when runs go side by side

    @property
    def stem(self) -> str:
        """The run's name as one file name ("seed1_bw"): its config in configs/, its log."""
        return self.name.replace("/", "_")


def plan_study(config, study_dir: Path, seeds: int) -> list[StudyRun]:
    """The runs of a study: for each seed, a forward and a backward copy of `config` (or, when
    the config has a `permutation`, a copy that reads the windows in that order)."""
    from dataclasses import replace

    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, not {seeds}")
    if config.training.backwards:
        raise InputError(
            f"{config.source_path}: a study trains both directions itself; remove training_params.backwards from the config "
            "(a training_params.permutation makes the second run read the windows in that order instead of backward)"
        )
    permutation = config.training.permutation
    second = ("bw", dict(backwards=True)) if permutation is None else ("perm", dict(backwards=False, permutation=permutation))
    runs = []
    first = config.training.seed
    for k in range(seeds):
        seed = first + k
        prefix = study_dir if seeds == 1 else study_dir / f"seed{seed}"
        for name, order in (("fw", dict(backwards=False, permutation=None)), second):
            # save_loc absolute: the run configs (STUDY/configs/, each run's config.json) are given to
            # `arrows train` later (`--more N`, as compare's note on unequal steps advises), from any
            # folder; relative to the folder the study ran in, they trained a new run elsewhere.
            training = replace(config.training, seed=seed, save_loc=os.path.abspath(prefix), run_name=name, **order)
            runs.append(StudyRun(str(Path(prefix.relative_to(study_dir)) / name) if seeds > 1 else name, replace(config, training=training)))
    return runs


def run_name_note(config, study_dir: Path) -> str | None:
    """What a study says of a `run_name` its config gives: the study names its runs itself (fw/,
    and bw/ or perm/, in the study folder), and the name was otherwise dropped without a word."""
    from arrows.config import default_run_name

    if config.training.run_name == default_run_name(config.source_path, False, config.training.permutation):  # none given
        return None
    second = "bw" if config.training.permutation is None else "perm"
    return (f"training_params.run_name ({config.training.run_name!r}) is not used by a study: its runs are "
            f"fw/ and {second}/ in the study folder {study_dir}")


def read_study_record(study_dir: Path) -> dict | None:
    """The study record (`study.json`) in `study_dir`, checked: its seed count (`seeds`), its
    pairs' run folders inside the study (`pairs`: [("fw", "bw"), ...]), the folder names of their
    second runs (`second_runs`: {"bw"} or {"perm"}), the config it was started with (`config`,
    None if not recorded) and the steps and model it last ran with (`steps`, `model`; None if not
    recorded). None: no study there yet."""
    study = Path(study_dir) / STUDY_FILE
    if not study.is_file():
        return None
    try:
        record = json.loads(study.read_text())
        seeds = int(record.get("seeds", len(record["pairs"])))
        pairs = [(str(p["fw"]), str(p["bw"])) for p in record["pairs"]]
        config = record.get("config")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptDataError(f"{study}: not a study record arrows can read (damaged, or edited by hand): restore it, or start the study over in another folder") from None
    return {"seeds": seeds, "pairs": pairs, "second_runs": {Path(bw).name for _, bw in pairs}, "config": config,
            "steps": record.get("steps"), "model": record.get("model")}


def finish_command(study_dir: Path, record: dict) -> str:
    """The command that finishes the study in `study_dir` (and compares it), with the options it
    was last run with that its config file need not hold: a study run with --steps 60, finished as
    the hint said (its config alone), trained on to the config's 3,000 steps."""
    words = ["arrows", "study", record["config"] or "CONFIG", "--out", str(study_dir)]
    from arrows.config import load_config

    try:  # an option is shown only where the config file says otherwise (or cannot be read)
        config = load_config(record["config"])
        own = {"steps": config.training.steps_to_train, "model": config.model.model_type}
    except (TypeError, OSError, ValueError):  # no config recorded, gone, or one that needs --model
        own = {}
    for option, key in (("--steps", "steps"), ("--model", "model")):
        if record.get(key) is not None and (key not in own or own[key] != record[key]):
            words += [option, str(record[key])]
    return shlex.join(words)


def run_study(config, study_dir: Path, *, seeds: int | None = None, device: str = "auto", gpus: list[int] | None = None,
              parallel: bool = False, compile: bool = True) -> list[tuple[Path, Path]]:
    """Train every run of the study (resuming any that exist) and return the (fw, bw) pairs.
    `seeds` None: as many as the study folder records, or 1 for a new study."""
    from arrows.preflight import check_devices
    from arrows.train import TrainOptions, train

    study_dir = Path(study_dir)
    # --gpus or --device cuda without CUDA: refused before the folder records anything (its seed
    # count included), as `arrows train` refuses it, not in each run's log after the launch.
    check_devices(TrainOptions(device=device, gpus=gpus))
    if study_dir.exists() and not study_dir.is_dir():  # was "File exists", after the config was read
        raise InputError(f"{study_dir}: exists and is not a folder; give a new or empty folder with --out")
    # A study folder keeps its seed count: another count would lay the runs out elsewhere (fw/ for
    # one seed, seed<S>/fw for several), training new runs beside the old ones and orphaning them.
    record = read_study_record(study_dir)
    if seeds is None:
        seeds = record["seeds"] if record else 1
    elif record is not None and seeds != record["seeds"]:
        raise InputError(
            f"{study_dir}: this study has {record['seeds']} seed(s) (its {STUDY_FILE}), not the {seeds} asked for; "
            f"to resume it leave --seeds out (or give --seeds {record['seeds']}); for a study with {seeds} seed(s) give another --out"
        )
    runs = plan_study(config, study_dir, seeds)
    pairs = [{"fw": runs[i].name, "bw": runs[i + 1].name, "seed": runs[i].config.training.seed} for i in range(0, len(runs), 2)]
    # Likewise its second runs' order: a config with a permutation given for a backward study (or
    # the other way) trained new runs beside the old ones and replaced the study's report.
    if record is not None:
        before = record["second_runs"]
        now = {Path(p["bw"]).name for p in pairs}
        if before != now:
            said = {"bw": "backward (bw/)", "perm": "in a permuted order (perm/)"}
            raise InputError(
                f"{study_dir}: this study's second runs read {' and '.join(said.get(b, b) for b in sorted(before))}, and "
                f"{config.source_path} {'has a permutation' if config.training.permutation is not None else 'has none'}; "
                "resume the study with the config it was started with, or give another --out for this one"
            )
    # A folder that holds something else (runs of its own, a token store) is not written into: a
    # run already there named fw/ or bw/ would be resumed as if it were the study's.
    # What a study stopped before its record was in place leaves does not count: its lock file,
    # and its record's temporary file (a kill between that file's write and its rename).
    leftover = (STUDY_LOCK, f".{STUDY_FILE}.")
    held = sorted(p.name for p in study_dir.iterdir() if not p.name.startswith(leftover)) if study_dir.is_dir() else []
    if record is None and held:
        raise InputError(
            f"{study_dir}: not a study folder (no {STUDY_FILE}) and not empty (it holds {', '.join(held[:5])}); "
            "give a new or empty folder with --out"
        )
    # The report's folder too, before any training: a file in its place, or a folder that cannot be
    # written, was found only once every run had trained.
    report = study_dir / "report"
    if report.exists() and not report.is_dir():
        raise InputError(f"{report}: exists and is not a folder; the study writes its report there: move that file away")
    check_report_folder(report)
    study_dir.mkdir(parents=True, exist_ok=True)
    # One `arrows study` at a time in a folder, from before it rewrites the study's record and run
    # configs: a second one (another config, other --steps) rewrote them under the first, which
    # went on training with its own, and was refused only at its first run, by that run's lock.
    with _lock_study(study_dir):
        # Rewritten at every run of the study, so replaced whole (atomic_output): written in
        # place, a study killed (or a disk full) between the truncation and the write left an
        # empty study.json, and the study with hours of runs was "damaged: start the study over";
        # a compare or sweep reading it at that instant was told the same. With the --steps and
        # --model it ran with, for the commands that say how to finish it.
        _write_json(study_dir / STUDY_FILE, {"config": str(config.source_path), "seeds": seeds, "pairs": pairs,
                                             "steps": config.training.steps_to_train, "model": config.model.model_type})
        config_dir = study_dir / "configs"
        config_dir.mkdir(exist_ok=True)
        for r in runs:
            _write_json(config_dir / f"{r.stem}.json", r.config.to_dict())

        side_by_side = parallel or (gpus is not None and len(gpus) >= 2)
        if not side_by_side:
            for r in runs:
                t = r.config.training
                order = "backward" if t.backwards else "forward" if t.permutation is None else "in the permuted order"
                print(f"── {r.name}: training {order} → {study_dir / r.name}", file=sys.stderr, flush=True)
                train(r.config, TrainOptions(device=device, gpus=gpus, compile=compile))
        else:
            # Forward and backward at the same time, each in its own process (and on its own GPUs).
            for i in range(0, len(runs), 2):
                fw, bw = runs[i], runs[i + 1]
                if gpus:
                    half = len(gpus) // 2
                    fw.devices, bw.devices = gpus[:half], gpus[half : 2 * half]
                _train_side_by_side([fw, bw], study_dir, device, compile)
    return [(study_dir / p["fw"], study_dir / p["bw"]) for p in pairs]


STUDY_LOCK = ".study.lock"


def _lock_study(study_dir: Path):
    """The study folder's lock, held while the returned file is open; refused while another
    `arrows study` holds it."""
    return hold_lock(open(study_dir / STUDY_LOCK, "w"), f"{study_dir}: another arrows study is running in this folder; wait for it to end, or give another --out")


def _write_json(path: Path, value) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def _train_side_by_side(runs: list[StudyRun], study_dir: Path, device: str, compile: bool) -> None:
    import signal

    from arrows.distributed import STOP_SIGNAL, die_with_parent

    procs = []
    for r in runs:
        cfg_file = study_dir / "configs" / f"{r.stem}.json"
        cmd = [sys.executable, "-m", "arrows", "train", str(cfg_file)]
        if r.devices:
            cmd += ["--gpus", ",".join(map(str, r.devices))]
        else:
            cmd += ["--device", device]
        if not compile:
            cmd.append("--no-compile")
        log = study_dir / f"{r.stem}.log"
        env = dict(os.environ)
        if not r.devices:
            # Share the CPU cores between the processes instead of oversubscribing them.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // len(runs))))
        where = f"GPU {','.join(map(str, r.devices))}" if r.devices else device
        print(f"── {r.name}: training on {where}, log in {log}", file=sys.stderr, flush=True)
        # Appended to: running the study again (to resume a failed run) kept only the new attempt's
        # log, and lost what said why the first one failed.
        with open(log, "a") as out:  # the child keeps its own copy of the descriptor
            out.write(f"── {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
            out.flush()
            # Each run ends with the study, even killed with -9: SIGTERM, a stop after its step with a
            # checkpoint of it (the run holds its own folder's lock meanwhile).
            procs.append((r, log, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                   preexec_fn=die_with_parent(os.getpid(), signal.SIGTERM))))
    try:
        for _, _, p in procs:
            p.wait()
    except KeyboardInterrupt:
        # Interrupted here: Ctrl-C (which the runs got too), `kill -INT` to this process alone, or
        # SIGTERM (errors.terminated). Each run is asked to stop after its step, with a checkpoint
        # of it, as `arrows train` does at a first Ctrl-C, and waited for: leaving them training
        # unseen, the study run again at once found their folders locked ("another arrows train is
        # running"). A second Ctrl-C stops them at once.
        try:
            for _, _, p in procs:
                if p.poll() is None:
                    p.send_signal(STOP_SIGNAL)
            for _, _, p in procs:
                p.wait()
        except BaseException:
            for _, _, p in procs:
                p.kill()
            raise
        raise CancelledError("interrupted; each run stopped after a step and saved its checkpoint (its log says which): "
                             "run the same command to continue") from None
    failed = [f"{r.name} (exit {p.returncode}; see {log})" for r, log, p in procs if p.returncode != 0]
    if failed:
        raise InputError("training failed: " + "; ".join(failed))
