"""Synthetic languages whose arrow of time is known (`arrows synth`).

Each writes a text file, one example per line, and a sidecar JSON (`<file stem>.synth.json`)
with every parameter and what the language is expected to show. Tokenize them with
`arrows tokenize FILE --tokenizer bytes`: one token per character.

- `sparse-linear`: `x|y`, x uniform bits, y = A·x over GF(2) with A sparse and invertible. Read
  forwards each y bit is the parity of `row_weight` x bits; read backwards the model sees y first
  and must recover x = A⁻¹·y, where A⁻¹ is dense. A forward arrow.
- `sparse-linear-reversed`: the same lines reversed character by character (`y|x`, each written
  from its last bit to its first): its forward reading is sparse-linear's backward reading, a
  backward arrow of the same strength.
- `reversible`: random walks on a fixed undirected weighted graph, each started from the
  stationary distribution. Such a chain is reversible: the reversed text has the same law, so
  there is no arrow.
- `primes`: `p*q=n` with random primes p ≤ q: multiplying is easier than factoring. With `pad`,
  the numbers are zero-padded to a fixed width, so every line has the same length.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from arrows import gf2
from arrows.errors import InputError
from arrows.output_file import atomic_output, check_output_path

KINDS = ("sparse-linear", "sparse-linear-reversed", "reversible", "primes")
# Bounds of the sizes: the text is made in memory, and the sieve of primes too.
MAX_LINES = 100_000_000
MAX_WALK_LENGTH = 100_000
MAX_PRIME = 100_000_000

DEFAULTS = {
    "sparse-linear": {"bits": 8, "row_weight": 2},
    "reversible": {"nodes": 8, "walk_length": 16, "edges_per_node": 2.0},
    "primes": {"max_prime": 1000, "pad": False},
}
DEFAULTS["sparse-linear-reversed"] = DEFAULTS["sparse-linear"]
_SEARCH = 400  # candidate matrices tried for sparse-linear; the best (hardest backwards) is kept


def sidecar_path(text_file: Path) -> Path:
    """`lang.txt` → `lang.synth.json`."""
    text_file = Path(text_file)
    return text_file.with_name(text_file.stem + ".synth.json")


def write_language(kind: str, out: Path, lines: int, seed: int = 0, **params) -> dict:
    """Write `lines` examples of `kind` to `out` (atomically) and its sidecar; returns the sidecar."""
    if kind not in KINDS:
        raise InputError(f"unknown language {kind!r}; choose one of: {', '.join(KINDS)}")
    if not 1 <= lines <= MAX_LINES:
        raise InputError(f"--lines must be between 1 and {MAX_LINES:,} (the text is made in memory), not {lines}")
    if seed < 0:
        raise InputError(f"--seed must be at least 0, not {seed}")
    out = check_output_path(Path(out), "--out")
    check_output_path(sidecar_path(out), "sidecar")
    if out.suffix == ".json":
        raise InputError(f"{out}: the text file should not end in .json (its sidecar is {sidecar_path(out).name})")
    settings = {**DEFAULTS[kind], **{k: v for k, v in params.items() if v is not None}}
    unknown = set(settings) - set(DEFAULTS[kind])
    if unknown:
        raise InputError(f"{kind} takes {', '.join('--' + k.replace('_', '-') for k in DEFAULTS[kind])}; not {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(seed)
    try:
        if kind.startswith("sparse-linear"):
            text, info = _sparse_linear(rng, lines, seed, reversed_=kind.endswith("reversed"), **settings)
        elif kind == "reversible":
            text, info = _reversible(rng, lines, seed, **settings)
        else:
            text, info = _primes(rng, lines, **settings)
    except MemoryError:  # numpy's "Unable to allocate 74.5 GiB", a traceback, where the estimate was low
        raise InputError(f"not enough memory to make {lines:,} lines of {kind} (the text is made in memory); use fewer --lines") from None
    sidecar = {"kind": kind, "lines": lines, "seed": seed, "params": settings, "file": out.name, "bytes": len(text), **info}
    # Both files are written before either is renamed into place: a failed write (a full disk)
    # leaves the earlier pair as it was, never a new text beside the old text's sidecar.
    with atomic_output(out) as text_tmp, atomic_output(sidecar_path(out)) as sidecar_tmp:
        text_tmp.write_bytes(text)
        sidecar_tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def _check_memory(kind: str, lines: int, need: int) -> None:
    """Refuse at once a text whose making takes more memory (`need` bytes, estimated by each
    language from measured peaks) than is available: else numpy's MemoryError was a traceback, or
    the kernel killed the process ("Killed") after minutes of swapping."""
    from arrows._arrows import available_memory
    from arrows.progress import human_bytes

    available = available_memory()
    if available is not None and need > available:
        raise InputError(f"{lines:,} lines of {kind} take about {human_bytes(need)} of memory to make (the text is made in memory), "
                         f"more than the {human_bytes(available)} available; use at most about {lines * available // need:,} --lines")


def _rows_to_text(fields: list[np.ndarray], separators: list[bytes]) -> bytes:
    """Join per-line byte arrays (each (lines, width) uint8) with separators, one line each."""
    lines = fields[0].shape[0]
    parts = []
    for i, f in enumerate(fields):
        parts.append(f)
        sep = separators[i] if i < len(separators) else b"\n"
        parts.append(np.frombuffer(sep, dtype=np.uint8)[None, :].repeat(lines, axis=0))
    return np.concatenate(parts, axis=1).tobytes()


# ---- sparse-linear ------------------------------------------------------------------------------
def sparse_matrix(bits: int, row_weight: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """A sparse invertible A (rows as ints), its inverse, and the backward cost profile.

    Among `_SEARCH` random candidates (each row `row_weight` distinct x bits; for an even weight
    one row has one bit fewer, since rows of even weight alone are never invertible), keep the
    invertible one whose x bits are hardest to recover backwards: the most bits whose cheapest
    formula needs more than `row_weight` known bits, then the largest total cost.
    """
    if not 2 <= bits <= 24:
        raise InputError(f"--bits must be between 2 and 24, not {bits}")
    if not 1 <= row_weight <= bits:
        raise InputError(f"--row-weight must be between 1 and --bits ({bits}), not {row_weight}")
    rng = random.Random(seed)
    best = None
    for _ in range(_SEARCH):
        sizes = [row_weight] * bits
        if row_weight % 2 == 0:
            sizes[rng.randrange(bits)] = row_weight - 1
        rows = [sum(1 << c for c in rng.sample(range(bits), w)) for w in sizes]
        inv = gf2.inverse(rows, bits)
        if inv is None:
            continue
        costs = gf2.cheapest_parities(inv, bits)
        score = (sum(c > row_weight for c in costs), sum(costs))
        if best is None or score > best[0]:
            best = (score, rows, inv, costs)
    if best is None:
        # "Use an odd --row-weight or more --bits" was said for every case, wrong for most: more
        # bits make an even weight's invertible matrices rarer (2 per row fails from 20 bits up),
        # and a weight near --bits (odd or not) leaves too few distinct rows. 3 per row found one
        # for every --bits from 5 to 24 (seeds 0 to 5).
        advice = "use more --bits" if bits < 5 else "use --row-weight 3 (which finds one for any --bits from 5 to 24), or another --seed"
        raise InputError(f"found no invertible {bits}×{bits} matrix with {row_weight} bits per row among {_SEARCH} random ones; {advice}")
    _, rows, inv, costs = best
    if max(costs) <= row_weight:
        # One bit per row makes A a permutation, and A⁻¹ one too: more --bits never helps there.
        advice = "use --row-weight 2 or more (with 1, y is x reordered, as easy to read either way)" if row_weight == 1 else "use more --bits"
        raise InputError(f"with --bits {bits} and --row-weight {row_weight} no x bit is harder to recover backwards than forwards; {advice}")
    return rows, inv, costs


def _sparse_linear(rng, lines: int, seed: int, *, reversed_: bool, bits: int, row_weight: int):
    rows, inv, costs = sparse_matrix(bits, row_weight, seed)
    # x and y, their digits and the joined lines: about 5 bytes per character and 4 per bit.
    _check_memory("sparse-linear-reversed" if reversed_ else "sparse-linear", lines, lines * (5 * (2 * bits + 2) + 4 * bits))
    x = rng.integers(0, 2, size=(lines, bits), dtype=np.uint8)
    y = gf2.apply(rows, x)
    digits = ord("0")
    if reversed_:
        fields = [y[:, ::-1] + digits, x[:, ::-1] + digits]  # each line reversed: y_n..y_1 | x_n..x_1
    else:
        fields = [x + digits, y + digits]
    text = _rows_to_text(fields, [b"|"])
    hard = sum(c > row_weight for c in costs)
    line_tokens = 2 * bits + 2
    # Total information per line: the bits of x. Both directions can at best pay exactly that.
    ideal = bits * math.log(2) / line_tokens
    # A model that knows where each bit goes but not A pays ln 2 for each of the 2·bits bits; one
    # that learns everything a direction needs at most `row_weight` known bits for pays ln 2 for
    # each x bit plus each hard bit.
    easy_side = (bits * math.log(2)) / line_tokens
    hard_side = (bits + hard) * math.log(2) / line_tokens
    info = {
        "format": "y|x, each line reversed" if reversed_ else "x|y",
        "fields": ["y", "x"] if reversed_ else ["x", "y"],
        "separators": "|",
        "expected_arrow": "backward" if reversed_ else "forward",
        "matrix_rows": [format(r, f"0{bits}b")[::-1] for r in rows],  # row j: character c is A[j][c]
        "inverse_rows": [format(r, f"0{bits}b")[::-1] for r in inv],
        "inverse_row_weights": [gf2.weight(r) for r in inv],
        # For the direction that reads y first (backward for sparse-linear, forward for the
        # reversed lines): known bits the cheapest formula for each x bit needs, in the order the
        # x bits are read. The other direction needs `row_weight` at most.
        "hard_direction_costs": costs,
        "hard_bits": hard,
        "note": (
            "the last x bits read in the hard direction are always cheap: once the other x bits are "
            "known, any row of A that contains a bit gives it from a few known ones; A is chosen to "
            "make as many bits hard as possible"
        ),
        "nats_per_token": {
            "ideal": ideal,
            "format_only": 2 * bits * math.log(2) / line_tokens,
            "easy_direction_learned": easy_side,
            "hard_direction_sparse_only": hard_side,
        },
    }
    return text, info


# ---- reversible ---------------------------------------------------------------------------------
def random_graph(nodes: int, edges_per_node: float, rng) -> np.ndarray:
    """A connected undirected graph with random positive weights, as a symmetric weight matrix:
    a random spanning tree, plus random extra edges up to `edges_per_node` per node on average."""
    w = np.zeros((nodes, nodes))
    order = rng.permutation(nodes)
    for i in range(1, nodes):
        a, b = order[i], order[rng.integers(i)]
        w[a, b] = w[b, a] = rng.uniform(0.2, 1.0)
    target = int(round(edges_per_node * nodes / 2))
    candidates = [(a, b) for a in range(nodes) for b in range(a, nodes) if w[a, b] == 0]  # self-loops allowed
    rng.shuffle(candidates)
    for a, b in candidates[: max(target - (nodes - 1), 0)]:
        w[a, b] = w[b, a] = rng.uniform(0.2, 1.0)
    return w


def _reversible(rng, lines: int, seed: int, *, nodes: int, walk_length: int, edges_per_node: float):
    if not 2 <= nodes <= 26:
        raise InputError(f"--nodes must be between 2 and 26, not {nodes}")
    if not 2 <= walk_length <= MAX_WALK_LENGTH:
        raise InputError(f"--walk-length must be between 2 and {MAX_WALK_LENGTH:,}, not {walk_length}")
    # At least a spanning tree (nodes − 1 edges), at most every pair and self-loop.
    if not (math.isfinite(edges_per_node) and 0 < edges_per_node <= nodes + 1):
        raise InputError(f"--edges-per-node must be above 0 and at most --nodes + 1 ({nodes + 1}), not {edges_per_node}")
    # The walks as int64 and their text (17 bytes per letter), and each step's comparison of
    # every walk with its node's row of the transition matrix (10 bytes per node).
    _check_memory("reversible", lines, lines * (17 * (walk_length + 1) + 10 * nodes))
    w = random_graph(nodes, edges_per_node, np.random.default_rng(seed))
    strength = w.sum(axis=1)
    stationary = strength / strength.sum()
    transition = w / strength[:, None]
    # Sample every walk at once: inverse-CDF on the rows of the transition matrix.
    cdf = np.cumsum(transition, axis=1)
    cdf[:, -1] = 1.0
    walks = np.empty((lines, walk_length), dtype=np.int64)
    walks[:, 0] = rng.choice(nodes, size=lines, p=stationary)
    for t in range(1, walk_length):
        u = rng.random(lines)
        walks[:, t] = (u[:, None] > cdf[walks[:, t - 1]]).sum(axis=1)
    text = _rows_to_text([(walks + ord("a")).astype(np.uint8)], [])
    h_start = -float(np.sum(stationary * np.log(stationary)))
    with np.errstate(divide="ignore", invalid="ignore"):
        h_rows = -np.nansum(np.where(transition > 0, transition * np.log(transition), 0.0), axis=1)
    rate = float(np.sum(stationary * h_rows))
    info = {
        "format": "a walk of node letters",
        "fields": ["walk"],
        "separators": "",
        "expected_arrow": "none",
        "weights": np.round(w, 6).tolist(),
        "stationary": stationary.tolist(),
        "entropy_rate_nats": rate,
        "nats_per_token": {"ideal": (h_start + (walk_length - 1) * rate) / (walk_length + 1)},
    }
    return text, info


# ---- primes -------------------------------------------------------------------------------------
def primes_below(limit: int) -> np.ndarray:
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(limit**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    return np.flatnonzero(sieve)


def _primes(rng, lines: int, *, max_prime: int, pad: bool):
    if not 5 <= max_prime <= MAX_PRIME:
        raise InputError(f"--max-prime must be between 5 (two primes, 2 and 3) and {MAX_PRIME:,}, not {max_prime}")
    _check_memory("primes", lines, lines * 250 + 2 * max_prime)  # a Python string per line, and the sieve
    primes = primes_below(max_prime)
    pairs = np.sort(rng.choice(primes, size=(lines, 2)), axis=1)
    # Padded with zeros, every line has the same length (so windows can start at line starts).
    wp, wn = (len(str(int(primes[-1]))), len(str(int(primes[-1]) ** 2))) if pad else (0, 0)
    text = "".join(f"{p:0{wp}d}*{q:0{wp}d}={p * q:0{wn}d}\n" for p, q in pairs.tolist()).encode()
    info = {
        "format": "p*q=n",
        "fields": ["p", "q", "n"],
        "separators": "*=",
        "expected_arrow": "forward",
        "primes": int(len(primes)),
    }
    return text, info
