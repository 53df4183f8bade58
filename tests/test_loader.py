"""WindowLoader against a plain Python implementation of the reference windows."""

import gc
import itertools

import numpy as np
import pytest
from conftest import arrows

torch = pytest.importorskip("torch")

from arrows.data import TokenStore, WindowLoader  # noqa: E402
from arrows.errors import BatchSizeError, CorruptDataError, InputError  # noqa: E402

BOS = 0


def reference_window(stream, i, L, backward):
    """The reference code's TokenTextBOS, written from its definition."""
    if backward:
        return [BOS] + list(stream[i + 1 : i + L][::-1]), list(stream[i : i + L][::-1])
    return [BOS] + list(stream[i : i + L - 1]), list(stream[i : i + L])


def make_store(tmp_path, n_tokens, shard_bytes, seed=0, name="store"):
    """A store of random bytes (bytes tokenizer: id = byte + 1), cut into small shards."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(ord("a"), ord("z") + 1, size=n_tokens, dtype=np.uint8)
    raw[rng.random(n_tokens) < 0.15] = ord(" ")
    text = tmp_path / f"{name}.txt"
    text.write_bytes(raw.tobytes())
    out = tmp_path / name
    arrows("tokenize", text, "--out", out, "--tokenizer", "bytes", "--shard-bytes", str(shard_bytes))
    store = TokenStore(out)
    assert len(store.manifest["shards"]) > 1
    return out, np.asarray(store[:], dtype=np.int64)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("L, shard_bytes", [(16, 100), (33, 1000), (7, 37)])
def test_windows_equal_the_reference_across_shard_boundaries(tmp_path, backward, L, shard_bytes):
    path, stream = make_store(tmp_path, 5000, shard_bytes, seed=L)
    loader = WindowLoader(path, L, 8, backward=backward, valid_fraction=0.1, seed=3)
    stride = (L - 1) // 2
    valid_start = len(stream) - int(len(stream) * 0.1)
    expected_starts = set(range(0, valid_start - L + 1, stride))
    starts = loader.window_starts()
    assert len(starts) == len(loader) * 8 and set(starts) <= expected_starts
    assert len(expected_starts) - len(starts) < 8  # only the incomplete last batch is dropped
    n = 0
    for b, (inputs, targets) in enumerate(loader):
        assert inputs.shape == targets.shape == (8, L) and inputs.dtype == torch.int64
        for j in range(8):
            x, y = reference_window(stream, int(starts[b * 8 + j]), L, backward)
            assert inputs[j].tolist() == x and targets[j].tolist() == y
        n += 1
    assert n == len(loader)


def test_forward_and_backward_predict_the_same_tokens(tmp_path):
    path, _ = make_store(tmp_path, 3000, 500)
    fw = WindowLoader(path, 20, 4, seed=1)
    bw = WindowLoader(path, 20, 4, seed=1, backward=True)
    assert np.array_equal(fw.window_starts(), bw.window_starts())
    for (xf, yf), (xb, yb) in zip(fw, bw):
        assert torch.equal(yf.flip(1), yb)
        assert torch.equal(xb[:, 1:], yb[:, :-1]) and torch.equal(xf[:, 1:], yf[:, :-1])


def test_permutation_generalises_both_directions(tmp_path):
    path, stream = make_store(tmp_path, 3000, 500)
    L = 10
    perm = np.random.default_rng(0).permutation(L)
    ident = WindowLoader(path, L, 4, permutation=list(range(L)), seed=2)
    fw = WindowLoader(path, L, 4, seed=2)
    rev = WindowLoader(path, L, 4, permutation=list(range(L))[::-1], seed=2)
    bw = WindowLoader(path, L, 4, backward=True, seed=2)
    pl = WindowLoader(path, L, 4, permutation=perm, seed=2)
    starts = pl.window_starts()
    for (a, b, c, d, (xp, yp)), k in zip(zip(ident, fw, rev, bw, pl), range(0, 10**9, 4)):
        assert all(torch.equal(u, v) for u, v in zip(a, b)) and all(torch.equal(u, v) for u, v in zip(c, d))
        for j in range(4):
            s = stream[starts[k + j] : starts[k + j] + L]
            assert yp[j].tolist() == list(s[perm]) and xp[j].tolist() == [BOS] + list(s[perm[:-1]])
    with pytest.raises(InputError, match="permutation"):
        WindowLoader(path, L, 4, permutation=[0] * L)


def test_no_training_window_touches_the_validation_split(tmp_path):
    path, stream = make_store(tmp_path, 4000, 300)
    L = 32
    train = WindowLoader(path, L, 4, valid_tokens=700)
    valid = WindowLoader(path, L, 4, split="valid", valid_tokens=700)
    valid_start = len(stream) - 700
    assert max(train.window_starts()) + L <= valid_start
    vs = valid.window_starts()
    assert min(vs) >= valid_start and max(vs) + L <= len(stream)
    assert list(vs) == list(range(valid_start, len(stream) - L + 1, (L - 1) // 2))  # in order, all of them
    assert sum(x.shape[0] for x, _ in valid) == len(vs)  # the last, partial batch is served
    # The same spans for the backward model.
    assert np.array_equal(WindowLoader(path, L, 4, split="valid", valid_tokens=700, backward=True).window_starts(), vs)


def test_order_is_deterministic_per_seed_and_epoch(tmp_path):
    path, _ = make_store(tmp_path, 5000, 1000)
    a, b = WindowLoader(path, 16, 4, seed=5), WindowLoader(path, 16, 4, seed=5)
    assert np.array_equal(a.window_starts(0), b.window_starts(0))
    assert not np.array_equal(a.window_starts(0), a.window_starts(1))
    assert not np.array_equal(a.window_starts(0), WindowLoader(path, 16, 4, seed=6).window_starts(0))
    all_spans = set(WindowLoader(path, 16, 4, shuffle=False, drop_last=False).window_starts())
    assert len(a.window_starts(1)) == len(a.window_starts(0)) and set(a.window_starts(1)) <= all_spans
    first = [x.clone() for x, _ in a]
    assert a.epoch == 1
    second = [x.clone() for x, _ in a]
    assert not all(torch.equal(u, v) for u, v in zip(first, second))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_and_together_equal_one_big_batch(tmp_path, world):
    path, _ = make_store(tmp_path, 6000, 700)
    single = WindowLoader(path, 12, 4 * world, seed=9)
    ranks = [WindowLoader(path, 12, 4, seed=9, rank=r, world_size=world) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    starts = [r.window_starts(0) for r in ranks]
    assert not set(starts[0]) & set(starts[1])
    iters = [iter(r) for r in ranks]
    for x, _ in single:
        assert torch.equal(torch.cat([next(it)[0] for it in iters]), x)
    joined = np.concatenate([np.stack([s[b * 4 : (b + 1) * 4] for s in starts]).reshape(-1) for b in range(len(single))])
    assert np.array_equal(joined, single.window_starts(0))


def test_resume_mid_epoch_serves_the_next_batch_exactly(tmp_path):
    path, _ = make_store(tmp_path, 5000, 800)
    straight = WindowLoader(path, 16, 4, seed=1, backward=True)
    everything = [x.clone() for x, _ in straight] + [x.clone() for x, _ in straight]  # two epochs
    first = WindowLoader(path, 16, 4, seed=1, backward=True)
    seen = []
    for i, (x, _) in enumerate(first):
        seen.append(x.clone())
        if i == 6:
            break
    state = first.state_dict()
    assert state["batch"] == 7 and state["epoch"] == 0
    resumed = WindowLoader(path, 16, 4, seed=1, backward=True)
    resumed.load_state_dict(state)
    seen += [x.clone() for x, _ in resumed] + [x.clone() for x, _ in resumed]
    assert len(seen) == len(everything)
    assert all(torch.equal(u, v) for u, v in zip(seen, everything))
    with pytest.raises(InputError, match="seed"):
        WindowLoader(path, 16, 4, seed=2, backward=True).load_state_dict(state)


def test_h5_source_equals_shard_source(tmp_path):
    import h5py

    path, stream = make_store(tmp_path, 4000, 500)
    h5 = tmp_path / "tokens.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("tokens", data=stream.astype(np.int32))
    a = WindowLoader(path, 16, 4, seed=4, backward=True)
    b = WindowLoader(h5, 16, 4, seed=4, backward=True, vocab_size=257)
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)

    chunked = tmp_path / "chunked.h5"
    with h5py.File(chunked, "w") as f:
        f.create_dataset("tokens", data=stream.astype(np.int32), chunks=(100,), compression="gzip")
    with pytest.raises(InputError, match="h5repack"):
        WindowLoader(chunked, 16, 4)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("ids", data=stream.astype(np.int32))
    with pytest.raises(InputError, match="no 'tokens' dataset"):
        WindowLoader(other, 16, 4)


def test_ids_beyond_the_vocabulary_are_an_error_naming_the_file(tmp_path):
    import h5py

    data = np.arange(2000, dtype=np.int32) % 300
    h5 = tmp_path / "tokens.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("tokens", data=data)
    loader = WindowLoader(h5, 16, 4, vocab_size=257)
    with pytest.raises(CorruptDataError, match=r"tokens.h5.*outside the vocabulary of 257"):
        for _ in loader:
            pass



@pytest.mark.parametrize("bos_id, vocab_size, message", [
    (300, 257, "'bos_id' attribute of 'tokens' is 300, not an id below vocab_size 257"),
    (-1, None, "'bos_id' attribute of 'tokens' is -1, not a non-negative integer id"),
    ("<s>", None, "'bos_id' attribute of 'tokens' is '<s>', not a non-negative integer id"),
])
def test_an_h5_bos_outside_the_vocabulary_is_refused_naming_the_file(tmp_path, bos_id, vocab_size, message):
    import h5py

    h5 = tmp_path / "tokens.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("tokens", data=np.arange(2000, dtype=np.int32) % 200).attrs["bos_id"] = bos_id
    # Every window begins with the BOS: 300 or -1 reached the model, whose embedding failed at the
    # first step (IndexError: index out of range in self); '<s>' was a ValueError of int().
    with pytest.raises(InputError, match=rf"tokens.h5: the {message}"):
        WindowLoader(h5, 16, 4, vocab_size=vocab_size)


@pytest.mark.parametrize("vocab_size", [0, -1, 2.5, True, 2**64])
def test_a_vocab_size_that_is_no_count_is_refused(tmp_path, vocab_size):
    import h5py

    h5 = tmp_path / "tokens.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("tokens", data=np.arange(2000, dtype=np.int32) % 200)
    # Were an OverflowError (2**64), a TypeError (2.5), every id "outside the vocabulary of 1 ids"
    # of a damaged file (True), and for 0 or -1 a BOS attribute the file does not have.
    with pytest.raises(InputError, match=f"vocab_size must be an integer of at least 1, not {vocab_size!r}"):
        WindowLoader(h5, 16, 4, vocab_size=vocab_size)

def test_an_h5_group_named_tokens_is_refused_naming_the_file(tmp_path):
    import h5py

    h5 = tmp_path / "tokens.h5"
    with h5py.File(h5, "w") as f:
        f.create_group("tokens")
    with pytest.raises(InputError, match="tokens.h5: 'tokens' is a group, not a dataset"):  # was AttributeError: 'Group' object has no attribute 'dtype'
        WindowLoader(h5, 16, 4)

@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attn_length": 5000, "batch_size": 1}, "longer than the training split"),
        ({"attn_length": 16, "batch_size": 4, "valid_tokens": 10, "split": "valid"}, r"longer than the validation split.*a larger validation split \(valid_fraction"),
        # refused up front: at the first batch with a larger id, the core called a shard damaged
        ({"attn_length": 16, "batch_size": 4, "vocab_size": 256}, r"vocab_size 256 is smaller than the store's vocabulary \(257 ids"),
        ({"attn_length": 16, "batch_size": 1000}, "fewer than one batch"),
        ({"attn_length": 16, "batch_size": 4, "rank": 2, "world_size": 2}, "rank 2"),
        ({"attn_length": 16, "batch_size": -1}, "batch_size must be an integer of at least 1"),
        ({"attn_length": 16.9, "batch_size": 4}, "attn_length must be an integer"),
        ({"attn_length": 16, "batch_size": 4, "stride": 0}, "stride must be"),
        ({"attn_length": 16, "batch_size": 4, "seed": 2**64}, "seed must be"),
        ({"attn_length": 16, "batch_size": 4, "epoch": -1}, "epoch must be"),
        ({"attn_length": 16, "batch_size": 4, "device": "bogus"}, "device must be"),
        # bool("false") is True: these served backward, shuffled, dropping, without a word
        ({"attn_length": 16, "batch_size": 4, "backward": "false"}, "backward must be True or False, not 'false'"),
        ({"attn_length": 16, "batch_size": 4, "shuffle": "no"}, "shuffle must be True or False, not 'no'"),
        ({"attn_length": 16, "batch_size": 4, "drop_last": "0"}, "drop_last must be True or False, not '0'"),
    ],
)
def test_impossible_setups_are_clear_errors(tmp_path, kwargs, message):
    path, _ = make_store(tmp_path, 3000, 1000)
    kwargs = dict(kwargs)
    with pytest.raises(InputError, match=message) as info:
        WindowLoader(path, kwargs.pop("attn_length"), kwargs.pop("batch_size"), **kwargs)
    # Only a batch the split cannot fill is a BatchSizeError, for which `arrows train` names the config's keys.
    assert isinstance(info.value, BatchSizeError) == ("fewer than one batch" in message), info.value


def test_a_buffer_is_never_reused_while_a_tensor_views_it(tmp_path):
    path, stream = make_store(tmp_path, 20_000, 4000)
    loader = WindowLoader(path, 16, 4, prefetch=2, threads=2, seed=0)
    starts = loader.window_starts()
    kept = []  # keep every batch alive: far more than the 2 buffers of the ring
    for b, (x, y) in enumerate(loader):
        kept.append((b, x, y[:, 3:]))  # a view of a view keeps the buffer too
    assert len(kept) == len(loader) > 10
    assert loader._core.buffers_allocated >= len(kept)  # the ring grew instead of overwriting
    for b, x, ytail in kept:
        for j in range(4):
            xr, yr = reference_window(stream, int(starts[b * 4 + j]), 16, False)
            assert x[j].tolist() == xr and ytail[j].tolist() == yr[3:]
    # Batches dropped as they come: the ring stays at its size. (Fifty batches, 25 times the ring:
    # each gc.collect() takes a fifth of a second with torch loaded, the whole epoch took minutes.)
    loader2 = WindowLoader(path, 16, 4, prefetch=2, threads=2)
    for x, y in itertools.islice(loader2, 50):
        del x, y
        gc.collect()
    assert loader2._core.buffers_allocated <= 3


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_dataloader_around_a_window_loader_says_to_iterate_it_directly(tmp_path, workers):
    # DataLoader takes anything with a length for a dataset of single examples: it failed with
    # "'WindowLoader' object is not subscriptable".
    from torch.utils.data import DataLoader

    loader = WindowLoader(make_store(tmp_path, 5_000, 4096)[0], 16, 4)
    with pytest.raises(Exception, match="a WindowLoader is already a loader: iterate it directly"):
        next(iter(DataLoader(loader, batch_size=None, num_workers=workers)))
