"""`arrows tokenize` and `arrows inspect`, run as a user runs them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ARROWS, arrows, random_text
from tokenizers import Tokenizer

from arrows.data import TokenStore
from arrows.h5 import h5_tokens


def hf_ids(tokenizer_json: Path, texts: list[str]) -> list[int]:
    """The reference: each file encoded whole by the `tokenizers` Python package."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = []
    for t in texts:
        ids.extend(tok.encode(t).ids)
    return ids


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from arrows.cli import app; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = arrows("--help").stdout
    for command in ("tokenize", "inspect", "demo"):
        assert command in out
    # Each command's summary is one paragraph: on a wide terminal, one line of the list.
    wide = arrows("--help", env={"COLUMNS": "300"}).stdout
    assert "95% paired bootstrap interval" in wide and "trained forward and backward with a small GPT" in wide, wide
    help_text = arrows("tokenize", "--help", env={"COLUMNS": "200"}).stdout
    for option in ("--out", "--tokenizer", "--vocab-size", "--sample-bytes", "--seed", "--threads", "--shard-bytes", "--strict-utf8", "--resume", "--force", "--h5"):
        assert option in help_text


def test_real_text_matches_the_tokenizers_package(tmp_path, shared_data):
    inputs = [shared_data / "debian_reference_en.txt", shared_data / "debian_reference_fr.txt"]
    out = tmp_path / "store"
    proc = arrows("tokenize", *inputs, "--out", out, "--vocab-size", "5000", "--shard-bytes", "200KB")
    assert "tokens" in proc.stdout and "bytes/token" in proc.stdout
    texts = [p.read_bytes().decode("utf-8") for p in inputs]
    store = TokenStore(out)
    expected = hf_ids(out / "tokenizer.json", texts)
    assert len(store) == len(expected)
    assert np.array_equal(store[:], np.array(expected))
    assert store.vocab_size == 5000 and store.bos_id == 0 and store.dtype == np.dtype("<u2")
    assert Tokenizer.from_file(str(out / "tokenizer.json")).id_to_token(0) == "<|endoftext|>"
    # bytes/token of a 5000-merge BPE on English/French prose: well above plain bytes
    assert sum(len(t.encode()) for t in texts) / len(store) > 3.0
    assert len(store.manifest["shards"]) >= 8

    # One thread, another shard size: the same stream.
    other = tmp_path / "one_thread"
    arrows("tokenize", *inputs, "--out", other, "--tokenizer", out / "tokenizer.json", "--threads", "1", "--shard-bytes", "10MB")
    assert np.array_equal(TokenStore(other)[:], store[:])


def test_default_vocabulary_is_gpt2_sized(tmp_path, shared_data):
    out = tmp_path / "store"
    proc = arrows("tokenize", shared_data / "debian_reference_en.txt", "--out", out)
    store = TokenStore(out)
    text = (shared_data / "debian_reference_en.txt").read_text(encoding="utf-8")
    assert np.array_equal(store[:], np.array(hf_ids(out / "tokenizer.json", [text])))
    # 0.8 MB cannot fill 50257 ids with pairs seen twice: the trainer stops early and says so.
    assert 257 < store.vocab_size < 50257
    assert f"the vocabulary has {store.vocab_size:,} ids, not the 50,257 asked" in " ".join(proc.stderr.split()), proc.stderr


def test_a_vocabulary_the_sample_cannot_fill_is_said_so(tmp_path):
    # It was only visible as a smaller "vocabulary" figure in the summary.
    (tmp_path / "t.txt").write_text("the arrow of time\n" * 200)
    small = arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "a", "--vocab-size", "100000")
    vocab = TokenStore(tmp_path / "a").vocab_size
    assert 257 < vocab < 280 and f"stopped after {vocab - 257} merges" in small.stderr, small.stderr
    assert f"the vocabulary has {vocab:,} ids, not the 100,000 asked" in " ".join(small.stderr.split()), small.stderr
    # The sample was the whole corpus: a larger --sample-bytes, once advised, cannot help.
    assert "--sample-bytes" not in small.stderr and "only more text" in small.stderr, small.stderr
    sampled = arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "c", "--vocab-size", "100000", "--sample-bytes", "1000")
    assert "a larger --sample-bytes" in " ".join(sampled.stderr.split()), sampled.stderr
    reached = arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "b", "--vocab-size", str(vocab))
    assert TokenStore(tmp_path / "b").vocab_size == vocab and "note:" not in reached.stderr, reached.stderr


