"""Synthetic languages, `arrows reverse`, and the GF(2) hardness check behind sparse-linear."""

import json
import os
import random

import numpy as np
import pytest

from arrows import gf2
from arrows.errors import InputError, InvalidUtf8Error
from arrows.reverse import reverse_file
from arrows.synth import primes_below, sidecar_path, write_language

from conftest import arrows


def _brute_force_costs(rows, n):
    """Cheapest formula for each x bit read backwards, by trying every subset of y and known x."""
    costs = []
    for i in range(n - 1, -1, -1):
        best = None
        for s_mask in range(1 << n):
            v = 0
            for j in range(n):
                if s_mask >> j & 1:
                    v ^= rows[j]
            # v must be e_i plus bits above i only (those are the known x bits T).
            if v & ((1 << (i + 1)) - 1) != 1 << i:
                continue
            cost = gf2.weight(s_mask) + gf2.weight(v >> (i + 1))
            best = cost if best is None else min(best, cost)
        costs.append(best)
    return costs


@pytest.mark.parametrize("seed", range(6))
def test_cheapest_parities_matches_brute_force(seed):
    rng = random.Random(seed)
    n = 5
    while True:
        rows = [rng.randrange(1, 1 << n) for _ in range(n)]
        inv = gf2.inverse(rows, n)
        if inv is not None:
            break
    # The inverse is an inverse.
    for i in range(n):
        combo = 0
        for j in range(n):
            if inv[i] >> j & 1:
                combo ^= rows[j]
        assert combo == 1 << i
    assert gf2.cheapest_parities(inv, n) == _brute_force_costs(rows, n)


def test_sparse_linear_without_numpy_2(tmp_path, monkeypatch):
    """numpy 1.26 (which the project accepts) has no np.bitwise_count: sparse-linear, and so the
    demo, ended in an AttributeError there. Its popcount counts the same bits."""
    values = np.array([0, 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF, *np.random.default_rng(0).integers(0, 2**63, 1000)], dtype=np.uint64)
    expected = [bin(int(v)).count("1") for v in values]
    assert gf2.popcount(values).tolist() == expected
    with_numpy_2 = write_language("sparse-linear", tmp_path / "a.txt", 50, bits=12, row_weight=3)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert gf2.popcount(values).tolist() == expected
    assert write_language("sparse-linear", tmp_path / "b.txt", 50, bits=12, row_weight=3) == {**with_numpy_2, "file": "b.txt"}
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


def _read_lines(path):
    return path.read_text().splitlines()


def test_sparse_linear_lines_follow_the_matrix(tmp_path):
    info = write_language("sparse-linear", tmp_path / "s.txt", 500, seed=3, bits=10, row_weight=3)
    side = json.loads(sidecar_path(tmp_path / "s.txt").read_text())
    assert side == json.loads(json.dumps(info))
    rows = [int(r[::-1], 2) for r in side["matrix_rows"]]
    assert all(gf2.weight(r) <= 3 for r in rows)
    assert gf2.inverse(rows, 10) is not None
    assert side["hard_bits"] >= 1 and max(side["hard_direction_costs"]) > 3
    lines = _read_lines(tmp_path / "s.txt")
    assert len(lines) == 500
    for line in lines:
        x, y = line.split("|")
        xv = [int(c) for c in x]
        for j, row in enumerate(rows):
            assert int(y[j]) == sum(xv[c] for c in range(10) if row >> c & 1) % 2
    # The reversed language is the same lines, each reversed character by character.
    write_language("sparse-linear-reversed", tmp_path / "r.txt", 500, seed=3, bits=10, row_weight=3)
    assert [l[::-1] for l in lines] == _read_lines(tmp_path / "r.txt")
    # Deterministic.
    write_language("sparse-linear", tmp_path / "s2.txt", 500, seed=3, bits=10, row_weight=3)
    assert (tmp_path / "s2.txt").read_bytes() == (tmp_path / "s.txt").read_bytes()


