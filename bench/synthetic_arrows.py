"""Synthetic languages with a known arrow, trained forward and backward and compared.

Not a test: on a GPU when there is one, else on the CPU for as long as it takes (about 15 minutes
on 2 cores at the default budget). For each language it prints δ = (L_bw − L_fw)/L_fw with its 95%
paired bootstrap interval, the steps, the time and the device, and checks what the language is
built to show:

    sparse-linear            δ > 0, the interval excluding 0
    sparse-linear-reversed   δ < 0, the interval excluding 0
    reversible               |δ| < 1%
    primes                   reported (the paper's language; no check)

Usage: python bench/synthetic_arrows.py [--out DIR] [--steps-scale 2] [--only reversible]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # bench/tokenize.py shadows a stdlib module

import argparse
import json
import shutil
import time

from arrows.demo import LANGUAGES as DEMO_LANGUAGES
from arrows.demo import language_params, run_language

# The demo's three languages at the demo's budget, and the paper's primes.
LANGUAGES = {kind: (lines, steps, language_params(kind)) for kind, lines, steps in DEMO_LANGUAGES}
LANGUAGES["primes"] = (60_000, 3000, {"max_prime": 1000, "pad": True})


def check(kind: str, s: dict) -> tuple[str, bool | None]:
    if kind == "sparse-linear":
        return "δ > 0 and the interval excludes 0", s["low"] > 0
    if kind == "sparse-linear-reversed":
        return "δ < 0 and the interval excludes 0", s["high"] < 0
    if kind == "reversible":
        return "|δ| < 1%", abs(s["delta"]) < 0.01
    return "reported", None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/synthetic"))
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every language's training steps")
    ap.add_argument("--only", action="append", choices=sorted(LANGUAGES), help="run only these languages")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    if args.out.exists():
        shutil.rmtree(args.out)
    results = []
    for kind, (lines, steps, params) in LANGUAGES.items():
        if args.only and kind not in args.only:
            continue
        steps = int(steps * args.steps_scale)
        print(f"\n═══ {kind}: {lines:,} lines, {steps:,} steps per direction on {device_name} ═══", flush=True)
        t0 = time.perf_counter()
        report = run_language(kind, args.out / kind, lines=lines, steps=steps, params=params, device=device)
        s = report["summary"]
        expectation, ok = check(kind, s)
        results.append({
            "language": kind, "delta": s["delta"], "low": s["low"], "high": s["high"],
            "loss_fw": s["loss_fw"], "loss_bw": s["loss_bw"], "steps": steps, "seconds": time.perf_counter() - t0,
            "device": device_name, "expectation": expectation, "holds": ok, "notes": report["notes"],
        })
    print("\n| language | L_fw | L_bw | δ | 95% interval | steps | time | device | expectation | holds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        holds = "–" if r["holds"] is None else ("yes" if r["holds"] else "**no**")
        print(f"| {r['language']} | {r['loss_fw']:.4f} | {r['loss_bw']:.4f} | {100 * r['delta']:+.2f}% | "
              f"[{100 * r['low']:+.2f}%, {100 * r['high']:+.2f}%] | {r['steps']:,} | {r['seconds']:.0f} s | {r['device']} | {r['expectation']} | {holds} |")
    (args.out / "synthetic_arrows.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.out / 'synthetic_arrows.json'}")


if __name__ == "__main__":
    main()
