"""Reading tokenized corpora: `TokenStore` maps the shards written by `arrows tokenize`."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from arrows import _arrows
from arrows.errors import InputError, TokenizerError

_NUMPY_DTYPE = {"u16": np.dtype("<u2"), "u32": np.dtype("<u4")}


class TokenStore:
    """The token stream of a folder written by `arrows tokenize`, memory-mapped.

    `len(store)` is the number of tokens; `store[a:b]` is a read-only numpy array of ids (copy it
    to modify it), a view into the memory map (no copy) when the range lies within one shard, else
    a concatenation. A view stays valid after the store is gone.
    Headers are checked against the manifest on opening; `verify()` checks every checksum.
    An unfinished tokenization is refused (InputError) unless `allow_incomplete=True`, which reads
    the shards complete so far.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        manifest_text, dtype, shards = _arrows.open_store(str(self.path), allow_incomplete)
        self.manifest: dict = json.loads(manifest_text)
        self.dtype = _NUMPY_DTYPE[dtype]
        self._shards = [
            np.memmap(p, dtype=self.dtype, mode="r", offset=_arrows.SHARD_HEADER_BYTES, shape=(n,))
            if n
            else np.empty(0, self.dtype)
            for p, n in shards
        ]
        # starts[i] = index of shard i's first token in the stream; starts[-1] = total.
        self._starts = np.concatenate([[0], np.cumsum([len(s) for s in self._shards], dtype=np.int64)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step > 0:
                return self._range(start, stop, step)
            # A negative step: the same tokens as the positive step from the last one up, reversed.
            count = len(range(start, stop, step))
            if count == 0:
                return np.empty(0, self.dtype)
            return self._range(start + (count - 1) * step, start + 1, -step)[::-1]
        if not isinstance(key, (int, np.integer)):
            raise TypeError(f"token indices are integers or slices, not {type(key).__name__}")
        i = int(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"token index {key} out of range for a store of {len(self)} tokens")
        return self._range(i, i + 1)[0]

    def _range(self, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Tokens start, start + step, ... below stop. Each shard gives only the tokens taken
        from it: `store[::1000]` of a corpus larger than memory copied all of it first."""
        if stop <= start:
            return np.empty(0, self.dtype)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, stop - 1, side="right")) - 1
        parts = []
        for k in range(first, last + 1):
            begin = max(start, int(self._starts[k]))
            begin += (start - begin) % step  # the first index of the sequence within shard k
            parts.append(self._shards[k][begin - self._starts[k] : min(stop, self._starts[k + 1]) - self._starts[k] : step])
        if len(parts) == 1:
            return parts[0]
        joined = np.concatenate(parts)
        joined.flags.writeable = False  # read-only as the views are: no code that works on one shard only
        return joined

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def bos_id(self) -> int | None:
        """The BOS the store was made with: `<|endoftext|>`, else the tokenizer's own (the token
        its post-processor puts first, or a special token named as one, such as `<s>`); None
        when the tokenizer has neither."""
        return self.manifest["tokenizer"]["bos_id"]

    @property
    def window_bos_id(self) -> int:
        """The id every training window begins with: `bos_id`, else 0."""
        return 0 if self.bos_id is None else self.bos_id

    @property
    def input_bytes(self) -> int:
        return int(self.manifest["total_input_bytes"])

    @cached_property
    def tokenizer(self):
        """The store's tokenizer as a `tokenizers.Tokenizer`."""
        return load_tokenizer(self.path / self.manifest["tokenizer"]["file"], f"the tokenizer of the token store {self.path}")

    def decode(self, ids) -> str:
        """The text of a sequence of ids (a list, a tensor, `store[a:b]`), special tokens kept (the
        BOS reads as its token: `<|endoftext|>`, `<s>`, ...). An id outside the vocabulary raises
        InputError: the tokenizer would drop it without a word."""
        ids = [int(i) for i in ids]
        outside = [i for i in ids if not 0 <= i < self.vocab_size]
        if outside:
            raise InputError(f"{self.path}: cannot decode id {outside[0]}, outside the vocabulary of {self.vocab_size} ids "
                             f"({len(outside)} such id(s) of {len(ids)})")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def verify(self) -> list[str]:
        """Recompute every shard's checksum; one message per damaged shard (empty: all good)."""
        return _arrows.verify_store(str(self.path))

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, tokens={len(self)}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path, what: str = "a tokenizer"):
    """The `tokenizers.Tokenizer` of the file `path`. A missing file is an OSError naming it; a
    file the library cannot load is a TokenizerError naming it: the library's own exception is
    a bare Exception without the file's name ("expected value at line 1 column 1")."""
    from tokenizers import Tokenizer

    data = Path(path).read_bytes()  # an OSError names the file
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:
        raise TokenizerError(f"{path}: {what} cannot be loaded by the tokenizers library ({e}); is the file damaged or cut?") from None


def find_tokenizer(dataset_folder: str | Path, tokenizer_path: str | Path | None = None):
    """The tokenizer that decodes a dataset: a token store's own (its ids were made with it: a
    `tokenizer_path` naming another decoded them as that one's words, without a word); else, for
    an .h5 file, `tokenizer_path` (a tokenizer.json, or a folder holding one) if given, else the
    tokenizer.json beside it (where `arrows tokenize --h5` puts it); None when there is none."""
    dataset = Path(dataset_folder)
    if (dataset / "manifest.json").is_file() and (dataset / "tokenizer.json").is_file():
        return load_tokenizer(dataset / "tokenizer.json")
    candidates = [Path(tokenizer_path)] if tokenizer_path else []
    candidates += [dataset, dataset.parent] if dataset.is_file() else [dataset]
    for c in candidates:
        f = c / "tokenizer.json" if c.is_dir() else c
        if f.is_file() and f.suffix == ".json":
            return load_tokenizer(f)
    return None


def __getattr__(name):
    # WindowLoader imports torch when used; keep `import arrows.data` light.
    if name == "WindowLoader":
        from arrows.loader import WindowLoader

        return WindowLoader
    raise AttributeError(name)
