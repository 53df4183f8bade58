"""`WindowLoader`: training windows, forward or backward, served from the Rust core to torch.

The core gathers each batch straight from the memory-mapped token stream into a reusable buffer
on background threads, reversing (or permuting) while it copies. Python wraps that buffer as a
torch tensor without copying it; the buffer goes back to the core only when no tensor views it
any more, so a batch can never be overwritten under a tensor that is still in use.
"""

from __future__ import annotations

from pathlib import Path

from arrows import _arrows
from arrows.errors import InputError

_H5_SUFFIXES = (".h5", ".hdf5")
_H5_IDS = {"<i4": "i32", "<i8": "i64", "<u2": "u16", "<u4": "u32", "|u1": None}


def open_source(path: str | Path, vocab_size: int | None = None):
    """Describe a token source for the core: (source tuple, tokens, bos id, vocab size)."""
    path = Path(path)
    if path.is_dir():
        from arrows.data import TokenStore

        store = TokenStore(path)
        # Said here, not at the first batch holding a larger id (where the core's check called a
        # shard damaged): the store's vocabulary is known, and training checks models against it.
        if vocab_size is not None and vocab_size < store.vocab_size:
            raise InputError(f"{path}: vocab_size {vocab_size} is smaller than the store's vocabulary ({store.vocab_size} ids, "
                             f"its manifest), so its ids do not all fit; give vocab_size {store.vocab_size} or more")
        return ("store", str(path)), len(store), store.window_bos_id, vocab_size or store.vocab_size
    if path.suffix.lower() in _H5_SUFFIXES and path.is_file():
        import h5py

        with open(path, "rb"):  # an OS problem (no permission) stays the OSError it is, naming the file
            pass
        try:
            f = h5py.File(path, "r")
        except OSError as e:  # h5py's own message does not name the file
            raise InputError(f"{path}: not a readable HDF5 file ({e}); give a reference .h5 token file or a folder written by `arrows tokenize`") from None
        with f:
            if "tokens" not in f:
                raise InputError(f"{path}: no 'tokens' dataset (it has: {', '.join(f.keys()) or 'nothing'}); arrows reads the reference format, a 1-D integer dataset named 'tokens'")
            ds = f["tokens"]
            if not isinstance(ds, h5py.Dataset):
                raise InputError(f"{path}: 'tokens' is a group, not a dataset; arrows reads the reference format, a 1-D integer dataset named 'tokens'")
            ids = _H5_IDS.get(ds.dtype.str)
            if ds.ndim != 1 or ids is None:
                raise InputError(f"{path}: 'tokens' is {ds.ndim}-D {ds.dtype}; arrows reads a 1-D dataset of int32, int64, uint16 or uint32 ids")
            offset = ds.id.get_offset()
            count = int(ds.shape[0])
            # The BOS of windows: the one `arrows tokenize --h5` recorded, else 0 (the reference's
            # files: <|endoftext|> is id 0 in its GPT-2 style tokenizers).
            bos_id = _h5_bos_id(path, ds.attrs.get("bos_id", 0), vocab_size)
            if count == 0:
                offset = 0  # nothing to map: the core then says the source is too short for a window
            elif ds.chunks is None and offset is None:
                raise InputError(f"{path}: the 'tokens' dataset was created but never written (HDF5 allocates its storage at the first write)")
            if ds.chunks is not None or ds.compression is not None:
                raise InputError(
                    f"{path}: the 'tokens' dataset is chunked or compressed, so it cannot be memory-mapped; "
                    f"convert it once with `h5repack -l tokens:CONTI {path} contiguous.h5` (from the hdf5-tools package), "
                    f"or re-tokenize with `arrows tokenize ... --h5`"
                )
        return ("raw", str(path), int(offset), count, ids), count, bos_id, vocab_size
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    raise InputError(f"{path}: not a token source; give a folder written by `arrows tokenize` or a reference .h5 file")