def test_generated_text_edge_cases(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a_empty.txt").write_bytes(b"")
    (corpus / "b_invalid.txt").write_bytes(b"valid start \xff\xfe then \xe2\x82 broken \xc3")
    # One 3 MB line without a newline, and a 1 MB run of letters without any space.
    (corpus / "c_huge_line.txt").write_text(random_text(1, 3_000_000).replace("\n", " "), encoding="utf-8")
    (corpus / "d_no_space.txt").write_text("abcdefghij" * 100_000, encoding="utf-8")
    small = corpus / "many"
    small.mkdir()
    for i in range(300):
        (small / f"{i:04d}.txt").write_text(random_text(100 + i, 50), encoding="utf-8")
    (corpus / "ignored.md").write_text("not a txt file")

    out = tmp_path / "store"
    proc = arrows("tokenize", corpus, "--out", out, "--vocab-size", "1000", "--shard-bytes", "1MB")
    assert "replaced     5 invalid UTF-8 bytes" in proc.stdout
    files = sorted(p for p in corpus.rglob("*.txt"))
    assert [Path(i["path"]) for i in json.loads((out / "manifest.json").read_text())["inputs"]] == files
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in files]
    store = TokenStore(out)
    assert store.manifest["replaced_bytes"] == 5
    assert np.array_equal(store[:], np.array(hf_ids(out / "tokenizer.json", texts)))


