"""`arrows demo`: the built-in example. No download: the text is generated here.

Three synthetic languages with a known answer (a forward arrow, a backward arrow, none), each
tokenized one byte per token, trained forward and backward with a small GPT, and compared. The
sizes are chosen so that on a 2-core CPU the whole demo takes under 10 minutes and the easy
direction of `sparse-linear` really learns its computation (the y bits' loss falls towards 0).

Why each window is exactly one line (`attn_length` = `stride` = the line length), as in the
paper, where each example is a sequence of its own: a tiny model does not find where a line
begins within a few thousand steps when windows start anywhere, and then learns nothing of
y = A·x in either direction; with two lines per window it must learn every parity twice (once per
position) and takes several times longer. With one line per window it learns the forward
parities in about 1,500 steps. Both directions see exactly the same lines, so the comparison is
fair. Weight decay matters too: without it the model stalls on the last parities (a known plateau
of parity learning). Parities of 3 bits (`--row-weight 3`) were not learned at all in 3,000 steps
at this size, so the demo uses 2: each y bit the XOR of two x bits (one row has a single bit,
since rows of even weight alone are never invertible).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from arrows.errors import CancelledError, InputError
from arrows.folder_lock import hold_lock

# (language, lines, steps): the demo's budget.
LANGUAGES = (
    ("sparse-linear", 60_000, 3000),
    ("sparse-linear-reversed", 60_000, 3000),
    ("reversible", 60_000, 600),
)
BITS, ROW_WEIGHT = 8, 2
WALK_LENGTH = 17  # lines of 18 characters, as long as the sparse-linear ones (2·8 + 2)


def demo_config(tokens: Path, runs: Path, line_tokens: int, steps: int) -> dict:
    """A small GPT whose windows are exactly one line each (BOS + the line but its last token)."""
    return {
        "model_params": {
            "model_type": "gpt", "vocab_size": 257, "n_layers": 2, "n_heads": 4, "embed_dim": 64,
            "attn_length": line_tokens, "dropout": 0.0,
        },
        "training_params": {
            "dataset_folder": str(tokens), "batch_size": 128, "steps_to_train": steps, "stride": line_tokens,
            "valid_fraction": 0.05, "valid_every": max(steps // 5, 1), "valid_batches": 20, "step_log": max(steps // 20, 1),
            "save_every": steps, "sample_every": 0, "save_loc": str(runs), "seed": 0, "threads": 1, "cooldown_finish": 0.2,
        },
        "optim_params": {"lr": 3e-3, "warmup_steps": min(100, steps // 5), "lr_init": 1e-5, "weight_decay": 0.1},
    }


def run_language(kind: str, folder: Path, *, lines: int, steps: int, params: dict, device: str = "cpu", seed: int = 0) -> dict:
    """One synthetic language from text to report: generate, tokenize (bytes), study, compare."""
    from arrows.cli import _compare_and_print
    from arrows.config import config_from_dict
    from arrows.progress import Reporter
    from arrows.study import run_study
    from arrows.synth import write_language
    from arrows.tokenize import tokenize

    folder = Path(folder)
    text = folder / f"{kind}.txt"
    info = write_language(kind, text, lines, seed=seed, **params)
    line_tokens = info["bytes"] // lines
    if info["bytes"] != line_tokens * lines:
        raise ValueError(f"{kind}: lines of different lengths; the demo's windows need fixed-length lines")
    print(f"generated    {text}: {lines:,} lines of {info['format']} ({line_tokens} characters), expected arrow: {info['expected_arrow']}")
    with Reporter.from_env() as reporter:
        tokenize([text], folder / "tokens", tokenizer="bytes", reporter=reporter)
    cfg_dict = demo_config(folder / "tokens", folder, line_tokens, steps)
    cfg_file = folder / "config.json"
    cfg_file.write_text(json.dumps(cfg_dict, indent=2) + "\n")
    cfg = config_from_dict(cfg_dict, source_path=cfg_file)
    pairs = run_study(cfg, folder / "study", device=device)
    return _compare_and_print(pairs, folder / "study" / "report", device=device)


def language_params(kind: str) -> dict:
    """The demo's size of each language."""
    if kind.startswith("sparse-linear"):
        return {"bits": BITS, "row_weight": ROW_WEIGHT}
    return {"walk_length": WALK_LENGTH} if kind == "reversible" else {}


MARKER = "arrows-demo.json"  # what makes a folder the demo's own, to be made anew


def prepare_folder(out: Path):
    """Make `out` anew for the demo, and return its MARKER file, open and locked: the demo holds
    it to the end, so that a second `arrows demo` into the same folder is refused instead of
    wiping the files the first one is training into (the first then crashed, and its runs wrote
    on into the second's). Only a folder an earlier demo made (it holds MARKER) is emptied first;
    any other non-empty path is refused: --out is never a user's folder to wipe."""
    marker = None
    if out.exists():
        resolved, here = out.resolve(), Path.cwd().resolve()
        if resolved == here or resolved in here.parents:
            raise InputError(f"--out {out}: the current folder (or one above it); give a folder of its own, e.g. --out arrows-demo")
        if not out.is_dir():
            raise InputError(f"--out {out}: exists and is not a folder; choose another --out")
        if (out / MARKER).is_file():
            marker = _lock_marker(out)
            # Everything but the marker: a deletion interrupted half-way (Ctrl-C) leaves a folder
            # that is still the demo's, which the next demo empties; without its marker, it was
            # refused as a user's folder.
            for p in out.iterdir():
                if p.name == MARKER:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        elif any(out.iterdir()):
            raise InputError(f"--out {out}: a folder that an earlier arrows demo did not make (no {MARKER} in it); "
                             f"choose another --out, or empty it first")
    out.mkdir(parents=True, exist_ok=True)
    marker = marker or _lock_marker(out)
    marker.seek(0)
    marker.truncate()
    marker.write(json.dumps({"made_by": "arrows demo", "languages": [kind for kind, _, _ in LANGUAGES]}) + "\n")
    marker.flush()
    return marker


def _lock_marker(out: Path):
    """`out`'s MARKER, opened (made if absent) and locked; refused while another demo holds it."""
    return hold_lock(open(out / MARKER, "a+"), f"--out {out}: another arrows demo is running in this folder; wait for it to end, or give another --out")


def run_demo(out: Path, steps: int | None = None) -> list[dict]:
    from arrows.cli import print_table

    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, not {steps}")
    out = Path(out)
    with prepare_folder(out):  # locked until the demo ends
        t0 = time.perf_counter()
        reports = []
        try:
            for kind, lines, budget in LANGUAGES:
                print(f"\n═══ {kind} ═══", flush=True)
                reports.append((kind, run_language(kind, out / kind, lines=lines, steps=budget if steps is None else steps, params=language_params(kind))))
        except (CancelledError, KeyboardInterrupt):
            # Not the interrupted run's own "run the same command to continue": the demo's folder
            # is made anew each time, so the same command starts over.
            raise CancelledError("interrupted; arrows demo starts over when run again (its folder is made anew)") from None
    print(f"\n═══ summary ({time.perf_counter() - t0:.0f} s) ═══")
    for kind, report in reports:
        print_table(report, title=kind)
        print(f"  report: {out / kind / 'study' / 'report' / 'report.md'}", file=sys.stdout)
    return [r for _, r in reports]
