"""One command at a time in a folder (`arrows train` in a run folder, `study` in a study folder,
`demo` in its folder): an exclusive `flock` on a file there, held while that file stays open. The
kernel drops it when the process ends, however it ends, so a kill -9 leaves no stale lock."""

from __future__ import annotations

from typing import IO

from arrows.errors import InputError


def hold_lock(f: IO, refusal: str) -> IO:
    """Lock the open file `f` exclusively and return it; while another process holds the lock,
    close `f` and raise InputError(`refusal`)."""
    import fcntl

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise InputError(refusal) from None
    return f


def held_elsewhere(path) -> bool:
    """Whether another process holds the lock of lock file `path` now (False when there is none)."""
    import fcntl

    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False  # released as the file closes
    except OSError:  # no lock file
        return False