def _h5_bos_id(path: Path, bos_id, vocab_size: int | None) -> int:
    """The `bos_id` attribute of an .h5 file's tokens, refused unless it is an id of the
    vocabulary: every window begins with it, and a model's embedding failed on it at the first
    step (IndexError: index out of range in self) without naming the file."""
    import numpy as np

    if not isinstance(bos_id, (int, np.integer)) or isinstance(bos_id, (bool, np.bool_)) or bos_id < 0 or (vocab_size is not None and bos_id >= vocab_size):
        within = f"an id below vocab_size {vocab_size}" if vocab_size is not None else "a non-negative integer id"
        shown = int(bos_id) if isinstance(bos_id, np.integer) else repr(bos_id)
        raise InputError(f"{path}: the 'bos_id' attribute of 'tokens' is {shown}, not {within}; "
                         f"set it to the id windows begin with, or delete it (windows then begin with id 0)")
    return int(bos_id)


def _check_count(name: str, value, least: int) -> None:
    """Refuse what the core cannot take: it takes unsigned 64-bit integers (a float would be truncated)."""
    import numpy as np

    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not least <= value < 2**63:
        raise InputError(f"{name} must be an integer of at least {least}, not {value!r}")


def _check_permutation(permutation, length: int) -> list[int]:
    """The permutation as a list of ints, refused unless it lists each of 0..length-1 once (int()
    alone would truncate 1.5 to 1, and the core's message counts the entries, not what is wrong)."""
    import operator

    try:
        order = [operator.index(i) for i in permutation]  # ints, numpy or torch integers; not floats
    except TypeError:
        raise InputError(f"permutation must be a sequence of integer positions, not {permutation!r}") from None
    if sorted(order) != list(range(length)):
        missing = sorted(set(range(length)) - set(order))
        extra = sorted({i for i in order if order.count(i) > 1 or not 0 <= i < length})
        raise InputError(f"permutation must list each position 0..{length - 1} of the window exactly once; "
                         f"missing: {missing or 'none'}; repeated or out of range: {extra or 'none'}")
    return order


