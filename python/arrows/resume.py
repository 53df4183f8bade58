"""Where a run continues from, and whether it may: the checkpoint `--resume` points to, the
settings a checkpoint refuses to continue under (and those it continues under, saying so), the
data it trained on wherever it has moved, and the step a resumed or `--more` run trains to."""

from __future__ import annotations

import json
from pathlib import Path

from arrows import checkpoint
from arrows.errors import InputError


def resume_point(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint a run in `run_dir` continues from, given --resume (auto, never or a checkpoint
    file), or None to start afresh."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if path.is_dir():  # a run folder, or its checkpoints folder
            found = next((p for p in (path / "checkpoints" / checkpoint.LATEST, path / checkpoint.LATEST) if p.is_file()), None)
            raise InputError(f"--resume {path}: a folder; give a checkpoint file"
                             + (f", such as {found}" if found is not None else " (a run's checkpoints/latest.pt or step_N.pt)"))
        if not path.is_file():
            raise InputError(f"--resume {path}: no such checkpoint (--resume takes auto, never or a checkpoint file)")
        return path
    latest = run_dir / "checkpoints" / checkpoint.LATEST
    if latest.exists():
        return latest
    # Starting over removes the folder's checkpoints (Trainer._start_over): backups without a
    # latest.pt (deleted by hand) are not removed unasked.
    backups = sorted(latest.parent.glob("step_*.pt"))
    if backups:
        raise InputError(f"{latest.parent} holds backups but no {checkpoint.LATEST}: continue from the newest with --resume {backups[-1]}, "
                         f"or start over with --resume never (which removes them)")
    return None


def check_resumable(path: Path, payload: dict, config, world_size: int, finished: bool = False) -> list[str]:
    """Refuses a checkpoint written with another setup (weights, data or batch) or by another
    number of processes, unless `finished` (the run has nothing left to train, so no process's
    place in the data is continued). Returns the settings that changed without mattering to the
    weights ("section.key: old → new"): the run continues under the new ones, and says so."""
    saved, mine = _with_loader_stride(payload["config"]), _with_loader_stride(config.to_dict())
    # How attention and the loss are computed changes no weight: a run may resume under another kernel.
    compute_only = {"attention", "head_loss"}
    # stride and valid_fraction decide which windows the training split holds: the checkpoint's place
    # in the data counts batches of those windows, and the loader refuses another set of them.
    refused = {"model_params": None, "training_params": ("dataset_folder", "batch_size", "aggregate", "backwards", "permutation", "seed",
                                                          "stride", "valid_fraction")}
    # The same token store at another path (moved, or copied to a node's local disk) is the same data;
    # another store at the same path (tokenized again with --force) is not.
    recorded, now = payload.get("data"), data_identity(mine["training_params"]["dataset_folder"])
    moved = recorded is not None and recorded == now
    diffs, changed = [], []
    if recorded is not None and now is not None and recorded != now and saved["training_params"].get("dataset_folder") == mine["training_params"]["dataset_folder"]:
        diffs.append(f"training_params.dataset_folder: {mine['training_params']['dataset_folder']!r} holds other data than it trained on "
                     "(tokenized again since?)")
    for sec, values in mine.items():
        if not isinstance(values, dict):
            continue
        keys = refused.get(sec, ())
        for k, v in values.items():
            if saved.get(sec, {}).get(k) == v:
                continue
            if (keys is None or k in keys) and k not in compute_only and not (k == "dataset_folder" and moved):
                why = "" if k != "dataset_folder" else (" (not the data it trained on)" if payload.get("data") is not None
                                                         else " (this checkpoint does not record its data, only the path)")
                diffs.append(f"{sec}.{k}: checkpoint {saved.get(sec, {}).get(k)!r}, config {v!r}{why}")
            elif k not in ("run_name", "save_loc", "state_save_loc"):  # where the run is, not how it trains
                changed.append(f"{sec}.{k}: {saved.get(sec, {}).get(k)!r} → {v!r}")
    if diffs:
        raise InputError(f"{path} was written with another setup; resume with the same config, or start over (arrows train: --resume never; "
                         f"arrows study: another --out):\n  " + "\n  ".join(diffs))
    ranks = len(payload["per_rank"])
    if ranks != world_size and not finished:
        how = f"--nproc {ranks} on the CPU, --gpus with {ranks} GPUs, or {ranks} processes under torchrun or SLURM" if ranks > 1 else \
            "no --nproc, one GPU, or one process under torchrun or SLURM"
        raise InputError(f"{path} was written by {ranks} process(es); resume with the same number (now {world_size}): {how}. "
                         f"It holds each process's place in the data and random state, which another number of processes "
                         f"cannot continue exactly")
    return changed


def finished_at(payload: dict, config, more: int | None, steps_per_epoch: int) -> bool:
    """Whether the checkpoint's run is already at the step this command would train to: then it is
    left as it is ("nothing to do"), whatever number of processes is given now (a study trained on
    four GPUs, given again on one machine to compare again)."""
    if more is not None:
        return False
    return int(payload["step"]) >= (config.training.steps_to_train or steps_per_epoch)


def more_target(more: int, step: int, payload: dict | None, ended: bool = True) -> int:
    """The step that `--more N` trains to, resuming at `step` from checkpoint `payload` (None: no
    checkpoint): N steps beyond it, unless a `--more N` run that had not reached its end wrote it
    (killed, preempted, Ctrl-C): the same command then finishes that run, at the step it planned, as
    any interrupted run resumes (counted from each new checkpoint, every interruption lengthened
    the run and laid its schedule over another total). `--steps` sets any other end. `ended`
    (end_recorded) is false for a run killed after its last checkpoint, before its summary: that
    run is finished too, not trained N steps further."""
    if payload is not None and payload.get("more") == more and (step < int(payload.get("total_steps") or step)
                                                                or (not ended and step == payload.get("total_steps"))):
        return int(payload["total_steps"])
    return step + more


def end_recorded(run_dir: Path, step: int) -> bool:
    """Whether the run folder's summary.json says the run ended at `step`: written after the last
    checkpoint, it is missing (or an earlier end's) when the run was killed in between."""
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("steps") == step
    except (OSError, ValueError, AttributeError):
        return False


def data_identity(dataset_folder: str | Path) -> str | None:
    """What a run trains on, wherever it lies: a hash of a token store's tokenizer (hash, BOS), id
    type, and every shard's checksum and length, as its manifest records them (`verify_data` checks
    them against the shards before training). None for an .h5 file, which only its path identifies."""
    import hashlib

    try:
        m = json.loads((Path(dataset_folder) / "manifest.json").read_bytes())
        what = [m["tokenizer"]["hash"], m["tokenizer"].get("bos_id"), m["dtype"], [[s["checksum"], s["tokens"]] for s in m["shards"]]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _with_loader_stride(config: dict) -> dict:
    """A copy of a resolved config dict whose `stride` is the one the loader uses (null means
    `(attn_length − 1) // 2`), so that null and that number are the same setting."""
    training, model = config.get("training_params", {}), config.get("model_params", {})
    if training.get("stride") is not None or not isinstance(model.get("attn_length"), int):
        return config
    stride = max((model["attn_length"] - 1) // 2, 1)
    return {**config, "training_params": {**training, "stride": stride}}


def where_it_stands(latest: Path) -> str:
    """What a user of a multi-process run that ended early can do next (read once its processes have ended)."""
    if not latest.exists():
        return "No checkpoint was written yet: run the same command to start again."
    step, total = checkpoint.saved_step(latest), checkpoint.saved_entry(latest, "total_steps")
    if step is not None and total is not None and step >= int(total):
        # A process lost after the last save: the run is whole. "Run the same command" would have
        # trained N steps more after a `--more N` run (the same command finishes only a run that
        # had not reached its end: more_target).
        if not end_recorded(latest.parent.parent, step):  # its summary.json not written yet (Trainer._finish_end)
            return (f"The run had reached its end: the checkpoint {latest} of its last step, {step}, is intact and complete; "
                    f"nothing is left to train: run the same command to write its summary.json.")
        return (f"The run had reached its end: the checkpoint {latest} of its last step, {step}, is intact and complete; "
                f"nothing is left to train (--more N would train N steps beyond it).")
    return f"The checkpoint {latest} is intact: run the same command to continue from it."