def test_strict_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"0123456789 abc \x80 rest")
    proc = arrows("tokenize", bad, "--out", tmp_path / "out", "--tokenizer", "bytes", "--strict-utf8", check=False)
    assert proc.returncode == 1
    assert "bad.txt" in proc.stderr and "byte offset 15" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.txt"], "No such file"),
        (["{empty}"], "empty"),
        (["{text}", "--vocab-size", "100"], "257"),
        (["{text}", "--tokenizer", "nope.json"], "no such tokenizer file"),
        (["{text}", "--tokenizer", "{notjson}"], "not a tokenizer.json"),
        (["{text}", "--shard-bytes", "lots"], "not a size"),
        (["{text}", "--resume", "--force"], "contradict"),
        # the BPE training's options with a given tokenizer: refused, not silently ignored
        (["{text}", "--tokenizer", "bytes", "--sample-bytes", "10MB"], "--sample-bytes applies only"),
        (["{text}", "--tokenizer", "bytes", "--seed", "3"], "--seed applies only"),
    ],
)
def test_bad_inputs_give_one_clear_message(tmp_path, args, message):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "text.txt").write_text("some text " * 100)
    (tmp_path / "notjson.json").write_text("{ nope")
    subst = {"{empty}": tmp_path / "empty.txt", "{text}": tmp_path / "text.txt", "{notjson}": tmp_path / "notjson.json"}
    args = [subst.get(a, a) for a in args]
    proc = arrows("tokenize", *args, "--out", tmp_path / "out", check=False, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_non_empty_output_is_refused_unless_resume_or_force(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(2, 20_000))
    out = tmp_path / "out"
    arrows("tokenize", text, "--out", out, "--tokenizer", "bytes")
    proc = arrows("tokenize", text, "--out", out, "--tokenizer", "bytes", check=False)
    assert proc.returncode == 1 and "--resume" in proc.stderr and "--force" in proc.stderr
    arrows("tokenize", text, "--out", out, "--tokenizer", "bytes", "--resume")  # already complete: nothing to do
    arrows("tokenize", text, "--out", out, "--tokenizer", "bytes", "--force")
    # Resuming with another input is refused, saying what differs.
    text.write_text(random_text(3, 20_000))
    proc = arrows("tokenize", text, "--out", out, "--tokenizer", "bytes", "--resume", check=False)
    assert proc.returncode == 1 and "t.txt was" in proc.stderr


def big_corpus(path: Path, mb: int) -> None:
    """Many MB quickly: a 1 MB random block repeated, with the copy number mixed in."""
    block = random_text(7, 1_000_000, specials=False)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(mb):
            f.write(f"copy {i}\n")
            f.write(block)


def test_kill_9_then_resume_is_byte_identical(tmp_path):
    corpus = tmp_path / "big.txt"
    big_corpus(corpus, 150)
    common = ["--tokenizer", "bytes", "--shard-bytes", "4MB", "--threads", "2"]
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    arrows("tokenize", corpus, "--out", reference, *common)
    duration = time.monotonic() - t0
    ref_files = {p.name: p.read_bytes() for p in reference.iterdir() if not p.name.startswith(".")}
    assert len(ref_files) > 30

    out = tmp_path / "crashed"
    kills = 0
    # Kill points spread over the run (each attempt resumes where the last one stopped).
    for fraction in (0.25, 0.3, 0.35, 0.4, 0.5):
        args = [str(ARROWS), "tokenize", str(corpus), "--out", str(out), *common, "--resume"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(fraction * duration)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the job finished before the kills: make the corpus bigger"
    arrows("tokenize", corpus, "--out", out, *common, "--resume")
    got = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert got.keys() == ref_files.keys()
    for name in ref_files:
        assert got[name] == ref_files[name], name


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_cleanly_and_resumes(tmp_path, signame):
    # SIGTERM (`kill`, a cluster's time limit) as Ctrl-C: the job is cancelled, with the message
    # that says how to continue (it ended the command without a word, exit -15).
    corpus = tmp_path / "big.txt"
    big_corpus(corpus, 200)
    out = tmp_path / "out"
    args = [str(ARROWS), "tokenize", str(corpus), "--out", str(out), "--tokenizer", "bytes", "--shard-bytes", "2MB", "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (out / "manifest.json").exists() and time.monotonic() < deadline:  # the job has started
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("finished before the interrupt")
    assert proc.returncode == 130, err
    assert "interrupted; continue with the same command and --resume" in " ".join(err.split()) and "Traceback" not in err, err
    assert not list(out.glob("*.tmp"))
    summary = arrows("tokenize", corpus, "--out", out, "--tokenizer", "bytes", "--shard-bytes", "2MB", "--resume").stdout
    assert np.array_equal(TokenStore(out)[:], np.frombuffer(corpus.read_bytes(), dtype=np.uint8).astype(np.int64) + 1)
    # The rate counts what this run encoded (it printed thousands of MB/s: the whole input over
    # the resumed run's seconds).
    assert "resumed      at input byte" in summary and "encoded in this run)" in summary, summary


def test_progress_lines_in_a_log(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(9, 10_000_000))
    proc = arrows("tokenize", corpus, "--out", tmp_path / "out", "--tokenizer", "bytes", "--threads", "1", env={"ARROWS_PROGRESS_SECONDS": "0"})
    lines = [l for l in proc.stderr.splitlines() if l.startswith("encoding:")]
    assert lines, proc.stderr
    assert "MB /" in lines[-1] and "%" in lines[-1]
    assert "bytes/token" in proc.stdout and "time" in proc.stdout


@pytest.mark.parametrize("value", ["5s", "nan", "-1"])
def test_a_bad_progress_interval_is_named_not_a_traceback(tmp_path, value):
    corpus = tmp_path / "t.txt"
    corpus.write_text("some text\n")
    proc = arrows("tokenize", corpus, "--out", tmp_path / "out", "--tokenizer", "bytes", check=False, env={"ARROWS_PROGRESS_SECONDS": value})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"ARROWS_PROGRESS_SECONDS={value!r}" in proc.stderr, proc.stderr


def test_inspect_and_verify_find_a_damaged_shard(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(10, 300_000))
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--vocab-size", "600", "--shard-bytes", "50KB")
    proc = arrows("inspect", out, "--verify")
    assert "verified" in proc.stdout and "bytes/token" in proc.stdout and "decoded" in proc.stdout
    shard = sorted(out.glob("shard_*.bin"))[3]
    data = bytearray(shard.read_bytes())
    data[200] ^= 0x01
    shard.write_bytes(bytes(data))
    proc = arrows("inspect", out, "--verify", check=False)
    assert proc.returncode == 1 and shard.name in proc.stderr and "checksum" in proc.stderr
    # A truncated shard is caught when the store is opened at all.
    shard.write_bytes(bytes(data[:-5]))
    proc = arrows("inspect", out, check=False)
    assert proc.returncode == 1 and shard.name in proc.stderr and "truncated" in proc.stderr


def test_inspect_verify_names_damage_among_the_tokens_it_shows(tmp_path):
    # The first id of shard 0 made one beyond the vocabulary: --verify names the shard, before
    # decoding the first tokens would refuse that id without saying where it came from.
    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(12, 100_000))
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--vocab-size", "600", "--shard-bytes", "50KB")
    shard = sorted(out.glob("shard_*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[64:66] = (60_000).to_bytes(2, "little")  # ids start at byte 64, u16 for this vocabulary
    shard.write_bytes(bytes(data))
    proc = arrows("inspect", out, "--verify", check=False)
    assert proc.returncode == 1 and shard.name in proc.stderr and "checksum" in proc.stderr, proc.stderr


def test_h5_export_is_readable_like_the_reference(tmp_path):
    import h5py

    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(11, 200_000))
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--vocab-size", "500", "--h5")
    with h5py.File(out / "tokens.h5", "r") as f:
        ds = f["tokens"]
        assert ds.dtype == np.int32 and ds.chunks is None and ds.compression is None
        assert np.array_equal(ds[:], TokenStore(out)[:].astype(np.int32))


def test_token_store_api(tmp_path):
    corpus = tmp_path / "t.txt"
    text = random_text(12, 100_000, specials=False)
    corpus.write_text(text)
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--tokenizer", "bytes", "--shard-bytes", "10KB")
    store = TokenStore(out)
    raw = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) + 1
    assert len(store) == len(raw) and len(store.manifest["shards"]) >= 9
    assert np.array_equal(store[:], raw)
    for a, b in [(0, 1), (5, 10_500), (9_990, 10_010), (len(raw) - 3, len(raw)), (50, 50)]:
        assert np.array_equal(store[a:b], raw[a:b])
    assert store[-1] == raw[-1] and store[123] == raw[123]
    assert np.array_equal(store[10:40:3], raw[10:40:3])
    # Any slice gives what numpy gives, negative steps and shard boundaries included.
    rng = np.random.default_rng(0)
    for _ in range(300):
        start, stop = (int(v) if v < len(raw) + 5 else None for v in rng.integers(-len(raw) - 5, len(raw) + 10, 2))
        step = int(rng.choice([1, 2, 3, 1000, -1, -2, -7, -5000]))
        assert np.array_equal(store[start:stop:step], raw[start:stop:step]), (start, stop, step)
    with pytest.raises(TypeError):
        store[1.5]
    within = store[100:200]
    assert isinstance(within.base, np.memmap) or isinstance(within, np.memmap)  # a view: no copy
    assert store.tokenizer.decode(store[:50].tolist()) == text.encode()[:50].decode("utf-8", errors="replace")
    with pytest.raises(IndexError):
        store[len(raw)]
    assert store.verify() == []


def test_unfinished_store_is_refused_by_token_store(tmp_path):
    from arrows.errors import InputError

    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="not a token store"):
        TokenStore(tmp_path / "nothing")


def test_full_disk_is_a_clear_error_and_resumable(tmp_path):
    """A file-size limit stands in for a full disk: writes past it fail with EFBIG."""
    import resource

    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(13, 8_000_000), encoding="utf-8")
    common = ["--tokenizer", "bytes", "--shard-bytes", "2MB"]  # 4 MB shard files (u16 ids)
    reference = tmp_path / "reference"
    arrows("tokenize", corpus, "--out", reference, *common)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))

    out = tmp_path / "out"
    proc = subprocess.run([str(ARROWS), "tokenize", str(corpus), "--out", str(out), *common], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert "shard_" in proc.stderr and "too large" in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert "free some space, then run the same command with --resume" in proc.stderr, proc.stderr
    assert not list(out.glob("*.tmp"))
    arrows("tokenize", corpus, "--out", out, *common, "--resume")
    for p in reference.glob("shard_*.bin"):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_h5_that_does_not_fit_is_a_clear_error_and_resumable(tmp_path):
    """--h5 past a file-size limit (a full disk): h5py's close then fails with a RuntimeError that
    hid the write's OSError, a traceback, and tokens.h5.tmp stayed, holding the space."""
    import resource

    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(17, 1_000_000), encoding="utf-8")
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))  # the 2 MB shard fits, not the 4 MB tokens.h5

    common = ["--tokenizer", "bytes", "--h5"]
    proc = subprocess.run([str(ARROWS), "tokenize", str(corpus), "--out", str(out), *common], capture_output=True, text=True, preexec_fn=limit)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{out / 'tokens.h5'}: File too large; the token store is complete and kept" in message and "with --resume" in message, message
    assert sorted(p.name for p in out.iterdir()) == [".arrows.lock", "manifest.json", "shard_000000.bin", "tokenizer.json"]
    arrows("tokenize", corpus, "--out", out, *common, "--resume")
    assert np.array_equal(h5_tokens(out / "tokens.h5"), TokenStore(out)[:])