def test_reversible_walks_are_time_symmetric(tmp_path):
    info = write_language("reversible", tmp_path / "w.txt", 20_000, seed=1, nodes=5, walk_length=10)
    lines = _read_lines(tmp_path / "w.txt")
    assert all(len(l) == 10 for l in lines)
    k = 5
    counts = np.zeros((k, k))
    for l in lines:
        for a, b in zip(l, l[1:]):
            counts[ord(a) - 97, ord(b) - 97] += 1
    # Detailed balance: a→b as often as b→a (up to sampling noise).
    total = counts.sum()
    assert np.abs(counts - counts.T).max() / total < 0.01
    first = np.bincount([ord(l[0]) - 97 for l in lines], minlength=k) / len(lines)
    assert np.abs(first - np.array(info["stationary"])).max() < 0.02
    # Edges only where the graph has them.
    weights = np.array(info["weights"])
    assert np.all(counts[weights == 0] == 0)


def test_primes_lines(tmp_path):
    write_language("primes", tmp_path / "p.txt", 300, seed=2, max_prime=200)
    primes = set(primes_below(200).tolist())
    assert 199 in primes and 2 in primes and 1 not in primes
    for line in _read_lines(tmp_path / "p.txt"):
        pq, n = line.split("=")
        p, q = map(int, pq.split("*"))
        assert p in primes and q in primes and p <= q and int(n) == p * q


def test_bad_synth_parameters(tmp_path):
    with pytest.raises(InputError, match="bits"):
        write_language("sparse-linear", tmp_path / "s.txt", 10, bits=1)
    with pytest.raises(InputError, match="unknown language"):
        write_language("zipf", tmp_path / "s.txt", 10)
    with pytest.raises(InputError, match="takes"):
        write_language("primes", tmp_path / "s.txt", 10, bits=4)
    proc = arrows("synth", "reversible", "--out", tmp_path / "w.txt", "--bits", "4", check=False)
    assert proc.returncode != 0 and "does not take --bits" in proc.stderr and "Traceback" not in proc.stderr


def test_no_invertible_matrix_says_what_finds_one(tmp_path):
    """The advice was "use an odd --row-weight or more --bits" whatever the cause: wrong for an even
    weight on many bits (more bits make it worse) and for an odd weight near --bits."""
    for bits, row_weight in ((24, 2), (24, 23), (5, 5)):
        with pytest.raises(InputError, match="no invertible") as caught:
            write_language("sparse-linear", tmp_path / "s.txt", 10, bits=bits, row_weight=row_weight)
        assert "more --bits" not in str(caught.value) and "use --row-weight 3" in str(caught.value)
        write_language("sparse-linear", tmp_path / "s.txt", 10, bits=bits, row_weight=3)  # and it does
    with pytest.raises(InputError, match="use more --bits"):  # 3 bits: no weight gives a matrix with an arrow
        write_language("sparse-linear", tmp_path / "s.txt", 10, bits=3, row_weight=3)


def test_one_bit_per_row_is_told_to_raise_the_row_weight_not_the_bits(tmp_path):
    """With --row-weight 1, A is a permutation: no --bits gives an arrow, yet "use more --bits" was
    said, and followed (12 bits) it ended in "no invertible matrix"."""
    for bits in (3, 8):
        with pytest.raises(InputError, match="no x bit is harder") as caught:
            write_language("sparse-linear", tmp_path / "s.txt", 10, bits=bits, row_weight=1)
        assert "more --bits" not in str(caught.value) and "--row-weight 2 or more" in str(caught.value)
    write_language("sparse-linear", tmp_path / "s.txt", 10, bits=8, row_weight=2)  # and that gives one


def test_synth_cli(tmp_path):
    out = arrows("synth", "sparse-linear", "--out", tmp_path / "s.txt", "--lines", "100", "--bits", "8", "--row-weight", "3").stdout
    assert "expected     forward arrow" in out and "hard bits" in out
    assert len(_read_lines(tmp_path / "s.txt")) == 100 and sidecar_path(tmp_path / "s.txt").is_file()
    out = arrows("synth", "reversible", "--out", tmp_path / "w.txt", "--lines", "10").stdout
    assert "expected     no arrow" in out, out