class WindowLoader:
    """Batches of `(inputs, targets)`, int64 tensors of shape `(batch_size, attn_length)`.

    Windows are spans `s = t[i:i+L]` every `stride` tokens (default `(L-1)//2`): forward,
    `inputs = [BOS] + s[:-1]`, `targets = s`; backward, the same span flipped; `permutation`, any
    fixed order of the L positions (`inputs = [BOS] + s[perm[:-1]]`, `targets = s[perm]`).

    The validation split is the last `valid_tokens` (or `valid_fraction` of the) tokens of the
    stream, contiguous, untouched by any training window, and identical for every direction.

    Iterating yields the rest of the current epoch, then moves to the next one. Training windows
    (`split="train"`) come in an order drawn from `(seed, epoch)`, and the last partial batch is
    dropped; validation windows come in stream order with their last partial batch (`shuffle`
    and `drop_last` override either default). Rank `r` of `world_size` gets a disjoint share (W
    ranks with batch B serve exactly what one process with batch W·B would). `state_dict()` records the
    position, so that after `load_state_dict()` the next batch is the one an uninterrupted run
    would have served.

    The loader batches, shuffles and prefetches on its own threads (`threads`, `prefetch`
    buffers): iterate it directly, not through torch's DataLoader, and from one thread at a time.
    It pickles (the copy opens the source again and keeps the position), so it can be handed to
    another process.

    `path` is a token store folder or a reference .h5 file. Ids are checked against `vocab_size`
    (default: the store's vocabulary; an .h5 file has none, so only negative ids are refused).
    `device="cuda"` (or "cuda:N") delivers the batches there through pinned buffers.
    """

    def __init__(
        self,
        path: str | Path,
        attn_length: int,
        batch_size: int,
        *,
        backward: bool = False,
        permutation=None,
        split: str = "train",
        valid_fraction: float = 0.01,
        valid_tokens: int | None = None,
        stride: int | None = None,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        threads: int = 2,
        prefetch: int = 4,
        device: str = "cpu",
        vocab_size: int | None = None,
    ):
        import numpy as np
        import torch

        # What builds this loader again in another process (see __getstate__); taken first, when
        # the local names are exactly the arguments.
        self._arguments = {name: value for name, value in locals().items() if name not in ("self", "np", "torch")}
        # The source as opened here: a relative path would name another file (or none) in a
        # process working elsewhere, or after os.chdir.
        self._arguments["path"] = Path(path).absolute()
        if split not in ("train", "valid"):
            raise InputError(f"split must be 'train' or 'valid', not {split!r}")
        if permutation is not None and backward:
            raise InputError("give either backward=True or a permutation, not both")
        if not 0.0 <= valid_fraction < 1.0:
            raise InputError(f"valid_fraction must be in [0, 1), not {valid_fraction}")
        counts = {"attn_length": (attn_length, 1), "batch_size": (batch_size, 1), "stride": (stride, 1), "valid_tokens": (valid_tokens, 0),
                  "seed": (seed, 0), "epoch": (epoch, 0), "rank": (rank, 0), "world_size": (world_size, 1), "threads": (threads, 0),
                  "prefetch": (prefetch, 1), "vocab_size": (vocab_size, 1)}
        for name, (value, least) in counts.items():
            if value is not None:
                _check_count(name, value, least)
        for name, value in {"backward": backward, "shuffle": shuffle, "drop_last": drop_last}.items():
            # bool("false") is True: a string from a config or the environment read backwards.
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise InputError(f"{name} must be True or False, not {value!r}")
        if rank >= world_size:
            raise InputError(f"rank {rank} is outside world_size {world_size} (ranks 0 to {world_size - 1})")
        source, total, bos_id, vocab = open_source(path, vocab_size)
        if valid_tokens is None:
            valid_tokens = int(total * valid_fraction)
        if permutation is not None:
            order = _check_permutation(permutation, attn_length)
        else:
            order = "backward" if backward else "forward"
        self.path = Path(path)
        self.attn_length = int(attn_length)
        self.batch_size = int(batch_size)
        self.stride = int(stride) if stride is not None else max((self.attn_length - 1) // 2, 1)
        self.split = split
        self.order = order
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.valid_tokens = int(valid_tokens)
        self.bos_id = bos_id
        self.vocab_size = vocab
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}") from None
        if self.device.type not in ("cpu", "cuda"):
            raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            # Else the first batch fails inside torch ("Found no NVIDIA driver", "invalid device ordinal").
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use device='cpu'")
        self._core = _arrows.LoaderCore(
            source,
            attn_length=self.attn_length,
            batch_size=self.batch_size,
            order=order,
            split=split,
            valid_tokens=self.valid_tokens,
            stride=self.stride,
            seed=self.seed,
            shuffle=(split == "train") if shuffle is None else bool(shuffle),
            rank=self.rank,
            world_size=self.world_size,
            drop_last=(split == "train") if drop_last is None else bool(drop_last),
            bos_id=bos_id,
            vocab_size=vocab,
            threads=int(threads),
            buffers=max(int(prefetch), 1),
        )
        self.epoch = int(epoch)
        self.batch = 0  # index, within the epoch, of the next batch to serve
        self._staging = None  # pinned host buffers for asynchronous copies to a GPU

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return self._core.batches_per_epoch

    def __getitem__(self, index):
        # Only reached when a WindowLoader is wrapped in torch's DataLoader, which takes anything
        # with a length for a dataset of single examples and failed with "'WindowLoader' object is
        # not subscriptable" (inside a worker's traceback with num_workers > 0).
        raise InputError(
            "a WindowLoader is already a loader: iterate it directly (`for inputs, targets in loader`), not through "
            "torch.utils.data.DataLoader; it batches, shuffles and reads ahead on threads of its own (threads=, prefetch=)"
        )

    @property
    def windows(self) -> int:
        """Windows in the split (all ranks together)."""
        return self._core.windows

    @property
    def tokens(self) -> int:
        """Tokens in the whole stream."""
        return self._core.source_tokens

    def __iter__(self):
        self._start()
        while (buf := self._core.next()) is not None:
            self.batch += 1
            served = (self.epoch, self.batch)
            yield self._tensors(buf)
            if (self.epoch, self.batch) != served:
                # Moved while this iteration was paused (load_state_dict, set_epoch, another
                # iteration): serve from the new position, as state_dict() now says.
                self._start()
        self.epoch, self.batch = self.epoch + 1, 0

    def _start(self) -> None:
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        self._core.start(self.epoch, self.batch)

    def _tensors(self, buf):
        import torch

        flat = torch.frombuffer(buf, dtype=torch.int64)  # a view: keeps `buf` (and its buffer) alive
        pair = flat.view(2, buf.rows, self.attn_length)
        if self.device.type == "cpu":
            return pair[0], pair[1]
        return self._to_device(pair)

    def _to_device(self, pair):
        """Copy into a pinned staging buffer (releasing the core's buffer at once), then to the
        device asynchronously; a staging buffer is reused only once its copy has completed."""
        import torch

        if self._staging is None:
            self._staging = [[None, None] for _ in range(3)]  # [pinned buffer, its copy's event]
            self._next_staging = 0
        slot = self._staging[self._next_staging]
        self._next_staging = (self._next_staging + 1) % len(self._staging)
        if slot[1] is not None:
            slot[1].synchronize()
        rows = pair.shape[1]
        if slot[0] is None or slot[0].shape[1] < rows:
            # Sized by the batches served, not by batch_size: a split holding fewer windows than
            # batch_size (a large val_batch_size on a small store) pinned batch_size × L tokens.
            slot[0] = torch.empty((2, rows, self.attn_length), dtype=torch.int64, pin_memory=True)
        host = slot[0][:, :rows]
        host.copy_(pair)
        on_device = host.to(self.device, non_blocking=True)
        slot[1] = torch.cuda.Event()
        slot[1].record()
        return on_device[0], on_device[1]

    def set_epoch(self, epoch: int) -> None:
        """Serve `epoch` from its first batch on the next iteration."""
        _check_count("epoch", epoch, 0)
        self.epoch, self.batch = int(epoch), 0

    def window_starts(self, epoch: int | None = None):
        """Stream offsets of this rank's spans in `epoch` (default: the current one), in the order
        they are served: row j of batch b is `starts[b * batch_size + j]`."""
        import numpy as np

        if epoch is not None:
            _check_count("epoch", epoch, 0)
        return np.asarray(self._core.span_starts(self.epoch if epoch is None else int(epoch)), dtype=np.int64)

    def __getstate__(self) -> dict:
        # The core (its threads and memory maps) cannot be pickled; its arguments and the position
        # can, so that copy.deepcopy, torch.multiprocessing.spawn and the like get an equal loader.
        return {"arguments": self._arguments, "epoch": self.epoch, "batch": self.batch}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["arguments"])
        self.epoch, self.batch = state["epoch"], state["batch"]

    def _identity(self) -> dict:
        return {
            "attn_length": self.attn_length,
            "batch_size": self.batch_size,
            "stride": self.stride,
            "split": self.split,
            "order": self.order,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "valid_tokens": self.valid_tokens,
            "tokens": self.tokens,
        }

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._identity()
        diffs = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in mine.items() if state.get(k) != v]
        if diffs:
            raise InputError("the loader state belongs to another data setup: " + "; ".join(diffs))
        _check_count("the loader state's epoch", state.get("epoch"), 0)
        _check_count("the loader state's batch", state.get("batch"), 0)
        # batch == len(self) is a finished epoch (the next iteration starts the following one);
        # beyond it, the state cannot come from this loader.
        if state["batch"] > len(self):
            raise InputError(f"the loader state's batch {state['batch']} is beyond the {len(self)} batches of an epoch")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