def test_corrupted_manifest_is_named(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(14, 10_000))
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--tokenizer", "bytes")
    (out / "manifest.json").write_text('{"format": "arrows-token-store", "version": 1, "tok')
    proc = arrows("inspect", out, check=False)
    assert proc.returncode == 1 and "manifest.json" in proc.stderr and "unreadable manifest" in proc.stderr
    proc = arrows("tokenize", corpus, "--out", out, "--tokenizer", "bytes", "--resume", check=False)
    assert proc.returncode == 1 and "manifest.json" in proc.stderr and "--force" in proc.stderr


def test_a_missing_or_damaged_tokenizer_is_named_without_a_traceback(tmp_path):
    """The tokenizers library's error is a bare Exception naming no file: inspect, TokenStore and
    generate used to end with it, as a traceback."""
    from arrows.errors import TokenizerError

    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(16, 5_000))
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--tokenizer", "bytes")
    tokenizer = out / "tokenizer.json"
    tokenizer.unlink()
    proc = arrows("inspect", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and f"{tokenizer}: No such file or directory" in proc.stderr, proc.stderr
    tokenizer.write_text('{"version": "1.0", "trunc')  # cut
    for args in ((out,), (out, "--verify")):
        proc = arrows("inspect", *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{tokenizer}: the tokenizer of the token store {out} cannot be loaded" in " ".join(proc.stderr.split()), proc.stderr
    with pytest.raises(TokenizerError, match="damaged or cut"):
        TokenStore(out).tokenizer


def test_force_with_the_folders_own_tokenizer(tmp_path):
    """--force clears the folder, but a --tokenizer file inside it is read first."""
    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(15, 50_000))
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--vocab-size", "400")
    before = TokenStore(out)[:].copy()
    kept = tmp_path / "kept.json"
    kept.write_bytes((out / "tokenizer.json").read_bytes())
    arrows("tokenize", corpus, "--out", out, "--tokenizer", out / "tokenizer.json", "--force")
    assert np.array_equal(TokenStore(out)[:], before)
    assert (out / "tokenizer.json").read_bytes() == kept.read_bytes()



def test_resume_when_the_tokenizer_file_is_gone(tmp_path):
    """The store keeps a copy of its tokenizer: once the file it was started with is gone, the
    refusal of the missing file points to that copy, which resumes."""
    corpus = tmp_path / "t.txt"
    corpus.write_text(random_text(18, 50_000))
    arrows("tokenize", corpus, "--out", tmp_path / "trained", "--vocab-size", "400")
    original = tmp_path / "original.json"
    original.write_bytes((tmp_path / "trained" / "tokenizer.json").read_bytes())
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--tokenizer", original, "--shard-bytes", "10KB")
    original.unlink()
    proc = arrows("tokenize", corpus, "--out", out, "--tokenizer", original, "--shard-bytes", "10KB", "--resume", check=False,
                  env={"COLUMNS": "500"})  # the path whole on one line of typer's box
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", proc.stderr).split())
    copy = out / "tokenizer.json"
    assert proc.returncode == 2 and f"to resume, the store's own copy will do: --tokenizer {copy}" in message, proc.stderr
    arrows("tokenize", corpus, "--out", out, "--tokenizer", copy, "--shard-bytes", "10KB", "--resume")


def test_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    (tmp_path / "t.txt").write_text(random_text(4, 200_000, specials=False))
    arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "s", "--tokenizer", "bytes")
    # `head` closes the pipe after one line, long before 100,000 tokens are printed.
    proc = subprocess.run(f"'{ARROWS}' inspect '{tmp_path / 's'}' --show 100000 | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("store") and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory read through Linux's rusage")
