"""Benchmark (not a test): windows per second of arrows' WindowLoader against its anchors.

    python bench/loader.py [--batches 400]

In one run, at T=256 and B=250, forward and backward: the reference h5py Dataset + DataLoader and
the numpy memmap gather (../shared/bench/reference_loader_anchor.py, which also writes the 50M-token
h5 file used by both), then arrows reading that same h5 file with 1 and 2 loader threads.
Targets: >= 20x the reference and >= 2x the numpy gather on one thread; backward within 10% of
forward.
"""

from __future__ import annotations

import sys

# This folder holds a `tokenize.py`, which would shadow the standard library's module of that name.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ROOT.parent / "shared" / "bench" / "reference_loader_anchor.py"
T, B = 256, 250


def anchor(backward: bool) -> dict:
    out = subprocess.run([sys.executable, str(ANCHOR)] + (["backwards"] if backward else []), capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+_per_s)=([\d.]+)", out)}


def arrows_windows_per_s(h5: Path, backward: bool, threads: int, batches: int) -> float:
    from arrows.data import WindowLoader

    # T tokens per window as in the anchor (input BOS + 255 tokens); valid split off: the anchor has none.
    loader = WindowLoader(h5, T, B, backward=backward, threads=threads, valid_fraction=0.0, vocab_size=50257, seed=0)
    it = iter(loader)
    for _ in range(10):  # warm the page cache and the ring
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
    return batches * B / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=400)
    a = ap.parse_args()
    h5 = Path(tempfile.gettempdir()) / "anchor_tokens.h5"
    rows = []
    for backward in (False, True):
        ref = anchor(backward)  # first call also creates the h5 file
        direction = "backward" if backward else "forward"
        print(f"{direction}: reference {ref['reference_windows_per_s']:,.0f} windows/s, numpy memmap gather {ref['memmap_gather_windows_per_s']:,.0f} windows/s", flush=True)
        for threads in (1, 2):
            wps = arrows_windows_per_s(h5, backward, threads, a.batches)
            print(f"{direction}: arrows threads={threads} {wps:,.0f} windows/s", flush=True)
            rows.append((direction, threads, wps, ref))
    fw1 = next(r[2] for r in rows if r[0] == "forward" and r[1] == 1)
    bw1 = next(r[2] for r in rows if r[0] == "backward" and r[1] == 1)
    print(f"\nmachine: {os.cpu_count()} cores\n")
    print("| direction | threads | windows/s | vs reference (target ≥ 20×) | vs numpy gather (target ≥ 2× on 1 thread) |")
    print("|---|---|---|---|---|")
    for direction, threads, wps, ref in rows:
        print(f"| {direction} | {threads} | {wps:,.0f} | {wps / ref['reference_windows_per_s']:.1f}× | {wps / ref['memmap_gather_windows_per_s']:.2f}× |")
    print(f"\nbackward / forward on 1 thread: {bw1 / fw1:.2f} (target ≥ 0.90)")


if __name__ == "__main__":
    main()
