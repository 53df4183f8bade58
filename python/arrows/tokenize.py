"""`arrows tokenize`: runs the Rust job on a background thread and draws its progress."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

from arrows import _arrows
from arrows.errors import CancelledError
from arrows.progress import Reporter

_PHASES = {1: "sampling", 2: "learning merges", 3: "encoding"}
# A full disk, a full quota, a file-size limit: the job can go on once there is room.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def tokenize(
    inputs: list[str | Path],
    out: str | Path,
    *,
    tokenizer: str = "train",
    vocab_size: int = 50257,
    sample_bytes: int = 1_000_000_000,
    seed: int = 0,
    min_frequency: int = 2,
    threads: int = 0,
    shard_bytes: int = 128 << 20,
    strict_utf8: bool = False,
    resume: bool = False,
    force: bool = False,
    bos: str | None = None,
    h5: bool = False,
    reporter: Reporter | None = None,
) -> dict:
    """Tokenize `inputs` into the token store `out`; returns the summary dict.

    `tokenizer` is "train" (learn a byte-level BPE on a sample), "bytes" (no merges), or the path
    of a tokenizer.json. `bos` names the token every training window begins with, by its text
    (default: `<|endoftext|>`, else the tokenizer's own; see the README). Ctrl-C stops the job
    cleanly (CancelledError); `resume=True` continues.
    """
    job = _arrows.TokenizeJob(
        [str(p) for p in inputs],
        str(out),
        tokenizer=str(tokenizer),
        vocab_size=vocab_size,
        sample_bytes=sample_bytes,
        seed=seed,
        min_frequency=min_frequency,
        threads=threads,
        shard_bytes=shard_bytes,
        strict_utf8=strict_utf8,
        resume=resume,
        force=force,
        bos=bos,
    )
    outcome: dict = {}
    finished = threading.Event()

    def work():
        try:
            outcome["summary"] = job.run()
        except BaseException as e:  # handed to the main thread
            outcome["error"] = e
        finally:
            finished.set()

    def report(final=False):
        phase, done, total, tokens, _replaced = job.progress()
        if reporter is not None and phase in _PHASES:
            extra = f"{tokens:,} tokens" if phase == 3 else ""
            unit = "merges" if phase == 2 else "bytes"
            reporter.update(_PHASES[phase], done, total, unit, extra, final=final)

    # Not a daemon: the interpreter never exits (and tears down) while the job still runs in Rust.
    # Completion is signalled by an Event: Thread.join() interrupted by Ctrl-C can return early.
    thread = threading.Thread(target=work, name="arrows-tokenize")
    thread.start()
    try:
        while not finished.wait(0.2):
            report()
    except KeyboardInterrupt:
        job.cancel()
        finished.wait()
        raise CancelledError(f"interrupted; continue with the same command and --resume (output: {out})") from None
    if "error" in outcome:
        e = outcome["error"]
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            raise OSError(e.errno, f"{e.strerror}; the shards completed so far are kept: free some space, then run the same command with --resume", e.filename) from None
        raise e
    summary = outcome["summary"]
    if reporter is not None:
        mb = summary["input_bytes"]
        reporter.update("encoding", mb, mb, "bytes", f"{summary['tokens']:,} tokens", final=True)
    if h5:
        from arrows.h5 import H5_NAME, write_h5

        try:
            summary["h5"] = str(write_h5(out, reporter=reporter))
        except OSError as e:
            if e.errno in _NO_ROOM:
                raise OSError(e.errno, f"{e.strerror}; the token store is complete and kept: free some space, then run the same command "
                              f"with --resume to write {H5_NAME}", e.filename) from None
            raise
    return summary