def test_memory_does_not_grow_with_the_corpus(tmp_path):
    # 300 MB of text in one file. The corpus is memory-mapped: pages read stayed mapped, so the
    # process's peak resident memory was the corpus size (3.0 GB for a 3 GB file).
    corpus = tmp_path / "big.txt"
    block = random_text(11, 4_000_000, specials=False).encode()
    with open(corpus, "wb") as f:
        for _ in range(75):
            f.write(block)
    size = corpus.stat().st_size
    # The child's peak, measured by a fresh Python that runs nothing else.
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
    )
    args = [str(ARROWS), "tokenize", str(corpus), "--out", str(tmp_path / "out"), "--sample-bytes", "4MB", "--vocab-size", "1000", "--threads", "1"]
    peak = int(subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout)
    assert len(TokenStore(tmp_path / "out")) > 0
    assert peak < size / 2, f"peak resident memory {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB corpus"


def chinese_text(n_chars, seed=0):
    """Clauses of 3-13 characters drawn from 5,000 CJK ideographs (Zipf frequencies), separated by
    full-width commas, a line ending in 。 every six clauses: no ASCII character before a line end,
    and a distinct pre-token for nearly every clause, as in real Chinese text."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, 5001)
    codes = 0x4E00 + rng.choice(5000, size=n_chars, p=p / p.sum())
    ends = np.cumsum(rng.integers(3, 14, size=n_chars // 3))
    ends = ends[ends < n_chars]
    codes = np.insert(codes, ends, np.where(np.arange(len(ends)) % 6 == 5, ord("。"), ord("，")))
    codes = np.insert(codes, np.flatnonzero(codes == ord("。")) + 1, ord("\n"))
    return codes.astype("<u4").tobytes().decode("utf-32-le")


def test_chinese_text_is_cut_into_chunks_with_the_tokenizers_ids(tmp_path):
    corpus = tmp_path / "zh.txt"
    text = chinese_text(1_200_000)
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    arrows("tokenize", corpus, "--out", out, "--vocab-size", "1000", "--threads", "2", "--shard-bytes", "1MB")
    # Shards hold whole chunks (about 1 MiB): a text encoded in one piece has one shard.
    assert len(list(out.glob("shard_*.bin"))) >= 3
    expected = Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids
    assert np.array_equal(TokenStore(out)[:], expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory read from /proc")
def test_memory_of_bpe_training_is_returned_before_encoding(tmp_path):
    # A BPE trained on Chinese text holds a table entry for nearly every clause. Freed, those
    # millions of small allocations stayed resident (glibc keeps them) through the whole
    # encoding: 60% of the training's peak here, 1.4 GB per 200 MB of sample.
    corpus = tmp_path / "zh.txt"
    corpus.write_text(chinese_text(12_000_000, seed=1), encoding="utf-8")
    log = tmp_path / "progress.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(ARROWS), "tokenize", str(corpus), "--out", str(tmp_path / "out"), "--vocab-size", "2000"],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "ARROWS_PROGRESS_SECONDS": "0"},
        )
        peak = {}  # phase -> highest resident bytes seen while its progress line was the last one
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                break
            rss = next((int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith("VmRSS")), 0)
            lines = log.read_text().splitlines()
            phase = lines[-1].split(":")[0] if lines else "start"
            peak[phase] = max(peak.get(phase, 0), rss)
            time.sleep(0.02)
    assert proc.wait() == 0, log.read_text()
    assert peak.get("learning merges") and peak.get("encoding"), peak
    assert peak["encoding"] < 0.4 * peak["learning merges"], {k: f"{v / 1e6:.0f} MB" for k, v in peak.items()}


def memory_cgroup(tmp_name, limit_bytes):
    """A new memory control group under this process's own, limited to `limit_bytes` (cgroup v1, or
    v2 with the memory controller delegated), or None where this process may not make one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            parent, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                continue
        elif "memory" in controllers.split(","):
            parent, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
        else:
            continue
        group = parent / tmp_name
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_bytes))
        except OSError:
            if group.exists():
                group.rmdir()
            continue
        return group
    return None


