"""Sampling from a trained run. A backward model reads text from its end: its prompt is the end of
the text, reversed into the model's order, and what it generates is flipped back into reading
order before decoding."""

from __future__ import annotations

from pathlib import Path

from arrows.errors import InputError


def checkpoint_path(run: Path, which: str | None) -> Path:
    """The checkpoint of run folder `run` that `which` names: None for the latest, a step for the
    copy kept at that step (`backup_every`: "2000" is checkpoints/step_00002000.pt), or a file."""
    from arrows import checkpoint

    folder = run / "checkpoints"
    if which is None:
        return folder / checkpoint.LATEST
    which = str(which).strip()
    if which.isdigit():
        path = folder / f"step_{int(which):08d}.pt"
        if not path.is_file():
            kept = sorted(int(p.stem[5:]) for p in folder.glob("step_*.pt") if p.stem[5:].isdigit())
            listed = f"its kept steps: {', '.join(map(str, kept))}" if kept else "it keeps no step's copy (backup_every)"
            raise InputError(f"--checkpoint {which}: {run} has no checkpoint of step {int(which)} ({listed}); leave it out for the latest")
        return path
    path = Path(which)
    if not path.is_file():
        raise InputError(f"--checkpoint {which}: no such checkpoint file; give a file, a kept step's number, or leave it out for the latest")
    return path


def load_run(run: str | Path, checkpoint: str | None = None):
    """The model of a run folder (at the checkpoint that `checkpoint` names, see `checkpoint_path`;
    the latest by default), its resolved config dict, and its tokenizer."""
    from arrows import checkpoint as checkpoints
    from arrows.config import load_config
    from arrows.data import find_tokenizer

    run = Path(run)
    cfg_path = run / "config.json"
    if not run.exists():
        raise FileNotFoundError(2, "No such run folder", str(run))
    if not cfg_path.is_file() or not (run / "checkpoints" / checkpoints.LATEST).is_file():
        raise InputError(f"{run}: not a trained run (needs config.json and checkpoints/{checkpoints.LATEST})")
    ckpt = checkpoint_path(run, checkpoint)
    # Checked as `arrows train` checks a config: a damaged or hand-edited config.json (where the
    # tokenizer_path the error below asks for is set) is named with its problems, not a traceback.
    cfg = load_config(cfg_path).to_dict()
    model = checkpoints.load_model(cfg, ckpt)
    t = cfg["training_params"]
    # The run's own copy (written by train since 2026-11-29: the tokenizer it trained with), else
    # the data's (a token store's own; for an .h5, tokenizer_path when set, else the one beside it).
    tok = find_tokenizer(run) or find_tokenizer(t["dataset_folder"], t.get("tokenizer_path"))
    if tok is None:
        raise InputError(f"{run}: no tokenizer found (none in the run folder, in or beside dataset_folder; set training_params.tokenizer_path in {cfg_path})")
    return model, cfg, tok


def training_bos_id(dataset_folder: str | Path, tok) -> int:
    """For a checkpoint that does not record it (`bos_id`, recorded since 2026-11-29): the id every
    training window of the run began with, the one `WindowLoader` takes from the data (a token
    store's manifest, the `bos_id` that `arrows tokenize --h5` records, 0 for a reference .h5),
    whatever the tokenizer's own is. Without the data (a run folder used elsewhere with
    `tokenizer_path`): 0 for an .h5, else the BOS a store made with the tokenizer records
    (`<|endoftext|>`, else the tokenizer's own), else 0; a store made with `--bos` is not told
    apart, and the Rust tokenizer is built to learn it (seconds for a vocabulary of 100k+)."""
    from arrows import _arrows
    from arrows.errors import ArrowsError
    from arrows.loader import open_source

    try:
        return open_source(dataset_folder)[2]
    except (OSError, ArrowsError):
        if Path(dataset_folder).suffix.lower() in (".h5", ".hdf5"):
            return 0
        bos = _arrows.tokenizer_bos_id(tok.to_str())
        return 0 if bos is None else bos


def generate_text(run: str | Path, prompt: str, *, tokens: int, temperature: float = 1.0, top_k=None, seed: int = 0,
                  checkpoint: str | None = None, device: str = "cpu") -> str:
    """Sample `tokens` new tokens from a checkpoint of the run folder (the latest, or the one
    `checkpoint` names: a kept step's number or a file) and return the text in reading order, the
    prompt included: prompt + continuation for a forward run; for a backward run the prompt is the
    text's end and what comes back is the generated beginning + prompt. `temperature` 0 picks the
    most likely token, `top_k` keeps the k most likely; `seed` makes the draw repeatable on one
    kind of device (a GPU draws other numbers than the CPU). Bad settings raise InputError."""
    import torch

    from arrows import checkpoint as checkpoints

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible; sample on the CPU with --device cpu")
    model, cfg, tok = load_run(run, checkpoint)
    model = model.to(device)
    t = cfg["training_params"]
    backward = bool(t.get("backwards"))
    if t.get("permutation"):
        raise InputError("sampling from a model trained on a permuted window order has no reading order; use a forward or backward run")
    # The checkpoint records it (it is the data's, and the data may be gone); older ones do not.
    bos = checkpoints.saved_bos_id(checkpoint_path(Path(run), checkpoint))
    if bos is None:
        bos = training_bos_id(t["dataset_folder"], tok)
    # The ids as the token store holds them: without what a post-processor adds ([CLS] ... [SEP],
    # <s>), which the model never saw inside a text.
    ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    if backward:
        ids = ids[::-1]
    start = torch.tensor([[bos] + ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        out = model.generate(start, tokens, temperature=temperature, top_k=top_k, generator=gen)[0, 1:].tolist()
    if backward:
        out = out[::-1]
    return tok.decode(out, skip_special_tokens=False)
