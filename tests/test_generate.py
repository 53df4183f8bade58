"""`arrows generate` from a chosen checkpoint (`--checkpoint`) and on a chosen device (`--device`)."""

import json
import re

import pytest
from conftest import arrows

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def run_with_backups(tmp_path_factory):
    """A tiny GPT trained 6 steps on bytes, keeping a copy of its checkpoint at steps 3 and 6."""
    tmp = tmp_path_factory.mktemp("generate")
    (tmp / "t.txt").write_text("the arrow of time flies forward, and the text is read backward. " * 300)
    arrows("tokenize", tmp / "t.txt", "--out", tmp / "store", "--tokenizer", "bytes")
    config = {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": 32, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp / "store"), "batch_size": 8, "steps_to_train": 6, "save_every": 3,
                            "backup_every": 3, "step_log": 3, "valid_every": 6, "save_loc": str(tmp / "runs"), "run_name": "r"},
        "optim_params": {"lr": 3e-2, "warmup_steps": 1},
    }
    (tmp / "c.json").write_text(json.dumps(config))
    arrows("train", tmp / "c.json", "--device", "cpu")
    return tmp / "runs" / "r"


def sample(run, *flags):
    return arrows("generate", run, "--prompt", "the ", "-n", "40", "--seed", "1", *flags).stdout


def test_a_kept_step_samples_from_that_step(run_with_backups):
    run = run_with_backups
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_00000003.pt", "step_00000006.pt"]
    latest, at_6, at_3 = sample(run), sample(run, "--checkpoint", "6"), sample(run, "--checkpoint", "3")
    assert latest == at_6 and at_3 != at_6  # the same weights and seed give the same text
    assert sample(run, "--checkpoint", run / "checkpoints" / "step_00000003.pt") == at_3


def test_a_checkpoint_that_is_not_there_is_named_with_what_is(run_with_backups):
    proc = arrows("generate", run_with_backups, "--checkpoint", "4", check=False)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "has no checkpoint of step 4 (its kept steps: 3, 6)" in message, proc.stderr
    proc = arrows("generate", run_with_backups, "--checkpoint", "nowhere.pt", check=False)
    assert proc.returncode == 1 and "no such checkpoint file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_damaged_checkpoint_is_told_what_generate_can_do(run_with_backups, tmp_path):
    # The advice was train's: "resume from the newest backup with --resume …, or start over with
    # --resume never", options generate does not have.
    import shutil

    run = tmp_path / "r"
    shutil.copytree(run_with_backups, run)
    (run / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    proc = arrows("generate", run, check=False)
    message = " ".join(proc.stderr.split())
    backup = run / "checkpoints" / "step_00000006.pt"
    assert proc.returncode == 1 and "latest.pt: damaged checkpoint" in message and "Traceback" not in message, message
    assert f"the newest backup is {backup}: `arrows generate --checkpoint` takes it" in message, message
    assert "start over" not in message, message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_a_clear_error(run_with_backups):
    proc = arrows("generate", run_with_backups, "--device", "cuda", check=False)
    assert proc.returncode == 1 and "no CUDA device is visible" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sample(run_with_backups, "--device", "cpu") == sample(run_with_backups, "--device", "auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_the_gpu(run_with_backups):
    # Not compared with the CPU's text: a near-tie between two tokens may fall either way.
    on_gpu = sample(run_with_backups, "--device", "cuda")
    assert on_gpu.startswith("the ") and len(on_gpu) > len("the ") + 20
    assert sample(run_with_backups, "--device", "cuda", "--checkpoint", "3") != on_gpu


def test_a_token_store_decodes_with_its_own_tokenizer_whatever_tokenizer_path_says(tmp_path):
    """A config's tokenizer_path (a reference config's, kept when dataset_folder was pointed at a
    token store) decoded the store's ids as another tokenizer's: samples, the run folder's copy and
    `arrows generate` used it without a word. It is for .h5 files: a store carries its own."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    other = Tokenizer(models.WordLevel({f"w{i}": i for i in range(257)}, unk_token="w0"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.save(str(tmp_path / "other.json"))
    (tmp_path / "t.txt").write_text("the arrow of time flies forward. " * 300)
    arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "store", "--tokenizer", "bytes")
    config = {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp_path / "store"), "tokenizer_path": str(tmp_path / "other.json"), "batch_size": 8,
                            "steps_to_train": 2, "sample_every": 2, "sample_tokens": 16, "save_loc": str(tmp_path / "runs"), "run_name": "r"},
        "optim_params": {"lr": 1e-2},
    }
    (tmp_path / "c.json").write_text(json.dumps(config))
    proc = arrows("train", tmp_path / "c.json", "--device", "cpu")
    assert "tokenizer_path has no effect" in " ".join(proc.stderr.split()), proc.stderr
    run = tmp_path / "runs" / "r"
    own = Tokenizer.from_file(str(tmp_path / "store" / "tokenizer.json")).get_vocab()
    assert Tokenizer.from_file(str(run / "tokenizer.json")).get_vocab() == own
    (sampled,) = [json.loads(line)["text"] for line in (run / "samples.jsonl").read_text().splitlines()]
    assert not re.search(r"w\d+ w\d+", sampled), sampled  # bytes, not the other's words "w116 w105 ..."
    assert arrows("generate", run, "--prompt", "the ", "-n", "4").stdout.startswith("the ")