@pytest.mark.skipif(not Path("/proc/self/cgroup").exists(), reason="memory limits through Linux control groups")
def test_bpe_training_that_cannot_fit_is_refused_with_advice_that_works(tmp_path):
    # Training a BPE on Chinese text takes about 12 bytes per byte of sample; under a memory limit
    # too small for it, the kernel killed the job without a word after the sampling.
    group = memory_cgroup(f"arrows_test_{os.getpid()}", 260_000_000)
    if group is None:
        pytest.skip("no permission to make a memory control group here")
    try:
        corpus = tmp_path / "zh.txt"
        corpus.write_text(chinese_text(4_000_000, seed=2), encoding="utf-8")
        out = tmp_path / "out"

        def run(*extra):
            join = lambda: (group / "cgroup.procs").write_text(str(os.getpid()))
            args = [str(ARROWS), "tokenize", str(corpus), "--out", str(out), "--vocab-size", "2000", "--force", *extra]
            return subprocess.run(args, capture_output=True, text=True, preexec_fn=join, timeout=300)

        refused = run()
        assert refused.returncode == 1, refused.stderr
        message = refused.stderr
        assert "distinct words" in message and "is available" in message and "Traceback" not in message, message
        advice = message.split("--sample-bytes ")[1].split()[0]
        assert advice.endswith("MB")
        done = run("--sample-bytes", advice)
        assert done.returncode == 0, done.stderr
        assert len(TokenStore(out)) > 0
    finally:
        group.rmdir()
