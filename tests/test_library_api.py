"""arrows used as a library from Python, the way a researcher scripts it: the argument forms the
docstrings promise, and bad arguments met with arrows' own errors naming what to change."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arrows import checkpoint  # noqa: E402
from arrows.errors import CorruptDataError  # noqa: E402


def test_checkpoint_save_and_load_take_str_paths(tmp_path):
    path = str(tmp_path / "sub" / "ck.pt")
    payload = {"model": {"w": torch.arange(3)}, "optimizer": {}, "step": 7, "per_rank": [], "config": {}}
    checkpoint.save(path, payload)  # a str, not only a Path
    back = checkpoint.load(path)
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.arange(3))


def test_a_checkpoint_path_that_cannot_be_opened_is_not_called_damaged(tmp_path):
    # A folder given by mistake is an OS error naming it, not "damaged checkpoint ... start over".
    with pytest.raises(IsADirectoryError) as e:
        checkpoint.load(tmp_path)
    assert e.value.filename == str(tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")
    # A file that is there but is no checkpoint is still named as damaged.
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(CorruptDataError, match="text.pt: damaged checkpoint"):
        checkpoint.load(tmp_path / "text.pt")


def small_store(tmp_path, n_bytes=6000, shard_bytes="1000"):
    """A token store of lowercase words (bytes tokenizer), in several shards."""
    from conftest import arrows

    rng = np.random.default_rng(0)
    raw = rng.integers(ord("a"), ord("z") + 1, size=n_bytes, dtype=np.uint8)
    raw[rng.random(n_bytes) < 0.15] = ord(" ")
    (tmp_path / "text.txt").write_bytes(raw.tobytes())
    arrows("tokenize", tmp_path / "text.txt", "--out", tmp_path / "store", "--tokenizer", "bytes", "--shard-bytes", shard_bytes)
    return tmp_path / "store"


def test_loader_positions_out_of_range_are_input_errors(tmp_path):
    from arrows.data import WindowLoader
    from arrows.errors import InputError

    loader = WindowLoader(small_store(tmp_path), 16, 4, seed=1)
    # Each of these was an OverflowError from the core ("can't convert negative int to unsigned").
    with pytest.raises(InputError, match="epoch must be"):
        loader.set_epoch(-1)
    with pytest.raises(InputError, match="epoch must be"):
        loader.window_starts(-1)
    state = loader.state_dict()
    with pytest.raises(InputError, match="batch must be"):
        loader.load_state_dict({**state, "batch": -1})
    # A batch beyond the epoch was taken silently as the start of the next epoch.
    with pytest.raises(InputError, match=f"batch {len(loader) + 1} is beyond the {len(loader)} batches"):
        loader.load_state_dict({**state, "batch": len(loader) + 1})
    assert loader.state_dict() == state  # a refused state changes nothing
    # The end of an epoch is a real position: the next iteration serves the following epoch.
    loader.load_state_dict({**state, "epoch": 3, "batch": len(loader)})
    first = next(iter(loader))[1]
    assert loader.epoch == 4 and loader.batch == 1
    loader.set_epoch(4)
    assert torch.equal(next(iter(loader))[1], first)


def test_h5_sources_that_cannot_be_read_say_why_and_name_the_file(tmp_path):
    import h5py

    from arrows.data import WindowLoader
    from arrows.errors import InputError
    from arrows.h5 import h5_id_range, h5_tokens

    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("hello")
    # Was h5py's OSError "Unable to synchronously open file (file signature not found)", no file name.
    with pytest.raises(InputError, match=r"notes\.h5: not a readable HDF5 file"):
        WindowLoader(not_hdf5, 8, 2)

    # Both were called "chunked or compressed" with advice to h5repack a contiguous dataset.
    unwritten = tmp_path / "unwritten.h5"
    with h5py.File(unwritten, "w") as f:
        f.create_dataset("tokens", shape=(1000,), dtype=np.int32)
    with pytest.raises(InputError, match=r"unwritten\.h5: the 'tokens' dataset was created but never written"):
        WindowLoader(unwritten, 8, 2)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("tokens", shape=(0,), dtype=np.int32)
    assert len(h5_tokens(empty)) == 0 and h5_id_range(empty) is None
    with pytest.raises(InputError, match="no training tokens in a stream of 0"):
        WindowLoader(empty, 8, 2)


def _next_targets(loader, queue):
    queue.put(next(iter(loader))[1].tolist())


def _continue_batches(batches, queue):
    try:
        next(batches)
        queue.put("served")
    except Exception as e:  # noqa: BLE001  (the test checks which)
        queue.put(f"{type(e).__name__}: {e}")


def test_a_loader_pickles_and_keeps_its_position(tmp_path):
    import copy
    import multiprocessing
    import pickle

    from arrows.data import WindowLoader

    loader = WindowLoader(small_store(tmp_path), 16, 4, seed=1, backward=True, valid_tokens=300)
    batches = iter(loader)
    next(batches), next(batches)
    # Was "TypeError: cannot pickle 'builtins.LoaderCore' object".
    copies = [pickle.loads(pickle.dumps(loader)), copy.deepcopy(loader)]
    assert all(c.state_dict() == loader.state_dict() for c in copies)
    # A spawned process (torch.multiprocessing.spawn, DDP launchers) receives it pickled.
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=_next_targets, args=(loader, queue))
    child.start()
    from_child = queue.get(timeout=300)
    child.join()
    expected = next(batches)[1]
    assert all(torch.equal(next(iter(c))[1], expected) for c in copies)
    assert from_child == expected.tolist()


def test_a_loader_made_from_a_relative_path_unpickles_in_another_folder(tmp_path, monkeypatch):
    import pickle

    from arrows.data import WindowLoader

    store = small_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    loader = WindowLoader("store", 16, 4, seed=1)
    expected = next(iter(pickle.loads(pickle.dumps(loader))))[1]
    # A process working in another folder (a job launcher's, a notebook after os.chdir): the copy
    # looked for "store" there, and failed with FileNotFoundError.
    monkeypatch.chdir(tmp_path.parent)
    elsewhere = pickle.loads(pickle.dumps(loader))
    assert elsewhere.path == store and torch.equal(next(iter(elsewhere))[1], expected)


def test_a_loader_on_a_missing_cuda_device_is_refused_at_once(tmp_path, monkeypatch):
    from arrows.data import WindowLoader
    from arrows.errors import InputError

    store = small_store(tmp_path)
    # Was a RuntimeError from torch at the first batch ("Found no NVIDIA driver on your system").
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InputError, match="'cuda': this machine has 0 CUDA device"):
        WindowLoader(store, 16, 4, device="cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match="'cuda:1': this machine has 1 CUDA device"):
        WindowLoader(store, 16, 4, device="cuda:1")
    with pytest.raises(InputError, match="device must be"):
        WindowLoader(store, 16, 4, device="meta")


def test_decoding_ids_outside_the_vocabulary_is_an_error(tmp_path):
    from arrows.data import TokenStore
    from arrows.errors import InputError

    store = TokenStore(small_store(tmp_path))  # bytes: id = byte + 1, 257 ids
    assert store.decode(store[:5]) == store.decode(torch.tensor(store[:5].astype(np.int64)))
    assert store.decode([0, 66, 67]) == "<|endoftext|>AB"
    # 5000 was dropped silently (''), -1 an OverflowError from the tokenizer.
    for bad in (5000, 257, -1):
        with pytest.raises(InputError, match=f"cannot decode id {bad}, outside the vocabulary of 257 ids"):
            store.decode([66, bad])


def test_a_bad_permutation_says_what_is_wrong(tmp_path):
    from arrows.data import WindowLoader
    from arrows.errors import InputError

    store = small_store(tmp_path)
    # The core's message said "(got 4 entries)" for a repeat, which has the right count.
    with pytest.raises(InputError, match=r"missing: \[3\]; repeated or out of range: \[2\]"):
        WindowLoader(store, 4, 2, permutation=[0, 1, 2, 2])
    with pytest.raises(InputError, match=r"missing: none; repeated or out of range: \[4\]"):
        WindowLoader(store, 4, 2, permutation=[3, 2, 1, 0, 4])
    # int() turned 1.5 into 1 and accepted the result as a permutation.
    with pytest.raises(InputError, match="integer positions"):
        WindowLoader(store, 4, 2, permutation=[0, 1.5, 2, 3])
    for perm in ([3, 2, 1, 0], np.array([3, 2, 1, 0]), torch.tensor([3, 2, 1, 0])):
        assert WindowLoader(store, 4, 2, permutation=perm).order == [3, 2, 1, 0]


def test_a_loader_already_iterated_works_in_a_forked_child(tmp_path):
    import multiprocessing

    from arrows.data import WindowLoader

    loader = WindowLoader(small_store(tmp_path), 16, 4, seed=1)
    batches = iter(loader)
    next(batches)  # the prefetch threads run now, in this process only
    fork = multiprocessing.get_context("fork")  # as DataLoader workers are made on Linux
    queue = fork.Queue()
    child = fork.Process(target=_next_targets, args=(loader, queue))
    child.start()
    child.join(timeout=300)
    # Was a Rust panic in the child: "threads should not terminate unexpectedly".
    assert child.exitcode == 0
    assert queue.get(timeout=60) == next(batches)[1].tolist()
    # An iteration started before the fork has no threads in the child: refused, not a hang.
    child = fork.Process(target=_continue_batches, args=(batches, queue))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    got = queue.get(timeout=60)
    assert got.startswith("InputError") and "forked" in got and "new iteration" in got, got
    assert next(batches)[1].shape == (4, 16)  # the parent's stream is untouched


def test_an_iteration_in_progress_follows_a_new_position(tmp_path):
    from arrows.data import WindowLoader

    store = small_store(tmp_path)

    def epoch_targets(epoch):
        loader = WindowLoader(store, 16, 4, seed=1)
        loader.set_epoch(epoch)
        return [y.clone() for _, y in loader]

    epoch0, epoch1 = epoch_targets(0), epoch_targets(1)
    loader = WindowLoader(store, 16, 4, seed=1)
    batches = iter(loader)
    next(batches), next(batches)
    # Resuming from a checkpoint while a `for` loop's iterator is alive: the iterator served
    # batch 2, the old stream, while state_dict() said the next batch is 6.
    loader.load_state_dict({**loader.state_dict(), "batch": 5})
    assert torch.equal(next(batches)[1], epoch0[5]) and loader.state_dict()["batch"] == 6
    loader.set_epoch(1)
    assert torch.equal(next(batches)[1], epoch1[0]) and (loader.epoch, loader.batch) == (1, 1)


def test_load_model_with_a_config_that_does_not_fit_the_weights(tmp_path):
    import json

    from conftest import ROOT

    from arrows.errors import InputError
    from arrows.models import build_model

    config = json.loads((ROOT / "cli" / "configs" / "gpt_nano.json").read_text())
    config["model_params"].update(vocab_size=257, n_layers=1, n_heads=2, embed_dim=8, attn_length=8)
    config["training_params"]["dataset_folder"] = str(small_store(tmp_path))
    trained = {**config["model_params"], "embed_dim": 16}
    path = tmp_path / "ck.pt"
    checkpoint.save(path, {"model": build_model(trained).state_dict(), "optimizer": {}, "step": 1, "per_rank": [], "config": config})
    # Was torch's RuntimeError ("Error(s) in loading state_dict for GPT: ...").
    with pytest.raises(InputError, match=r"ck\.pt: its weights do not fit the model that the config describes \(size mismatch"):
        checkpoint.load_model(config, path)
    config["model_params"]["embed_dim"] = 16
    assert checkpoint.load_model(config, path).transformer.token_embedder.weight.shape == (257, 16)


def test_token_arrays_are_read_only_whether_or_not_they_cross_shards(tmp_path):
    import gc

    from arrows.data import TokenStore

    store = TokenStore(small_store(tmp_path))
    first = len(store._shards[0])
    within, across = store[: first - 1], store[first - 5 : first + 5]
    # A range within a shard was read-only and one across shards writable: code that wrote into
    # its array worked on small tests and failed on another range.
    for ids in (within, across, across[::-1], store[::2]):
        with pytest.raises(ValueError, match="read-only"):
            ids[0] = 1
    expected = np.array(across)
    del store
    gc.collect()
    assert np.array_equal(across, expected) and len(within) == first - 1  # valid after the store is gone


def test_a_strided_slice_reads_only_the_tokens_it_takes(tmp_path):
    import tracemalloc

    from arrows.data import TokenStore

    store = TokenStore(small_store(tmp_path, n_bytes=400_000, shard_bytes="100000"))
    n = len(store)
    assert len(store._shards) > 2
    full = np.concatenate([np.asarray(s) for s in store._shards])
    for key in (slice(None, None, 1000), slice(7, None, 997), slice(None, None, -1000), slice(n - 3, 5, -1001), slice(5, n, n)):
        tracemalloc.start()
        try:
            ids = store[key]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.array_equal(ids, full[key]) and not ids.flags.writeable
        # The whole range was copied (800 kB here) before every 1000th token was taken: a corpus
        # larger than memory could not be sampled so.
        assert peak < 50_000, (key, peak)


def test_a_store_opened_while_tokenize_writes_it_matches_its_manifest(tmp_path):
    import subprocess

    from conftest import ARROWS, random_text

    from arrows.data import TokenStore
    from arrows.errors import ArrowsError

    text = tmp_path / "text.txt"
    text.write_text(random_text(3, 3_000_000, specials=False), encoding="utf-8")
    out = tmp_path / "store"
    writer = subprocess.Popen([str(ARROWS), "tokenize", str(text), "--out", str(out), "--vocab-size", "2000", "--shard-bytes", "20KB",
                               "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    opened, wrong = 0, []
    try:
        while writer.poll() is None:
            try:
                store = TokenStore(out, allow_incomplete=True)
            except (OSError, ArrowsError):  # not written yet (no manifest, no tokenizer)
                continue
            opened += 1
            listed = store.manifest["shards"]
            # The manifest was read a second time after the shards: tokenize replaces it after each
            # shard, so it listed shards (and tokens) that the store did not serve.
            if len(listed) != len(store._shards) or sum(s["tokens"] for s in listed) != len(store):
                wrong.append((len(listed), len(store._shards)))
    finally:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    assert opened and not wrong, f"{len(wrong)} of {opened} opens disagreed with their manifest: {wrong[:5]}"
