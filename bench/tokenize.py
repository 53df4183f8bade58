"""Benchmark (not a test): arrows tokenization against its anchors, in one run on one machine.

    python bench/tokenize.py [--mb 200] [--work bench/out]

Builds a corpus of at least --mb MB from ../shared/data (paragraphs shuffled and repeated), then
measures, each in its own process:
  - BPE training (vocab 50257, min frequency 2) time and peak memory: arrows vs the reference way
    (HF `tokenizers` via Python, ../shared/bench/reference_tokenize_anchor.py, which also encodes);
  - encoding MB/s with a fixed tokenizer at 1 and 2 threads: arrows vs tiktoken at the same
    vocabulary (../shared/bench/tiktoken_anchor.py) and vs the reference way.
Prints every figure and its ratio against the anchor. Targets: encoding >= 2x tiktoken on one
thread, 2 threads >= 1.8x 1 thread, training no slower and no larger than the reference.
"""

from __future__ import annotations

import sys

# This folder holds a `tokenize.py`, which would shadow the standard library's module of that name.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def build_corpus(path: Path, mb: int) -> None:
    if path.exists() and path.stat().st_size >= mb * 1_000_000:
        return
    paragraphs = []
    for name in ("debian_reference_en.txt", "debian_reference_fr.txt"):
        text = (SHARED / "data" / name).read_text(encoding="utf-8")
        paragraphs += [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    rng = random.Random(0)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1_000_000:
            rng.shuffle(paragraphs)
            for p in paragraphs:
                f.write(p + "\n\n")
                size += len(p.encode()) + 2


# Runs in a child process: one tokenize job, then its summary and the process's peak memory.
# arrows reads the corpus through a memory map, whose (reclaimable) page-cache pages count in
# ru_maxrss; the anchor reads with read(). So the peak compared is that of anonymous memory
# (RssAnon, sampled every 20 ms), which is what would run a machine out of memory.
_ARROWS_JOB = """
import json, resource, sys, threading, time
from arrows.tokenize import tokenize
peak = [0]
def sample():
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
args = json.loads(sys.argv[1])
s = tokenize([args["corpus"]], args["out"], force=True, **args["options"])
s["maxrss_mb"] = peak[0] / 1024
s["maxrss_all_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(s))
"""


def arrows_job(corpus: Path, out: Path, **options) -> dict:
    arg = json.dumps({"corpus": str(corpus), "out": str(out), "options": options})
    proc = subprocess.run([sys.executable, "-c", _ARROWS_JOB, arg], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def anchor(script: str, *args) -> str:
    proc = subprocess.run([sys.executable, str(SHARED / "bench" / script), *map(str, args)], capture_output=True, text=True, check=True)
    return proc.stdout


def fields(line: str) -> dict:
    return {k: float(v) if re.fullmatch(r"[\d.]+", v) else v for k, v in re.findall(r"(\w+)=(\S+)", line)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="corpus size in MB (default 200)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out", help="scratch folder")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    corpus = a.work / f"corpus_{a.mb}mb.txt"
    build_corpus(corpus, a.mb)
    mb = corpus.stat().st_size / 1e6
    print(f"corpus: {corpus} ({mb:.0f} MB)\n", flush=True)

    # Training (and encoding on 2 threads) the arrows way; its tokenizer is then fixed.
    trained = arrows_job(corpus, a.work / "arrows_trained", vocab_size=50257, sample_bytes=10**12, threads=2)
    tok = a.work / "arrows_trained" / "tokenizer.json"
    print(f"arrows train: {trained['trained']['seconds']:.1f} s, {trained['trained']['merges']} merges, peak {trained['maxrss_mb']:.0f} MB anonymous ({trained['maxrss_all_mb']:.0f} MB with mapped corpus pages), whole job", flush=True)
    enc, whole = {}, {}
    for threads in (1, 2):
        # Best of 3: a run of about a second is easily disturbed on a shared machine.
        s = min((arrows_job(corpus, a.work / f"arrows_t{threads}", tokenizer=str(tok), threads=threads) for _ in range(3)), key=lambda r: r["seconds"])
        enc[threads] = mb / s["encode_seconds"]
        whole[threads] = mb / s["seconds"]
        print(
            f"arrows encode threads={threads}: {enc[threads]:.1f} MB/s encoding phase (reading, encoding, writing and syncing shards); "
            f"{whole[threads]:.1f} MB/s whole job incl. loading the tokenizer ({s['tokens']:,} tokens)",
            flush=True,
        )

    ref = fields(anchor("reference_tokenize_anchor.py", corpus, 2))
    print(f"reference (HF tokenizers via Python): train {ref['train_s']:.1f} s, encode {ref['encode_MBps']:.2f} MB/s, peak {ref['maxrss_MB']:.0f} MB", flush=True)
    tik = {}
    for line in anchor("tiktoken_anchor.py", corpus).splitlines():
        f = fields(line)
        tik[int(f["threads"])] = f["MBps"]
        print(f"tiktoken threads={int(f['threads'])}: {f['MBps']:.1f} MB/s (ids identical to HF: {f['identical_to_hf']})", flush=True)

    rows = [
        ("encode 1 thread vs tiktoken 1 thread", enc[1] / tik[1], 2.0),
        ("encode 2 threads vs tiktoken 2 threads", enc[2] / tik[2], None),
        ("encode 2 threads vs arrows 1 thread", enc[2] / enc[1], 1.8),
        ("whole job 2 threads vs 1 thread", whole[2] / whole[1], None),
        ("encode 2 threads vs reference 2 threads", enc[2] / ref["encode_MBps"], None),
        ("training time: reference / arrows", ref["train_s"] / trained["trained"]["seconds"], 1.0),
        ("peak memory: reference / arrows", ref["maxrss_MB"] / trained["maxrss_mb"], 1.0),
    ]
    print("\n| measure | ratio | target |\n|---|---|---|")
    for name, ratio, target in rows:
        verdict = "" if target is None else (" ✓" if ratio >= target else " ✗")
        print(f"| {name} | {ratio:.2f}× | {'' if target is None else f'≥ {target}×'}{verdict} |")


if __name__ == "__main__":
    main()
