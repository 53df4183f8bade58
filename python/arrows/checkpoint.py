"""Checkpoints: written atomically (temporary file, fsync, rename), so a crash at any instant
leaves the previous checkpoint intact. `latest.pt` every `save_every` steps, a kept copy
`step_NNNNNNN.pt` every `backup_every` steps.

A checkpoint holds everything the next step depends on: model and optimizer state, the step,
the loader's position, and the random generators' states (dropout, sampling), so that a resumed
run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from arrows.errors import CorruptDataError

LATEST = "latest.pt"


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path) -> dict:
    import torch

    try:
        with open(path, "rb") as f:
            payload = torch.load(f, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptDataError(f"{path}: unreadable checkpoint ({e}); use a backup from the same folder with --resume PATH, or start over with --resume never") from None
    for key in ("model", "optimizer", "step", "per_rank", "config"):
        if key not in payload:
            raise CorruptDataError(f"{path}: not an arrows checkpoint (no {key!r})")
    return payload


def remove_partial(folder: Path) -> None:
    """Temporary files of a save interrupted by a crash."""
    for p in folder.glob("*.pt.tmp"):
        p.unlink(missing_ok=True)
