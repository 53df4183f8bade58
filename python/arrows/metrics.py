"""Metrics of a run: `metrics.jsonl` always (one JSON object per line), TensorBoard event files
when the `tensorboard` package is installed, wandb only when asked (`--wandb PROJECT`)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import uuid
from pathlib import Path

from arrows.errors import InputError, naming_file


class Metrics:
    def __init__(self, run_dir: Path, *, resume_step: int | None, config: dict, wandb_project: str | None):
        self.path = run_dir / "metrics.jsonl"
        for log in (self.path, run_dir / "samples.jsonl"):
            log.with_suffix(".jsonl.tmp").unlink(missing_ok=True)  # left by a crash while truncating
            if resume_step is not None:
                _truncate_after(log, resume_step)
            else:
                log.unlink(missing_ok=True)
        if resume_step is None:  # a run started over: the earlier run's curves go too
            for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
                events.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        self._tb_dir = run_dir / "tensorboard"  # named by a failed write of TensorBoard's (which names no file)
        try:
            from torch.utils.tensorboard import SummaryWriter

            with naming_file(self._tb_dir):
                self._tb = SummaryWriter(str(self._tb_dir), purge_step=resume_step + 1 if resume_step is not None else None)
            self._excepthook = threading.excepthook
            threading.excepthook = self._quiet_tensorboard_thread
        except ImportError:
            pass  # the tensorboard package is optional
        self._wandb = None
        if wandb_project:
            require_wandb(wandb_project)
            import wandb

            self._wandb = wandb.init(project=wandb_project, name=f"{run_dir.parent.name}/{run_dir.name}", config=config,
                                     id=_wandb_id(run_dir, resuming=resume_step is not None), resume="allow")

    def _quiet_tensorboard_thread(self, args) -> None:
        """TensorBoard writes its event file on a thread of its own: a failed write (a full disk) was
        printed there as a traceback, before the writer's next call raised it again, where `log`
        or `close` name the folder. Only the latter is said; any other thread's error as before."""
        if not _tensorboard_thread_failed(args):
            self._excepthook(args)

    def log(self, record: dict) -> None:
        with naming_file(self.path):  # a full disk: say which file
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        step = record["step"]
        if self._tb is not None:
            # The record's `time` is each event's wall time (TensorBoard's "relative" and "wall"
            # axes), not a curve: as a scalar it was stored in float32, to the nearest 2 minutes.
            walltime = record.get("time")
            with naming_file(self._tb_dir):
                for k, v in record.items():
                    if k not in ("step", "time") and isinstance(v, (int, float)):
                        self._tb.add_scalar(k, v, step, walltime=walltime)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        """Closes the logs; raises the OSError of a write that failed (naming the file). A record
        whose write failed is still buffered, and its closing tries it again."""
        try:
            with naming_file(self.path):
                self._file.close()
        finally:
            if self._tb is not None:
                try:
                    with naming_file(self._tb_dir):
                        self._tb.close()  # joins its writing thread
                finally:
                    if threading.excepthook == self._quiet_tensorboard_thread:
                        threading.excepthook = self._excepthook
            if self._wandb is not None:
                self._wandb.finish()


def _tensorboard_thread_failed(args) -> bool:
    """Whether `threading.excepthook`'s `args` are a failed write of TensorBoard's writing thread."""
    return type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError)


def require_wandb(project: str) -> None:
    """Logging to the wandb project `project` needs the wandb package, which is not a dependency."""
    # Imported already (find_spec would ask a module without a __spec__ for one, and raise), or found.
    if sys.modules.get("wandb") is None and importlib.util.find_spec("wandb") is None:
        raise InputError(f"wandb project {project!r}: logging to wandb needs the wandb package: pip install wandb")


def _wandb_id(run_dir: Path, *, resuming: bool) -> str:
    """The wandb run id of this run folder: made when the run starts, kept in the folder, so that a
    resumed run continues its wandb run. Not the folder's name: every study names its runs fw and
    bw, and two studies logging to one project would have continued each other's runs."""
    path = run_dir / "wandb_id"
    if resuming and path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n")
    return run_id


# Records a run logs as it starts (resumed at the step they carry), not for a step it trained.
START_NOTES = ("changed_settings", "attention")


def _truncate_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop what the crashed run logged for
    them, so the file reads like one uninterrupted run. The notes of an earlier start at that very
    step go too: this start logs its own (resumed twice from one checkpoint, each start had logged
    its changed settings)."""
    if not path.exists():
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                at = record.get("step", 0)
                if at < step or (at == step and not any(k in record for k in START_NOTES)):
                    keep.append(line if line.endswith("\n") else line + "\n")
            except json.JSONDecodeError:
                break  # a line torn by the crash
    tmp = path.with_suffix(".jsonl.tmp")
    with naming_file(tmp):
        tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)


def read(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (`arrows compare`'s curves). An unfinished last line
    (a run killed while writing it, or still writing it) is left out, as a resume drops it: it
    ended compare with a JSONDecodeError traceback. A damaged line elsewhere is named."""
    from arrows.errors import CorruptDataError

    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn: the writer had not finished it
            raise CorruptDataError(f"{path}: line {number} is not a JSON record (damaged, or edited by hand)") from None
    return records
