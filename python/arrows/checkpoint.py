"""Checkpoints: written atomically (temporary file, fsync, rename), so a crash at any instant
leaves the previous checkpoint intact, and a failed write (a full disk) removes its temporary
file. `latest.pt` every `save_every` steps, a kept copy `step_NNNNNNNN.pt` every `backup_every`
steps. Loading checks the CRC of every record first: a damaged file is named, with the backup
to resume from instead.

A checkpoint holds everything the next step depends on: model and optimizer state, the step,
the loader's position, and the random generators' states (dropout, sampling), so that a resumed
run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

from arrows.errors import CorruptDataError, InputError

LATEST = "latest.pt"


def rng_state(device=None) -> dict:
    """The random generators' states; on a CUDA `device`, that GPU's generator too (the one its
    dropout draws from)."""
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device=None) -> None:
    """Restore `rng_state`'s states; the CUDA one to the GPU this process trains on, whichever GPU
    number it has now (resumed on another node, another --gpus, a narrower CUDA_VISIBLE_DEVICES)."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    device = torch.device(device) if device is not None else None
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        # A checkpoint of an earlier arrows: one state per GPU the saving process could see, taken
        # by GPU number (restoring them all failed where fewer GPUs are visible: IndexError).
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def save(path: str | Path, payload: dict) -> None:
    """Write `payload` to `path` atomically (a temporary file beside it, fsync, rename)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, RuntimeError) and isinstance(e.__context__, KeyboardInterrupt):
            # Ctrl-C inside torch.save: its zip writer's clean-up fails ("unexpected pos") and
            # hides the interrupt, which is what happened.
            raise KeyboardInterrupt from None
        # A failed write (a full disk, a file-size limit) arrives as an OSError, or as torch's
        # RuntimeError around one: report the OS error, with the file.
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e, RuntimeError) else None
        if isinstance(cause, OSError):
            raise OSError(cause.errno, f"{cause.strerror}; the previous checkpoint (if any) is intact", str(tmp)) from None
        raise
    _replace_durably(tmp, path)


def _replace_durably(tmp: Path, path: Path) -> None:
    """Rename the synced file `tmp` to `path`, then sync the folder so that the rename survives a crash."""
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def copy(src: str | Path, dst: str | Path) -> None:
    """Copy checkpoint `src` to `dst` atomically, as `save` writes one."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace_durably(tmp, dst)


def load(path: str | Path, reading: bool = False) -> dict:
    """Read a checkpoint, first checking the CRC of every record of its zip archive (torch.load
    alone would load flipped bytes silently). `reading`: for its weights only (generate, compare),
    not to resume from, which the advice of a damaged one says."""
    import zipfile

    import torch

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise _damaged(path, f"its record {bad} fails its CRC check", reading)
        with open(path, "rb") as f:
            payload = torch.load(f, map_location="cpu", weights_only=False)
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            raise  # the file could not be opened at all: nothing says it is damaged
        raise _damaged(path, f"unreadable: {e}", reading) from None
    if not isinstance(payload, dict) or any(key not in payload for key in ("model", "optimizer", "step", "per_rank", "config")):
        raise _damaged(path, "not an arrows checkpoint", reading)
    return payload


def saved_step(path: str | Path) -> int | None:
    """The step checkpoint `path` was saved at, read without its tensors (memory-mapped, not
    read: milliseconds for a checkpoint of gigabytes) and without `load`'s CRC check; None when
    it cannot be read."""
    step = saved_entry(path, "step")
    return None if step is None else int(step)


def saved_bos_id(path: str | Path) -> int | None:
    """The id the training windows of checkpoint `path` began with, read as `saved_step` reads the
    step; None when it cannot be read, or for a checkpoint of an arrows that did not record it."""
    bos = saved_entry(path, "bos_id")
    return None if bos is None else int(bos)


def saved_entry(path: str | Path, key: str):
    """Entry `key` of checkpoint `path`, read as `saved_step` reads the step (None: unreadable or absent)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False).get(key)
    except Exception:  # any damage: the caller goes without it (`load` names what is wrong)
        return None


def load_model(config: dict, path: str | Path):
    """The model that a run's resolved config describes, with the weights of checkpoint `path`,
    on the CPU, in eval mode (attention "triton" or "flex" computed by SDPA: it runs anywhere)."""
    return load_model_and_step(config, path)[0]


def load_model_and_step(config: dict, path: str | Path):
    """`load_model`'s model, and the step the checkpoint was saved at (the file, which holds the
    optimizer too, read once)."""
    import torch

    from arrows.config import config_from_dict
    from arrows.models import build_model

    params = config_from_dict(config).model_dict()
    if params.get("attention_impl") in ("triton", "flex"):
        # arrows' Triton kernels need CUDA (and Triton, which a Mac cannot install), and
        # FlexAttention is meant to be compiled (uncompiled, on the CPU, torch warns and computes
        # the whole score matrix): a run trained with either is evaluated and sampled through
        # SDPA, the same attention on the same weights.
        params["attention_impl"] = "sdpa"
    with torch.device("cpu"):
        model = build_model(params)
    payload = load(path, reading=True)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:  # torch's message lists every mismatched tensor
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise InputError(f"{path}: its weights do not fit the model that the config describes ({detail}); "
                         f"the config it was trained under is its 'config' entry (checkpoint.load(path)['config'])") from None
    return model.eval(), int(payload["step"])


def _damaged(path: Path, why: str, reading: bool = False) -> CorruptDataError:
    """The error for a damaged checkpoint, naming the backups to resume from (or read) instead."""
    backups = sorted(p for p in path.parent.glob("step_*.pt") if p != path)
    if reading:  # `arrows generate` or `compare`, which have no --resume
        advice = (f"the newest backup is {backups[-1]}: `arrows generate --checkpoint` takes it, and `arrows train "
                  f"--resume {backups[-1]}` continues the run from it (writing a new latest.pt)" if backups
                  else "no backup is in that folder: the run must be trained again (arrows train --resume never)")
    elif backups:
        advice = f"resume from the newest backup with --resume {backups[-1]}, or start over with --resume never"
    else:
        advice = "no backup is in that folder: start over with --resume never"
    return CorruptDataError(f"{path}: damaged checkpoint ({why}); {advice}")


def remove_earlier_run(folder: Path) -> list[str]:
    """For a run that starts over in `folder`: remove the checkpoints an earlier run left there
    (latest and backups), whose step and weights are not this run's. Left in place, a start-over
    killed before its first save was resumed from them (`--resume auto`): the earlier run's weights
    under the new run's metrics. Returns the names removed."""
    removed = []
    for p in sorted([folder / LATEST, *folder.glob("step_*.pt")]):
        if p.is_file():
            p.unlink()
            removed.append(p.name)
    return removed


def remove_partial(folder: Path) -> None:
    """Temporary files of a save interrupted by a crash."""
    for p in folder.glob("*.pt.tmp"):
        p.unlink(missing_ok=True)
