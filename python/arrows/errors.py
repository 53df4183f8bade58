"""The exceptions arrows raises. Every one derives from `ArrowsError`; operating-system problems
(a missing file, a full disk, no permission) are the built-in `OSError` subclasses instead, with
the file name set."""


class ArrowsError(Exception):
    """Base class of arrows' own errors."""


class InputError(ArrowsError, ValueError):
    """A bad argument or input that the user can fix (empty corpus, vocabulary too small, ...)."""


class BatchSizeError(InputError):
    """A batch larger than the data split holds, or than this machine can address: lower the batch size."""


class InvalidUtf8Error(InputError):
    """`--strict-utf8` met bytes that are not UTF-8 (the message names the file and offset)."""


class TokenizerError(ArrowsError, ValueError):
    """A tokenizer file that cannot be used."""


class CorruptDataError(ArrowsError):
    """A shard, manifest or checkpoint that fails its checks (the message names the file)."""


class ResumeMismatchError(ArrowsError):
    """`--resume` on an output made from other inputs or settings (the message says what differs)."""


class CancelledError(ArrowsError):
    """The job was interrupted; what is complete on disk stays valid and resumable."""


class naming_file:
    """`with naming_file(path): ...` gives an `OSError` raised inside without a file name the name
    `path`. A failed write (a full disk, a quota, a file-size limit) carries none: the message of a
    run that filled its disk while logging was only "No space left on device"."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            import os

            raise OSError(error.errno, error.strerror or os.strerror(error.errno), str(self.path)) from None
        return False


# Whether a SIGTERM has asked this process to stop (see terminated).
_sigterm_received = False


def note_sigterm() -> None:
    """Record that this process was asked by SIGTERM to stop: training's own handler calls it, so
    that the `arrows` command's handler, back in place once training has stopped, ignores repeats."""
    global _sigterm_received
    _sigterm_received = True


def terminated(signum, frame):
    """The `arrows` command's SIGTERM handler (`kill`, a cluster's preemption or time limit, `docker
    stop`): the command stops as at a Ctrl-C, with what is complete kept and a message, where
    SIGTERM's default ended it without a word (a tokenizer job's done shards unrecorded until
    the next --resume found them, a study's runs stopped without saying where). Training replaces
    it while it trains (train._StopRequest: stop after the step, with a checkpoint of it).

    Only the first SIGTERM interrupts; a repeat, while the command is stopping already, is ignored
    (SIGKILL remains for "now"). Repeats are not only an impatient user's: the kernel sends the
    parent-death signal (distributed.die_with_parent) once per thread of the dying parent it passes
    the child on to, so that torchrun killed with -9 sent its processes 1 to 3 SIGTERMs over some
    100 ms. One that came after training had stopped raised its interrupt in the middle of the
    final message, which typer turns into a silent exit 130: the run stopped and saved, unsaid."""
    if _sigterm_received:
        return
    note_sigterm()
    raise KeyboardInterrupt
