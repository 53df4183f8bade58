"""Benchmark (not a test): training tokens/s of `arrows train` against the anchors, in one run.

    python bench/train.py            # on a CUDA GPU: GPT-2 small (T=256, B=180), GPT-medium (T=256, B=90)
    python bench/train.py --quick    # tiny shapes on CPU (checks the script, not the speed)

First ../shared/bench/gpu_anchor.py (reference style: fp32, eager, hand attention; tuned PyTorch:
bf16, SDPA, fused AdamW, compile), then arrows' real training loop (Trainer, fed by the Rust
loader from an h5 file of random tokens) at the same shapes. Prints tokens/s, MFU and the ratios.
Targets on H100/H200: >= 1.0x the tuned anchor and >= 6x the reference style.
"""

from __future__ import annotations

import sys

# This folder holds a `tokenize.py`, which would shadow the standard library's module of that name.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ROOT.parent / "shared" / "bench" / "gpu_anchor.py"
PEAK = 989e12  # H100/H200 SXM dense bf16 FLOP/s, as the anchor

SHAPES = {
    "gpt2small_T256_B180": dict(vocab=50257, layers=12, width=768, heads=12, T=256, B=180),
    "medium_T256_B90": dict(vocab=50257, layers=24, width=1024, heads=16, T=256, B=90),
}
QUICK = {"tiny": dict(vocab=512, layers=2, width=64, heads=4, T=32, B=4)}


def run_anchor(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(ANCHOR)] + (["--quick"] if quick else []), check=True, env={**os.environ, "OUT": out})
        return json.loads((Path(out) / "gpu_anchor.json").read_text())


def arrows_tokens_per_s(name: str, s: dict, work: Path, steps: int, warm: int, head_loss: str = "plain") -> dict:
    import h5py
    import numpy as np
    import torch

    from arrows.config import config_from_dict
    from arrows.distributed import World
    from arrows.metrics import read
    from arrows.train import TrainOptions, Trainer

    h5 = work / f"tokens_{s['vocab']}.h5"
    # Enough for the steps, and a validation split (1%) holding at least one batch.
    need = s["B"] * s["T"] * max((steps + warm + 4) * 2, 150)
    if not h5.exists() or h5.stat().st_size < need * 4:
        with h5py.File(h5, "w") as f:
            f.create_dataset("tokens", data=np.random.default_rng(0).integers(0, s["vocab"], need, dtype=np.int32))
    cfg = config_from_dict({
        "model_params": {"vocab_size": s["vocab"], "n_layers": s["layers"], "n_heads": s["heads"], "embed_dim": s["width"], "attn_length": s["T"], "dropout": 0.1,
                         "head_loss": head_loss},
        "training_params": {"dataset_folder": str(h5), "batch_size": s["B"], "steps_to_train": warm + steps, "step_log": 1, "save_every": 10**9,
                            "valid_steps": 10**9, "valid_fraction": 0.01, "save_loc": str(work / "runs"), "run_name": name, "sample_every": 0},
        "optim_params": {"lr": 1e-4},
    })
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    torch.cuda.reset_peak_memory_stats() if device != "cpu" else None
    trainer = Trainer(cfg, World(0, 1, 0, device), TrainOptions(resume="never"))
    nonemb = sum(p.numel() for n, p in trainer.model.named_parameters() if "embedder" not in n)  # the head counts
    trainer.fit()
    records = [r for r in read(work / "runs" / name) if "tokens_per_s" in r][warm:]
    tps = sum(r["tokens_per_s"] for r in records) / len(records)
    mfu = tps * (6 * nonemb + 12 * s["layers"] * s["T"] * s["width"]) / PEAK
    mem = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else 0.0
    return {"tokens_per_s": round(tps), "mfu": round(mfu, 4), "peak_mem_GiB": round(mem, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on CPU")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warm", type=int, default=4)
    ap.add_argument("--head-loss", choices=["plain", "chunked"], default="plain",
                    help="model_params.head_loss of arrows' runs (chunked: the head and cross-entropy fused, lower peak memory)")
    a = ap.parse_args()
    anchor = run_anchor(a.quick)
    print(f"\ndevice: {anchor['device']}  torch {anchor['torch']}\n")
    work = ROOT / "bench" / "out" / "train"
    work.mkdir(parents=True, exist_ok=True)
    shapes = QUICK if a.quick else SHAPES
    print(f"arrows head_loss: {a.head_loss}\n")
    print("| model | reference style tok/s | tuned tok/s | arrows tok/s | arrows MFU | vs tuned (target ≥ 1.0×) | vs reference (target ≥ 6×) | peak memory arrows / tuned |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in shapes.items():
        ref = anchor[f"reference_style_{name}"]
        tuned = anchor[f"tuned_{name}"]
        ours = arrows_tokens_per_s(name, s, work, a.steps, a.warm, a.head_loss)
        mem = f"{ours['peak_mem_GiB']} / {tuned.get('peak_mem_GiB', 0)} GiB"
        print(f"| {name} | {ref['tokens_per_s']:,} | {tuned['tokens_per_s']:,} | {ours['tokens_per_s']:,} | {ours['mfu']:.1%} | "
              f"{ours['tokens_per_s'] / tuned['tokens_per_s']:.2f}× | {ours['tokens_per_s'] / ref['tokens_per_s']:.1f}× | {mem} |", flush=True)


if __name__ == "__main__":
    main()
