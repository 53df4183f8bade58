"""`arrows demo`: the built-in example. It needs no download: the text is generated here."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

_SUBJECTS = ["the cat", "a dog", "the old sailor", "my neighbour", "the committee", "a small bird", "the engineer", "our teacher"]
_VERBS = ["sees", "builds", "remembers", "paints", "follows", "repairs", "describes", "forgets"]
_OBJECTS = ["the bridge", "a red house", "the long river", "an empty boat", "the morning train", "a strange letter", "the garden"]
_ENDINGS = ["before dawn", "after the storm", "with great care", "in silence", "every winter", "near the harbour", ""]


def demo_text(sentences: int, seed: int = 0) -> str:
    """Simple English-like sentences from a small grammar, deterministic for a seed."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_ENDINGS)]
        sentence = " ".join(w for w in words if w)
        lines.append(sentence[0].upper() + sentence[1:] + ".")
    return "\n".join(lines) + "\n"


def run_demo(out: Path) -> None:
    from arrows.cli import inspect
    from arrows.progress import Reporter
    from arrows.tokenize import tokenize

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    corpus = out / "corpus.txt"
    corpus.write_text(demo_text(50_000), encoding="utf-8")
    print(f"generated    {corpus} ({corpus.stat().st_size:,} bytes)")
    with Reporter.from_env() as reporter:
        tokenize([corpus], out / "tokens", vocab_size=1000, reporter=reporter)
    inspect(out / "tokens", verify=True, show=16)
