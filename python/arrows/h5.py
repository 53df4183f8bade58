"""The reference code's token file: one HDF5 dataset `tokens`, int32, contiguous."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from arrows.data import TokenStore

H5_NAME = "tokens.h5"
_BLOCK = 1 << 24  # tokens copied at a time: bounded memory whatever the corpus size


def write_h5(store_dir: str | Path, reporter=None) -> Path:
    """Write `store_dir/tokens.h5` from the token store (atomically: temporary name, then rename)."""
    import h5py

    store = TokenStore(store_dir)
    path = Path(store_dir) / H5_NAME
    tmp = path.with_name(H5_NAME + ".tmp")
    n = len(store)
    try:
        with h5py.File(tmp, "w") as f:
            # No chunks, no compression: the reference code (and our loader) can memory-map it.
            ds = f.create_dataset("tokens", shape=(n,), dtype="<i4")
            ds.attrs["tokenizer_hash"] = store.manifest["tokenizer"]["hash"]
            # The id training windows begin with, so that the file trains as its store does (a
            # reference .h5 has no such attribute: 0, its <|endoftext|>).
            ds.attrs["bos_id"] = store.window_bos_id
            for a in range(0, n, _BLOCK):
                b = min(a + _BLOCK, n)
                ds[a:b] = store[a:b].astype(np.int32)
                if reporter is not None:
                    reporter.update("writing tokens.h5", b, n, "tokens")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # a partial file would keep the space that a retry needs
        # A failed write (a full disk) makes h5py's close fail too, with a RuntimeError that
        # replaces the OSError saying why: raise that one, with its errno and the file's name.
        cause = next((c for c in _causes(e) if isinstance(c, OSError)), None)
        if isinstance(e, Exception) and cause is not None and cause.errno is not None:
            raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from e
        raise
    os.replace(tmp, path)
    return path


def _causes(e: BaseException):
    """`e` and the exceptions it was raised during or from."""
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def h5_tokens(path: str | Path) -> np.ndarray:
    """The ids of a reference .h5 token file as a read-only memory map (no copy)."""
    from arrows.loader import open_source

    (_, _, offset, count, _), *_ = open_source(path)  # checks the format, with its own messages
    import h5py

    with h5py.File(path, "r") as f:
        dtype = f["tokens"].dtype
    if count == 0:
        return np.empty(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def h5_id_range(path: str | Path) -> tuple[int, int] | None:
    """(smallest, largest) id in a reference .h5 token file, or None when it holds none: the file
    is read once through a memory map, a block at a time (at disk speed; a token store's manifest
    records its vocabulary instead, an .h5 file does not)."""
    ids = h5_tokens(path)
    if len(ids) == 0:
        return None
    lo, hi = None, None
    for a in range(0, len(ids), _BLOCK):
        block = ids[a : a + _BLOCK]
        lo = int(block.min()) if lo is None else min(lo, int(block.min()))
        hi = int(block.max()) if hi is None else max(hi, int(block.max()))
    return lo, hi
