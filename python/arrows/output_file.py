"""Writing one output file safely: the commands that write a single file (`synth`, `reverse`),
and `study` its record, write it under a temporary name beside it and rename it over the target
at the end, so a crash never leaves half a file under the final name. Only a regular file (or
nothing) may be replaced: a folder, a device such as /dev/null or a named pipe at the output path
is refused, since the rename would put a regular file in its place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from arrows.errors import InputError


def check_output_path(path: Path, what: str = "output") -> Path:
    """`path` as an output file: it names a file, and is a regular file or nothing."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise InputError(f"{str(path)!r}: the {what} must name a file")
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: exists and is not a regular file (a folder, a device or a pipe); choose another {what} path")
    return path


@contextlib.contextmanager
def atomic_output(path: Path, *, sync: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `path` (hidden, unique to this process: it can be neither
    `path` nor a file the user named); on success it is renamed over `path`, on any failure
    removed. Missing parent folders are made."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # A failed write (a full disk, a quota) carries no file name: the message was only
            # "No space left on device". Name the file being written (the temporary one is gone).
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