TEXTS = ["", "a", "héllo wörld\n", "日本語のテキスト\r\nmixed 🎉 emoji ∑\n", "x" * 50]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("block", [1, 2, 3, 5, 4096])
def test_reverse_keeps_characters_whole(tmp_path, text, block):
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text(text, encoding="utf-8", newline="")
    assert reverse_file(src, dst, block=block) == len(text.encode())
    assert dst.read_bytes().decode("utf-8") == text[::-1]


def test_reverse_random_unicode(tmp_path):
    rng = random.Random(0)
    alphabet = "ab \n\té日本🎉Ω\u0301"
    for trial in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
        src.write_text(text, encoding="utf-8", newline="")
        reverse_file(src, dst, block=rng.randrange(1, 40))
        assert dst.read_bytes().decode("utf-8") == text[::-1]


def test_reverse_invalid_utf8_names_the_offset(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello \xff world")
    with pytest.raises(InvalidUtf8Error, match="byte 6"):
        reverse_file(src, tmp_path / "out.txt", block=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # no output, no temporary file left
    proc = arrows("reverse", src, tmp_path / "out.txt", check=False)
    assert proc.returncode == 1 and "invalid UTF-8 at byte 6" in proc.stderr
    # What it advises does what it says: --strict-utf8 stops at the first such byte (it was said to
    # find every one); iconv -c drops them all.
    assert "finds every" not in proc.stderr and "names the first" in proc.stderr and "iconv" in proc.stderr, proc.stderr


def test_reverse_cli(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("abc\ndéf\n", encoding="utf-8")
    arrows("reverse", src, tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "\nféd\ncba"
    proc = arrows("reverse", src, src, check=False)
    assert proc.returncode == 1 and "overwrite the input" in proc.stderr
    assert src.read_text(encoding="utf-8") == "abc\ndéf\n"
    # a folder or a device is named as what it is, not "no such file"
    for given, what in ((tmp_path, "a folder"), ("/dev/null", "not a regular file"), (tmp_path / "gone.txt", "no such file")):
        proc = arrows("reverse", given, tmp_path / "r.txt", check=False)
        assert proc.returncode != 0 and f"{given}: {what}; give a text file" in " ".join(proc.stderr.split()), proc.stderr


def test_padded_primes_have_one_length(tmp_path):
    write_language("primes", tmp_path / "p.txt", 200, seed=1, max_prime=100, pad=True)
    lines = _read_lines(tmp_path / "p.txt")
    assert {len(l) for l in lines} == {len("97*97=9409")}
    for line in lines:
        pq, n = line.split("=")
        p, q = map(int, pq.split("*"))
        assert int(n) == p * q


def test_outputs_never_replace_the_input_or_anything_but_a_file(tmp_path):
    import os
    import stat

    # An input whose name is the output's plus ".tmp" (once the temporary name) stays intact.
    src = tmp_path / "out.txt.tmp"
    src.write_text("hello wörld\n", encoding="utf-8")
    arrows("reverse", src, tmp_path / "out.txt")
    assert src.read_text(encoding="utf-8") == "hello wörld\n"
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "\ndlröw olleh"
    # A named pipe or a folder at the output path is refused, and left as it was.
    fifo, folder = tmp_path / "pipe", tmp_path / "adir"
    os.mkfifo(fifo)
    folder.mkdir()
    for target in (fifo, folder):
        for command in (["synth", "primes", "--out", target, "--lines", "2"], ["reverse", src, target]):
            proc = arrows(*command, check=False, timeout=60)
            assert proc.returncode == 1 and "is not a regular file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and folder.is_dir() and not any(folder.iterdir())
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p != src]


@pytest.mark.parametrize("args, message", [
    (["primes", "--seed", "-1"], "--seed must be at least 0"),
    (["reversible", "--edges-per-node", "nan"], "--edges-per-node must be above 0"),
    (["reversible", "--edges-per-node", "inf"], "--edges-per-node must be above 0"),
    (["primes", "--lines", "1000000000000"], "--lines must be between 1 and"),
    (["primes", "--max-prime", "3"], "--max-prime must be between 5"),
    (["primes", "--max-prime", "100000000000000000000000"], "--max-prime must be between 5"),
    (["reversible", "--walk-length", "100000000000000"], "--walk-length must be between 2 and"),
    (["sparse-linear", "--bits", "0"], "--bits must be between 2 and 24"),
])
def test_out_of_range_synth_values_are_one_clear_message(tmp_path, args, message):
    proc = arrows("synth", *args, "--out", tmp_path / "s.txt", check=False, timeout=60)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "s.txt").exists()


def test_demo_never_wipes_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("important")
    for args, message in ((["--out", mine], "did not make"), (["--out", "."], "the current folder"), (["--out", tmp_path / "new", "--steps", "0"], "--steps")):
        proc = arrows("demo", *args, check=False, cwd=tmp_path, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (mine / "thesis.tex").read_text() == "important" and not (tmp_path / "new").exists()
    # A folder an earlier demo made is made anew.
    from arrows.demo import MARKER, prepare_folder

    demo = tmp_path / "demo"
    prepare_folder(demo)
    (demo / "sparse-linear").mkdir()
    prepare_folder(demo)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]


def _fill_the_disk(*args, **kwargs):
    """A write that fails as on a full disk: /dev/full answers every write with ENOSPC, an
    OSError without a file name."""
    with open("/dev/full", "wb") as f:
        f.write(b"x")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_names_the_output_file(tmp_path):
    import errno

    from arrows.output_file import atomic_output

    target = tmp_path / "out.txt"
    with pytest.raises(OSError) as caught:
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            _fill_the_disk()
    # Before, the message was "No space left on device", naming no file.
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not any(tmp_path.iterdir())  # the partial temporary file is gone


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_synth_keeps_the_earlier_text_and_sidecar_together(tmp_path, monkeypatch):
    from pathlib import Path

    out = tmp_path / "lang.txt"
    write_language("primes", out, 20, seed=1)
    before = out.read_bytes(), sidecar_path(out).read_bytes()
    monkeypatch.setattr(Path, "write_text", _fill_the_disk)  # the sidecar's write fails, the text's does not
    with pytest.raises(OSError) as caught:
        write_language("primes", out, 20, seed=2)
    assert caught.value.filename == str(sidecar_path(out))
    # The text of seed 2 beside the sidecar of seed 1 would describe it wrongly.
    assert (out.read_bytes(), sidecar_path(out).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lang.synth.json", "lang.txt"]


def test_a_language_too_large_for_memory_is_refused_at_once(tmp_path, monkeypatch):
    from arrows import _arrows, synth

    out = tmp_path / "walks.txt"
    # A machine with 50 MB free: 1,000,000 walks take about 370 MB to make. Before, numpy raised
    # MemoryError (a traceback) or the kernel killed the process after minutes of swapping.
    monkeypatch.setattr(_arrows, "available_memory", lambda: 50_000_000)
    with pytest.raises(InputError, match=r"1,000,000 lines of reversible take about 369.0 MB .* more than the 50.0 MB available; use at most about 135,501 --lines"):
        write_language("reversible", out, 1_000_000)
    write_language("reversible", out, 100_000)  # what fits is made
    # Where the estimate is low, numpy's MemoryError is the same clear InputError.
    monkeypatch.setattr(_arrows, "available_memory", lambda: None)
    monkeypatch.setattr(synth, "_rows_to_text", lambda *a: np.empty(2**62, dtype=np.uint8))
    with pytest.raises(InputError, match="not enough memory to make 10 lines of reversible"):
        write_language("reversible", out, 10)
