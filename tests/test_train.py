"""`arrows train` and `arrows generate` on CPU, run as a user runs them."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ARROWS, arrows, random_text

torch = pytest.importorskip("torch")

from arrows.metrics import read as read_metrics  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """English text with a small BPE: real language when ../shared is there, generated text else."""
    from conftest import SHARED_DATA

    tmp = tmp_path_factory.mktemp("data")
    src = SHARED_DATA / "debian_reference_en.txt"
    text = tmp / "en.txt"
    text.write_text(src.read_text(encoding="utf-8")[:400_000] if src.exists() else random_text(0, 400_000), encoding="utf-8")
    arrows("tokenize", text, "--out", tmp / "store", "--vocab-size", "512")
    return tmp / "store"


def write_config(path, store, **training):
    model = training.pop("model", {"n_layers": 2, "n_heads": 2, "embed_dim": 48, "attn_length": 32, "mlp_ratio": 4.0, "dropout": 0.1, "embd_dropout": None})
    model.setdefault("vocab_size", 512)
    cfg = {
        "model_params": model,
        "training_params": {
            "dataset_folder": str(store), "batch_size": 16, "aggregate": 1, "backwards": False, "steps_to_train": 40,
            "save_every": 20, "backup_every": 40, "step_log": 5, "valid_every": 20, "state_save_loc": str(path.parent / "runs"),
            "valid_batches": 4, **training,
        },
        "optim_params": {"lr": 3e-3, "warmup_steps": 5, "oscil_steps": 1000, "lr_shrink": 0.85, "lr_init": 1e-7, "lr_min": 1e-6},
    }
    path.write_text(json.dumps(cfg))
    return path


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.parametrize("kind", ["gpt", "gru", "lstm"])
def test_tiny_models_learn_real_text(tmp_path, store, kind):
    model = {"n_layers": 1, "embed_dim": 64, "dropout": 0.0, "embd_dropout": None}
    model |= {"n_heads": 2, "attn_length": 32, "mlp_ratio": 4.0} if kind == "gpt" else {"desired_attn_length": 32}
    cfg = write_config(tmp_path / f"{kind}.json", store, model=model, steps_to_train=60, run_name=kind)
    arrows("train", cfg, "--model", kind)
    run = tmp_path / "runs" / kind
    ls = losses(run)
    assert ls[0] > 5.0 and ls[-1] < ls[0] - 0.8, ls  # from about ln(512) = 6.2 down
    valid = [r["valid_loss"] for r in read_metrics(run) if "valid_loss" in r]
    assert valid and valid[-1] < 6.24 - 0.8  # ln(512) = 6.24 for a model that knows nothing
    assert (run / "checkpoints" / "latest.pt").exists() and (run / "config.json").exists()
    assert (run / "samples.jsonl").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    samples = [json.loads(line)["text"] for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(t, str) for t in samples)


def test_reference_configs_run_unchanged(tmp_path, store):
    from conftest import ROOT

    refs = ROOT.parent / "shared" / "reference-configs"
    if not refs.exists():
        pytest.skip("../shared/reference-configs is not beside the project")
    expected = {"en_small.json": "55,670,760 parameters (55.7M)", "en_med_backwards.json": "405,499,904 parameters (405.5M)", "later_blueprint.json": None, "gru_en_med.json": None}
    for name, count in expected.items():
        cfg = json.loads((refs / name).read_text())
        cfg["training_params"]["dataset_folder"] = str(store)  # only the data path changes
        path = tmp_path / name
        path.write_text(json.dumps(cfg))
        args = ["train", path, "--dry-run"] + (["--model", "gru"] if name.startswith("gru") else [])
        out = arrows(*args, cwd=tmp_path).stdout
        assert "parameters" in out and "planned_steps" not in out
        if count:
            assert count in out, out


def test_bad_config_lists_every_problem(tmp_path, store):
    cfg = json.loads(write_config(tmp_path / "c.json", store).read_text())
    cfg["training_params"]["bacth_size"] = 4
    cfg["training_params"]["aggregate"] = -1
    cfg["model_params"]["dropout"] = "high"
    cfg["optim_params"]["lr_shrink"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    proc = arrows("train", tmp_path / "bad.json", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    for needle in ("bacth_size", "batch_size", "aggregate", "dropout", "lr_shrink"):
        assert needle in proc.stderr, proc.stderr


def test_two_gloo_processes_equal_one(tmp_path, store):
    model = {"n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": 16, "mlp_ratio": 4.0, "dropout": 0.0, "embd_dropout": None}
    one = write_config(tmp_path / "one.json", store, model=model, steps_to_train=12, step_log=1, run_name="one", valid_every=6)
    two = write_config(tmp_path / "two.json", store, model=model, steps_to_train=12, step_log=1, run_name="two", valid_every=6)
    arrows("train", one, "--device", "cpu")
    arrows("train", two, "--device", "cpu", "--nproc", "2")
    a, b = losses(tmp_path / "runs" / "one"), losses(tmp_path / "runs" / "two")
    assert len(a) == len(b) == 12
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5), (a, b)
    va = [r["valid_loss"] for r in read_metrics(tmp_path / "runs" / "one") if "valid_loss" in r]
    vb = [r["valid_loss"] for r in read_metrics(tmp_path / "runs" / "two") if "valid_loss" in r]
    assert np.allclose(va, vb, rtol=1e-4)
    # Resuming under another process count is refused, inside the spawned processes: the user reads
    # the error, not torch.multiprocessing's nested tracebacks; --dry-run says the same up front.
    for dry in ([], ["--dry-run"]):
        proc = arrows("train", one, "--device", "cpu", "--nproc", "2", "--more", "2", *dry, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "written by 1 process(es); resume with the same number (now 2)" in proc.stderr, proc.stderr
    # A batch that does not split over the processes: refused before any process starts, dry run too.
    odd = write_config(tmp_path / "odd.json", store, model=model, batch_size=15, run_name="odd")
    for dry in ([], ["--dry-run"]):
        proc = arrows("train", odd, "--device", "cpu", "--nproc", "2", *dry, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "batch_size 15 does not split evenly over 2 processes" in proc.stderr, proc.stderr


def test_kill_9_then_resume_reproduces_the_losses_exactly(tmp_path, store):
    kw = dict(steps_to_train=30, step_log=1, save_every=3, valid_every=10)
    cfg = write_config(tmp_path / "c.json", store, run_name="straight", **kw)
    arrows("train", cfg, "--device", "cpu")
    straight = losses(tmp_path / "runs" / "straight")

    cfg2 = write_config(tmp_path / "c2.json", store, run_name="killed", **kw)
    run = tmp_path / "runs" / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([str(ARROWS), "train", str(cfg2), "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.2, 1.5)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    arrows("train", cfg2, "--device", "cpu")
    assert losses(run) == straight  # bit for bit


@pytest.mark.parametrize("save_every", [1, 3])
def test_nan_stops_with_the_checkpoint_intact(tmp_path, store, save_every):
    # save_every 3: the bad step's loss is read back while the next step runs (see Trainer.fit)
    import re

    from arrows import checkpoint

    cfg = write_config(tmp_path / "c.json", store, run_name="nan", steps_to_train=40, save_every=save_every, step_log=1)
    data = json.loads(cfg.read_text())
    data["optim_params"].update(lr=3e3, warmup_steps=8)  # diverges after a few steps (step 7 on ../shared's English)
    cfg.write_text(json.dumps(data))
    proc = arrows("train", cfg, "--device", "cpu", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nan" in proc.stderr.lower() or "inf" in proc.stderr.lower()
    bad_step = int(re.search(r"at step (\d+)", proc.stderr).group(1))
    run = tmp_path / "runs" / "nan"
    logged = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, bad_step)) and all(np.isfinite(r["loss"]) for r in logged)
    latest = run / "checkpoints" / checkpoint.LATEST
    if bad_step <= save_every:
        assert not latest.exists() and "No checkpoint was written yet" in proc.stderr
        return
    saved = checkpoint.load(latest)
    assert saved["step"] < bad_step and f"The checkpoint of step {saved['step']}" in proc.stderr
    assert all(torch.isfinite(p).all() for p in saved["model"].values())


@pytest.mark.parametrize("backward", [False, True])
def test_generate_reads_in_order(tmp_path, store, backward):
    cfg = write_config(tmp_path / "c.json", store, run_name="g", backwards=backward, steps_to_train=10)
    arrows("train", cfg, "--device", "cpu")
    out = arrows("generate", tmp_path / "runs" / "g", "--prompt", "The system", "--tokens", "12").stdout
    assert "The system" in out
    if backward:
        assert out.rstrip("\n").endswith("The system")
    else:
        assert out.startswith("The system")


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_external_launcher_joins_instead_of_spawning(tmp_path, store, launcher):
    """Under torchrun (RANK/WORLD_SIZE set) or in a SLURM job step (SLURM_PROCID/SLURM_NTASKS and
    the job script's MASTER_ADDR/MASTER_PORT) arrows joins the group: the same losses as one process."""
    import sys

    from arrows import checkpoint
    from arrows.distributed import free_port

    model = {"n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": 16, "mlp_ratio": 4.0, "dropout": 0.0, "embd_dropout": None}
    one = write_config(tmp_path / "one.json", store, model=model, steps_to_train=6, step_log=1, run_name="one", valid_every=6)
    two = write_config(tmp_path / "two.json", store, model=model, steps_to_train=6, step_log=1, run_name="two", valid_every=6)
    arrows("train", one, "--device", "cpu")
    train_two = [sys.executable, "-m", "arrows", "train", str(two), "--device", "cpu"]
    if launcher == "torchrun":  # through cli/launch/torchrun.sh, as the README shows it (torchrun beside this python)
        from conftest import ROOT

        env = {**os.environ, "GPUS_PER_NODE": "2", "MASTER_PORT": str(free_port()), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        procs = [subprocess.run(["bash", str(ROOT / "cli" / "launch" / "torchrun.sh"), str(two), "--device", "cpu"],
                                capture_output=True, text=True, timeout=300, env=env)]
    else:  # what srun gives each task of `srun --ntasks 2`
        port = str(free_port())
        tasks = [subprocess.Popen(train_two, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "SLURM_PROCID": str(i), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(i),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
                 for i in range(2)]
        procs = [subprocess.CompletedProcess(t.args, t.wait(timeout=300), *t.communicate()) for t in tasks]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.allclose(losses(tmp_path / "runs" / "one"), losses(tmp_path / "runs" / "two"), rtol=1e-4, atol=1e-5)
    # One group of two, not two runs of one: the checkpoint holds both processes' loader positions.
    assert len(checkpoint.load(tmp_path / "runs" / "two" / "checkpoints" / checkpoint.LATEST)["per_rank"]) == 2


def test_wandb_without_its_package_is_refused_before_the_run_folder_is_made(tmp_path, store):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    cfg = write_config(tmp_path / "c.json", store, run_name="wb")
    for extra in ([], ["--dry-run"]):
        proc = arrows("train", cfg, "--device", "cpu", "--wandb", "project", *extra, check=False)
        message = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and "pip install wandb" in message and "Traceback" not in message, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_slurm_without_master_address_says_what_to_set(tmp_path, store):
    cfg = write_config(tmp_path / "c.json", store, run_name="slurm")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    proc = subprocess.run([str(ARROWS), "train", str(cfg), "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          env={**env, "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in said, proc.stderr
    assert ("error: started by SLURM (SLURM_PROCID=0, SLURM_NTASKS=2), but MASTER_ADDR is not set: set MASTER_ADDR and MASTER_PORT "
            "in the job script") in said, proc.stderr


def test_cuda_out_of_memory_names_the_settings_to_lower(tmp_path, store, monkeypatch):
    # A CPU run cannot run out of CUDA memory: the step raises the error torch would raise.
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainingStopped, TrainOptions, Trainer

    config = load_config(write_config(tmp_path / "c.json", store, run_name="oom"))
    trainer = Trainer(config, World(0, 1, 0, "cpu"), TrainOptions(resume="never"))

    def out_of_memory(batches):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.26 GiB")

    monkeypatch.setattr(trainer, "_train_step", out_of_memory)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert "batch_size 16" in message and "aggregate" in message and 'head_loss to "chunked"' in message


def test_cuda_out_of_memory_in_validation_names_val_batch_size(tmp_path, store, monkeypatch):
    # Validation has its own batch size: the advice to lower batch_size (which fitted) was wrong.
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainingStopped, TrainOptions, Trainer

    config = load_config(write_config(tmp_path / "c.json", store, run_name="oom", steps_to_train=4, save_every=2, valid_every=4, val_batch_size=64))
    trainer = Trainer(config, World(0, 1, 0, "cpu"), TrainOptions(resume="never"))
    forward = trainer.model.forward

    def out_of_memory_when_validating(*args, **kwargs):
        if not trainer.model.training:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.26 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", out_of_memory_when_validating)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    message = str(stopped.value)
    assert "validating at step 4, at training_params.val_batch_size 64" in message and "the checkpoint of step 2 is intact" in message, message
    assert "aggregate" not in message


def test_ctrl_c_stops_the_run_between_two_steps(tmp_path, store):
    # Ctrl-C is only noted, and acted on before the next step: it never lands inside a step or a
    # checkpoint write (inside torch.save it became a RuntimeError, and the run exited 1).
    from arrows import checkpoint
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import CancelledError
    from arrows.train import Trainer, TrainOptions

    trainer = Trainer(load_config(write_config(tmp_path / "c.json", store, run_name="ctrl_c")), World(0, 1, 0, "cpu"), TrainOptions(resume="never"))
    train_step = trainer._train_step

    def ctrl_c_during_the_third_step(batches):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # Python runs the handler here: a plain KeyboardInterrupt would end the step now
        return train_step(batches)

    trainer._train_step = ctrl_c_during_the_third_step
    with pytest.raises(CancelledError, match="interrupted at step 3; its checkpoint is saved in .*latest.pt: run the same command"):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C interrupts at once
    # The steps trained are kept (save_every is 1000): they were trained again after a resume.
    assert checkpoint.saved_step(trainer.ckpt_dir / checkpoint.LATEST) == 3


def test_ctrl_c_inside_torch_save_is_an_interrupt_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import torch

    from arrows import checkpoint

    checkpoint.save(tmp_path / "latest.pt", {"step": 1})
    before = (tmp_path / "latest.pt").read_bytes()

    def interrupted_save(payload, f):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:  # what torch's zip writer does with it while closing the archive
            raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 16384 vs 16278") from None

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "latest.pt", {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"] and (tmp_path / "latest.pt").read_bytes() == before


def test_a_non_finite_step_changes_neither_weights_nor_optimizer(tmp_path, store):
    # The check stays on the device (fused AdamW's found_inf): nothing of a bad step is applied.
    import math

    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    trainer = Trainer(load_config(write_config(tmp_path / "c.json", store, run_name="skip")), World(0, 1, 0, "cpu"), TrainOptions(resume="never"))
    batches = trainer._batches()
    loss, _ = trainer._train_step(batches).read()
    assert math.isfinite(loss)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in s.items()} for i, s in trainer.optimizer.state_dict()["state"].items()}
    healthy = trainer.model.forward
    trainer.model.forward = lambda x, y: (None, healthy(x, y)[1] * float("nan"))
    loss, grad_norm = trainer._train_step(batches).read()
    assert math.isnan(loss) and math.isnan(grad_norm)
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())
    for i, s in trainer.optimizer.state_dict()["state"].items():
        assert all(torch.equal(moments[i][k], v) for k, v in s.items()), i
    # and the next healthy step is applied as usual
    trainer.model.forward = healthy
    assert math.isfinite(trainer._train_step(batches).read()[0])
    assert not torch.equal(weights["lm_head.weight"], trainer.model.lm_head.weight)


def test_attention_and_head_flags_and_resuming_under_other_kernels(tmp_path, store):
    cfg = write_config(tmp_path / "c.json", store, run_name="kernels", steps_to_train=4, save_every=2, step_log=1)
    arrows("train", cfg, "--device", "cpu", "--attention", "plain")
    # the weights are the same under any attention kernel and either head: it resumes
    proc = arrows("train", cfg, "--device", "cpu", "--attention", "sdpa", "--head-loss", "chunked", "--more", "2")
    assert "step 6" in proc.stdout
    saved = json.loads((tmp_path / "runs" / "kernels" / "config.json").read_text())
    assert saved["model_params"]["attention"] == "sdpa" and saved["model_params"]["head_loss"] == "chunked"
    bad = arrows("train", cfg, "--device", "cpu", "--attention", "flash", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "attention" in bad.stderr and "sdpa" in bad.stderr
    bad = arrows("train", cfg, "--device", "cpu", "--head-loss", "fused", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "model_params.head_loss" in bad.stderr and "chunked" in bad.stderr


def test_a_cpu_run_whose_head_cannot_fit_is_refused_before_it_starts(tmp_path, store, monkeypatch):
    # The kernel's out-of-memory killer would end such a run at step 1 without a word (the paper's
    # nano config with batch 250 did, on a 24 GB machine: about 51 GB with the plain head).
    import arrows.preflight as preflight
    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.preflight import head_memory_bytes
    from arrows.train import TrainOptions, train

    def config(head_loss, name):
        model = {"n_layers": 2, "n_heads": 2, "embed_dim": 48, "attn_length": 32, "mlp_ratio": 4.0, "dropout": 0.1, "embd_dropout": None,
                 "head_loss": head_loss}
        return load_config(write_config(tmp_path / name, store, run_name="big", batch_size=64, model=model))

    cfg = config("plain", "c.json")
    train_bytes, valid_bytes = head_memory_bytes(cfg, processes=1)
    assert train_bytes == 64 * 32 * 512 * 4 * 4 and valid_bytes == train_bytes // 2  # logits, log-softmax, gradients
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: train_bytes // 2)
    with pytest.raises(InputError) as refused:
        train(cfg, TrainOptions(device="cpu", dry_run=True))
    message = str(refused.value)
    assert "64 windows" in message and "--head-loss chunked" in message and "aggregate" in message and "available" in message
    assert not (tmp_path / "runs" / "big").exists()

    # The chunked head needs a chunk of logits at a time: it fits where the plain one did not ...
    chunked = config("chunked", "k.json")
    assert head_memory_bytes(config("auto", "a.json"), processes=1) == head_memory_bytes(chunked, processes=1)  # auto: chunked on a CPU
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: max(head_memory_bytes(chunked, processes=1)))
    assert train(chunked, TrainOptions(device="cpu", dry_run=True))["planned_steps"] == 40
    # ... and where even it cannot, the advice is the batch; unknown memory (not Linux) is not checked.
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 1000)
    with pytest.raises(InputError, match="lower training_params.batch_size"):
        train(chunked, TrainOptions(device="cpu", dry_run=True))
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: None)
    assert train(cfg, TrainOptions(device="cpu", dry_run=True))["planned_steps"] == 40


def test_available_memory_is_read_on_linux():
    from arrows.preflight import available_memory_bytes

    available = available_memory_bytes()
    if not os.path.exists("/proc/meminfo"):
        assert available is None
    else:
        assert 0 < available < 1 << 50


def trainer_on_a_fake_clock(monkeypatch, cfg, resume="never"):
    """A Trainer on a fake clock: every training step takes 1 s, every checkpoint and validation 7 s."""
    import types

    from arrows import train as train_module
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    now = [0.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0], time=time.time))
    trainer = Trainer(load_config(cfg), World(0, 1, 0, "cpu"), TrainOptions(resume=resume))
    for name, seconds in (("_train_step", 1.0), ("_save", 7.0), ("_validate", 7.0)):
        def timed(*args, _real=getattr(trainer, name), _seconds=seconds):
            result = _real(*args)
            now[0] += _seconds
            return result
        monkeypatch.setattr(trainer, name, timed)
    # _StepResult stamps the time it is made, inside _train_step: the step's second is then not yet
    # counted, so move the stamp to the step's end.
    real_step = trainer._train_step
    def step_ending(*args):
        result = real_step(*args)
        result.queued_at = now[0]
        return result
    monkeypatch.setattr(trainer, "_train_step", step_ending)
    return trainer


def test_tokens_per_second_counts_the_steps_not_the_checkpoints(tmp_path, store, monkeypatch):
    # Each logged rate must be exactly one step's tokens per second, including at the steps that
    # save (once many times too high: their loss was read at once and timed from the previous log)
    # and right after them (too low: the checkpoint's time was counted).
    cfg = write_config(tmp_path / "c.json", store, run_name="rate", steps_to_train=9, save_every=3, valid_every=4, step_log=1, backup_every=None)
    trainer = trainer_on_a_fake_clock(monkeypatch, cfg)
    trainer.fit()
    rates = [r["tokens_per_s"] for r in read_metrics(tmp_path / "runs" / "rate") if "tokens_per_s" in r]
    assert len(rates) == 9 and rates == [trainer.tokens_per_step] * 9, rates


def test_tokens_per_second_after_a_resume_counts_only_the_steps_timed(tmp_path, store, monkeypatch):
    # Resumed at step 3 with step_log 2, the record of step 4 averages the loss of steps 3 and 4
    # (step 3's carried over by the checkpoint), but only step 4 was timed: its rate was twice too high.
    import shutil

    cfg = write_config(tmp_path / "c.json", store, run_name="rate", steps_to_train=5, save_every=3, backup_every=3, valid_every=100, step_log=2)
    arrows("train", cfg, "--device", "cpu")
    ckpts = tmp_path / "runs" / "rate" / "checkpoints"
    shutil.copy(ckpts / "step_00000003.pt", ckpts / "latest.pt")
    trainer = trainer_on_a_fake_clock(monkeypatch, cfg, resume="auto")
    assert trainer.step == 3 and trainer.unlogged[1] == 1
    trainer.fit()
    rates = {r["step"]: r["tokens_per_s"] for r in read_metrics(tmp_path / "runs" / "rate") if "tokens_per_s" in r}
    assert rates[4] == rates[5] == trainer.tokens_per_step, rates


def test_a_finished_run_is_left_as_it_is_and_changed_settings_are_kept(tmp_path, store):
    cfg = write_config(tmp_path / "c.json", store, run_name="done", steps_to_train=4, save_every=2, step_log=1, valid_every=4)
    arrows("train", cfg, "--device", "cpu")
    run = tmp_path / "runs" / "done"
    summary, config = (run / "summary.json").read_text(), (run / "config.json").read_text()
    assert json.loads(summary)["valid_loss"] is not None
    # Again: nothing to do, and the records of what trained stay as they were.
    proc = arrows("train", cfg, "--device", "cpu")
    assert "nothing to do: the run is already at step 4" in proc.stdout
    assert (run / "summary.json").read_text() == summary and (run / "config.json").read_text() == config
    dry = arrows("train", cfg, "--device", "cpu", "--dry-run").stdout
    assert "resume       from step 4" in dry and "nothing to train" in dry, dry
    # Two more steps at another learning rate: said up front, said when it starts, logged, and the
    # config it trained under until now kept beside the new one.
    changed = json.loads(cfg.read_text())
    changed["optim_params"]["lr"] = 1e-3
    cfg.write_text(json.dumps(changed))
    # Given as it is, the finished run trains nothing, and says the edit was not used (it said only "nothing to do").
    proc = arrows("train", cfg, "--device", "cpu")
    assert "nothing to do" in proc.stdout and (run / "config.json").read_text() == config
    assert "these settings of the config differ from those it trained under and were not used: optim_params.lr: 0.003 → 0.001" in \
        " ".join(proc.stderr.split()), proc.stderr
    dry = arrows("train", cfg, "--device", "cpu", "--more", "2", "--dry-run").stdout
    assert "2 steps to train" in dry and "changed      optim_params.lr: 0.003 → 0.001" in dry, dry
    proc = arrows("train", cfg, "--device", "cpu", "--more", "2")
    assert "continuing from step 4 with changed settings: optim_params.lr: 0.003 → 0.001" in proc.stderr, proc.stderr
    assert (run / "config.until_step_4.json").read_text() == config
    assert json.loads((run / "config.json").read_text())["optim_params"]["lr"] == 1e-3
    assert any(r.get("changed_settings") == "optim_params.lr: 0.003 → 0.001" for r in read_metrics(run))
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_a_group_that_failed_after_its_last_save_is_said_to_be_complete(tmp_path):
    """A process lost after the last checkpoint of a `--more N` run: "run the same command" would
    have trained N steps more, so the message says the run is whole instead."""
    from arrows import checkpoint
    from arrows.resume import where_it_stands

    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    assert "No checkpoint was written yet" in where_it_stands(latest)
    checkpoint.save(latest, {"step": 6, "total_steps": 10, "more": 2})
    assert where_it_stands(latest) == f"The checkpoint {latest} is intact: run the same command to continue from it."
    checkpoint.save(latest, {"step": 10, "total_steps": 10, "more": 2})
    # Lost before rank 0 wrote the run's summary.json: the same command writes it, and trains nothing.
    said = where_it_stands(latest)
    assert "of its last step, 10, is intact and complete" in said and "run the same command to write its summary.json" in said, said
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"steps": 10}))
    said = where_it_stands(latest)
    assert "reached its end" in said and "of its last step, 10, is intact and complete" in said and "same command" not in said, said


def test_the_cuda_generator_is_kept_for_the_gpu_a_process_trains_on(monkeypatch):
    """Which CUDA generator a checkpoint keeps and restores (the GPU calls faked: no GPU here): the
    one of the process's own GPU, restored to its GPU now, whatever its number; from an earlier
    arrows' list of every visible GPU's state, the entry of that GPU's number, or none."""
    import torch

    from arrows import checkpoint

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", str(device))) or f"state of {device}")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", state, str(device))))
    state = checkpoint.rng_state("cuda:3")
    assert state["cuda"] == "state of cuda:3" and calls == [("get", "cuda:3")]
    checkpoint.set_rng_state(state, "cuda:0")
    assert calls[-1] == ("set", "state of cuda:3", "cuda:0")
    legacy = {**state, "cuda": [f"gpu {i}" for i in range(8)]}
    checkpoint.set_rng_state(legacy, "cuda:5")
    assert calls[-1] == ("set", "gpu 5", "cuda:5")
    calls.clear()
    checkpoint.set_rng_state({**legacy, "cuda": ["gpu 0", "gpu 1"]}, "cuda:5")  # saved where only 2 were visible
    checkpoint.set_rng_state(state, "cpu")
    assert calls == [] and "cuda" not in checkpoint.rng_state("cpu")


def test_dry_run_checks_the_validation_split(tmp_path, store):
    cfg = write_config(tmp_path / "c.json", store, run_name="tiny_valid", valid_fraction=0.0001)
    proc = arrows("train", cfg, "--device", "cpu", "--dry-run", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "validation" in proc.stderr, proc.stderr


def test_h5_ids_beyond_the_vocabulary_are_refused_before_anything_starts(tmp_path):
    (tmp_path / "t.txt").write_text(random_text(3, 20_000), encoding="utf-8")
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s", "--h5")
    cfg = write_config(tmp_path / "c.json", tmp_path / "s" / "tokens.h5", model={"vocab_size": 100, "n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16},
                       run_name="h5")
    from arrows.h5 import h5_id_range

    lo, hi = h5_id_range(tmp_path / "s" / "tokens.h5")
    assert lo >= 0 and hi > 200  # non-ASCII text: bytes ≥ 0x80, ids = byte + 1
    for dry in ([], ["--dry-run"]):
        proc = arrows("train", cfg, "--device", "cpu", *dry, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"model_params.vocab_size: 100 is smaller than the data's vocabulary ({hi + 1} ids)" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs" / "h5").exists()  # nothing was started


def test_a_missing_dataset_is_listed_with_the_other_problems(tmp_path, store):
    cfg = json.loads(write_config(tmp_path / "c.json", store).read_text())
    cfg["training_params"]["dataset_folder"] = "not_here"
    cfg["training_params"]["dropout"] = 0.1  # a model key in the wrong section
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    proc = arrows("train", tmp_path / "bad.json", "--dry-run", check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "2 problems" in proc.stderr, proc.stderr
    assert "training_params.dropout: not a key of training_params; it belongs in model_params" in proc.stderr
    assert "training_params.dataset_folder: 'not_here' not found" in proc.stderr


def test_a_resume_under_another_window_set_is_refused_up_front(tmp_path, store):
    # stride and valid_fraction change the training split's windows, which the checkpoint's place in
    # the data counts: --dry-run listed them as changed settings and the run then failed in the
    # loader ("the loader state belongs to another data setup"), naming neither key nor checkpoint.
    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.resume import check_resumable

    def config(**training):
        return load_config(write_config(tmp_path / "c.json", store, run_name="windows", **training))

    payload = {"config": config().to_dict(), "per_rank": [{}]}  # stride null: (32 - 1) // 2 = 15
    for changed, key in (({"stride": 4}, "stride"), ({"valid_fraction": 0.05}, "valid_fraction")):
        with pytest.raises(InputError, match=f"(?s)another setup.*training_params.{key}: checkpoint") as refused:
            check_resumable(tmp_path / "latest.pt", payload, config(**changed), 1)
        assert "latest.pt" in str(refused.value)
    # the stride null stands for is the same setting, not a change
    assert check_resumable(tmp_path / "latest.pt", payload, config(stride=15), 1) == []


def test_a_run_started_over_leaves_nothing_of_the_earlier_one_to_resume(tmp_path, store):
    # --resume never killed before its first save: the next `arrows train` resumed the earlier run's
    # latest.pt (its weights, its step) under the new run's metrics, or said "nothing to do".
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import CancelledError, InputError
    from arrows.resume import resume_point
    from arrows.train import Trainer, TrainOptions

    config = load_config(write_config(tmp_path / "c.json", store, run_name="over", steps_to_train=4, save_every=2, backup_every=2, step_log=1))
    run = tmp_path / "runs" / "over"
    Trainer(config, World(0, 1, 0, "cpu"), TrainOptions()).fit()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt", "step_00000002.pt", "step_00000004.pt"]

    dry = arrows("train", tmp_path / "c.json", "--device", "cpu", "--resume", "never", "--dry-run").stdout
    assert "start over   removes the earlier run's latest.pt, step_00000002.pt, step_00000004.pt" in dry, dry
    again = Trainer(config, World(0, 1, 0, "cpu"), TrainOptions(resume="never"))

    def killed(batches):
        raise KeyboardInterrupt

    again._train_step = killed
    with pytest.raises(CancelledError, match="no checkpoint was written yet"):
        again.fit()
    assert list((run / "checkpoints").iterdir()) == [] and not (run / "summary.json").exists()
    assert resume_point("auto", run) is None  # the same command starts over, as the message says
    # Backups without a latest.pt (deleted by hand) are not removed unasked: the way on is named.
    Trainer(config, World(0, 1, 0, "cpu"), TrainOptions()).fit()
    (run / "checkpoints" / "latest.pt").unlink()
    with pytest.raises(InputError, match="--resume .*step_00000004.pt, or start over with --resume never"):
        resume_point("auto", run)


def test_latest_is_never_older_than_a_backup(tmp_path, store):
    # A resume continues from latest.pt: with backups at steps that are not save steps, a run
    # stopped after a backup continued from the older latest.pt, losing the steps in between.
    from arrows import checkpoint
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import CancelledError
    from arrows.train import Trainer, TrainOptions

    config = load_config(write_config(tmp_path / "c.json", store, run_name="backups", steps_to_train=8, save_every=4, backup_every=3, step_log=1))
    trainer = Trainer(config, World(0, 1, 0, "cpu"), TrainOptions())
    train_step = trainer._train_step

    def stopped_after_step_3(batches):
        if trainer.step == 3:
            raise KeyboardInterrupt
        return train_step(batches)

    trainer._train_step = stopped_after_step_3
    with pytest.raises(CancelledError, match="the checkpoint of step 3 "):
        trainer.fit()
    ckpts = tmp_path / "runs" / "backups" / "checkpoints"
    assert checkpoint.load(ckpts / "latest.pt")["step"] == 3 and (ckpts / "step_00000003.pt").exists()


def test_generate_begins_with_the_bos_of_training_when_the_data_is_gone(tmp_path, monkeypatch):
    # The run records its windows' BOS. Without it, a run whose data was moved away (its config
    # pointed at a copy of the tokenizer, as the error asks) began generation with the tokenizer's
    # <|endoftext|> instead of the --bos its store was made with, building the whole Rust
    # tokenizer to learn that (seconds for a vocabulary of 100k+).
    import shutil

    import arrows.generate as generate

    (tmp_path / "t.txt").write_text(random_text(5, 40_000), encoding="utf-8")
    arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "s", "--tokenizer", "bytes", "--bos", "a")
    model = {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16}
    cfg = write_config(tmp_path / "c.json", tmp_path / "s", model=model, run_name="bos", steps_to_train=2, sample_every=0)
    arrows("train", cfg, "--device", "cpu")
    run = tmp_path / "runs" / "bos"
    shutil.copy(tmp_path / "s" / "tokenizer.json", run / "tokenizer.json")
    shutil.rmtree(tmp_path / "s")
    config = json.loads((run / "config.json").read_text())
    config["training_params"]["tokenizer_path"] = str(run / "tokenizer.json")
    (run / "config.json").write_text(json.dumps(config))

    starts = []
    real_load_run = generate.load_run

    def recording(run_dir, checkpoint=None):
        model, cfg, tok = real_load_run(run_dir, checkpoint)
        real = model.generate
        model.generate = lambda start, *a, **kw: (starts.append(start[0].tolist()), real(start, *a, **kw))[1]
        return model, cfg, tok

    monkeypatch.setattr(generate, "load_run", recording)
    monkeypatch.setattr("arrows._arrows.tokenizer_bos_id", lambda json: pytest.fail("built the tokenizer to learn its BOS"))
    generate.generate_text(run, "b", tokens=2)
    assert starts == [[ord("a") + 1, ord("b") + 1]]  # bytes: id = byte + 1


def test_generate_needs_only_the_run_folder(tmp_path):
    # A run folder copied off a cluster, or whose data was deleted: generate needed the data or a
    # tokenizer_path set by hand in config.json; the run now keeps a copy of its tokenizer.
    import shutil

    (tmp_path / "t.txt").write_text(random_text(6, 40_000), encoding="utf-8")
    arrows("tokenize", tmp_path / "t.txt", "--out", tmp_path / "s", "--vocab-size", "300")
    model = {"vocab_size": 300, "n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16}
    cfg = write_config(tmp_path / "c.json", tmp_path / "s", model=model, run_name="alone", steps_to_train=2, sample_every=0)
    arrows("train", cfg, "--device", "cpu")
    run = tmp_path / "runs" / "alone"
    with_data = arrows("generate", run, "--prompt", "the", "-n", "20", "--seed", "3").stdout
    moved = tmp_path / "elsewhere" / "alone"
    shutil.copytree(run, moved)
    shutil.rmtree(tmp_path / "s")
    alone = arrows("generate", moved, "--prompt", "the", "-n", "20", "--seed", "3").stdout
    assert alone == with_data and len(alone) > len("the")


def test_more_run_interrupted_and_given_again_ends_where_it_would_have(tmp_path, store):
    # --more N counted from each new checkpoint: a --more run killed (or preempted, and requeued with
    # the same command) trained N beyond wherever it had saved, its schedule laid over another total.
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import CancelledError
    from arrows.train import Trainer, TrainOptions

    def run(name, more, stop_at=None):
        path = write_config(tmp_path / "c.json", store, run_name=name, steps_to_train=2, save_every=2, step_log=1, valid_every=100)
        cfg = json.loads(path.read_text())
        cfg["optim_params"]["oscil_steps"] = None  # the cosine spans the whole run: its total matters
        path.write_text(json.dumps(cfg))
        config = load_config(path)
        trainer = Trainer(config, World(0, 1, 0, "cpu"), TrainOptions(more=more))
        if stop_at is not None:
            train_step = trainer._train_step

            def stopped(batches):
                if trainer.step == stop_at:
                    raise KeyboardInterrupt
                return train_step(batches)

            trainer._train_step = stopped
        return trainer

    for name in ("whole", "stopped"):
        run(name, None).fit()
    assert run("whole", 4).fit()["steps"] == 6
    with pytest.raises(CancelledError, match="the checkpoint of step 4 .*run the same command to continue"):
        run("stopped", 4, stop_at=5).fit()
    again = run("stopped", 4)
    assert again.total_steps == 6
    assert again.fit()["steps"] == 6
    assert losses(tmp_path / "runs" / "stopped") == losses(tmp_path / "runs" / "whole")
    assert run("stopped", 4).total_steps == 10  # once finished, --more N is N beyond
    dry = arrows("train", tmp_path / "c.json", "--device", "cpu", "--more", "4", "--dry-run").stdout
    assert "plan         10 steps" in dry, dry


def test_the_config_trained_under_is_kept_when_a_changed_resume_is_resumed_again(tmp_path, store):
    # A resume under a new lr that stopped before its next save, then resumed again: config.json
    # (already the new one) was moved over config.until_step_N.json, and the lr the run had trained
    # under until step N was lost.
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import CancelledError
    from arrows.train import Trainer, TrainOptions

    path = write_config(tmp_path / "c.json", store, run_name="kept", steps_to_train=2, save_every=2)
    Trainer(load_config(path), World(0, 1, 0, "cpu"), TrainOptions()).fit()
    run = tmp_path / "runs" / "kept"
    trained_under = (run / "config.json").read_text()
    changed = json.loads(path.read_text())
    changed["optim_params"]["lr"] = 1e-3
    path.write_text(json.dumps(changed))
    stopped = Trainer(load_config(path), World(0, 1, 0, "cpu"), TrainOptions(more=4))

    def interrupted(batches):
        raise KeyboardInterrupt

    stopped._train_step = interrupted
    with pytest.raises(CancelledError):
        stopped.fit()
    Trainer(load_config(path), World(0, 1, 0, "cpu"), TrainOptions(more=4)).fit()
    assert (run / "config.until_step_2.json").read_text() == trained_under
    assert json.loads((run / "config.json").read_text())["optim_params"]["lr"] == 1e-3


def test_a_run_resumed_from_a_backup_continues_from_it_after_an_interruption(tmp_path, store):
    # --resume step_N.pt drops the records after step N; the newer latest.pt stayed, and the next
    # `arrows train` (after an interruption before the next save) continued from it, past them.
    from arrows import checkpoint
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import CancelledError
    from arrows.resume import resume_point
    from arrows.train import Trainer, TrainOptions

    config = load_config(write_config(tmp_path / "c.json", store, run_name="back", steps_to_train=6, save_every=2, backup_every=2, step_log=1))
    Trainer(config, World(0, 1, 0, "cpu"), TrainOptions()).fit()
    run = tmp_path / "runs" / "back"
    trainer = Trainer(config, World(0, 1, 0, "cpu"), TrainOptions(resume=str(run / "checkpoints" / "step_00000002.pt")))

    def interrupted(batches):
        raise KeyboardInterrupt

    trainer._train_step = interrupted
    with pytest.raises(CancelledError, match="the checkpoint of step 2 "):
        trainer.fit()
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert checkpoint.load(resume_point("auto", run))["step"] == 2


def test_a_run_resumes_from_its_data_moved_elsewhere(tmp_path, store):
    # The checkpoint named its data by path alone: data moved (or copied to a node's local disk, at
    # another path each job) could not be resumed from. Another store is still refused.
    import shutil

    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.errors import InputError
    from arrows.train import Trainer, TrainOptions

    shutil.copytree(store, tmp_path / "here")
    path = write_config(tmp_path / "c.json", tmp_path / "here", run_name="moved", steps_to_train=2, save_every=2)
    Trainer(load_config(path), World(0, 1, 0, "cpu"), TrainOptions()).fit()
    (tmp_path / "here").rename(tmp_path / "there")
    moved = write_config(tmp_path / "c.json", tmp_path / "there", run_name="moved", steps_to_train=4, save_every=2)
    trainer = Trainer(load_config(moved), World(0, 1, 0, "cpu"), TrainOptions())
    assert trainer.step == 2 and any(c.startswith("training_params.dataset_folder: ") for c in trainer.changed_settings)
    assert trainer.fit()["steps"] == 4

    (tmp_path / "o.txt").write_text(random_text(7, 100_000), encoding="utf-8")
    arrows("tokenize", tmp_path / "o.txt", "--out", tmp_path / "other", "--vocab-size", "512")
    other = write_config(tmp_path / "c.json", tmp_path / "other", run_name="moved", steps_to_train=6, save_every=2)
    with pytest.raises(InputError, match=r"dataset_folder: .*\(not the data it trained on\)"):
        Trainer(load_config(other), World(0, 1, 0, "cpu"), TrainOptions())
    # Other data at the run's own path (tokenized again with --force) is refused too: the path alone
    # matched, and the run continued on data it had not trained on.
    arrows("tokenize", tmp_path / "o.txt", "--out", tmp_path / "there", "--vocab-size", "512", "--force")
    again = write_config(tmp_path / "c.json", tmp_path / "there", run_name="moved", steps_to_train=6, save_every=2)
    with pytest.raises(InputError, match=r"dataset_folder: .*there' holds other data than it trained on"):
        Trainer(load_config(again), World(0, 1, 0, "cpu"), TrainOptions())


def test_generate_names_a_damaged_run_config(tmp_path):
    # config.json is where generate's own error asks to set tokenizer_path: edited by hand, or cut,
    # it ended in a JSONDecodeError traceback, or in problems of "config (from a dict)".
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"")  # never read: the config is checked first
    for text, needle in (('{"model_params": {"vocab_size": 5', "not valid JSON"), ('{"model_params": {}}', "training_params: missing section")):
        (run / "config.json").write_text(text)
        proc = arrows("generate", run, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{run / 'config.json'}: " in proc.stderr and needle in proc.stderr, proc.stderr


def test_a_cooldown_schedule_that_does_not_fit_one_epoch_is_refused(tmp_path, store):
    # The config checks warmup + cooldown against steps_to_train; with steps_to_train null (one
    # epoch) or --more the run trained its whole length in the warmup, silently.
    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.train import TrainOptions, train

    path = write_config(tmp_path / "c.json", store, run_name="cool", steps_to_train=None, cooldown_finish=0.2)
    cfg = json.loads(path.read_text())
    cfg["optim_params"]["warmup_steps"] = 100_000  # one epoch is about 2,000 steps
    path.write_text(json.dumps(cfg))
    for opts in (TrainOptions(device="cpu", dry_run=True), TrainOptions(device="cpu", dry_run=True, more=10)):
        with pytest.raises(InputError, match=r"optim_params.warmup_steps: 100000 warmup steps and a cooldown of \d+ steps .*do not fit"):
            train(load_config(path), opts)
    with pytest.raises(InputError, match="do not fit"):
        train(load_config(path), TrainOptions(device="cpu"))
    assert not (tmp_path / "runs" / "cool" / "checkpoints").exists()


class _FillingDisk:
    """A file of a disk that fills after `room` writes: a failed write stays in the buffer, and
    flushing or closing the file tries it again (and fails again), as a real buffered file does.
    The error carries no file name, as the kernel's ENOSPC does not."""

    def __init__(self, real, room: int):
        self.real, self.room, self.failed = real, room, False

    def _full(self):
        import errno

        self.failed = True
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, text):
        if self.room <= 0:
            self._full()
        self.room -= 1
        return self.real.write(text)

    def flush(self):
        self.real.flush()
        if self.failed:
            self._full()

    def close(self):
        self.real.close()
        if self.failed:
            self._full()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize("log", ["metrics.jsonl", "samples.jsonl", "tensorboard"])
def test_a_disk_that_fills_while_the_run_logs_is_named(tmp_path, store, monkeypatch, capfd, log):
    # The disk fills while a log is written (the 5th record of metrics.jsonl or of TensorBoard's, or
    # the first sample). The message was only "No space left on device": samples.jsonl's and
    # TensorBoard's writes carried no file name, and closing metrics.jsonl in the clean-up failed
    # again without one, replacing the named error.
    import builtins
    import errno
    import threading

    from tensorboard.summary.writer.record_writer import RecordWriter

    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    real_open, written = builtins.open, {}

    def filling_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(log) and "a" in mode:
            room = written.setdefault(log, 4 if log == "metrics.jsonl" else 0)
            return _FillingDisk(f, room)
        return f

    monkeypatch.setattr(builtins, "open", filling_open)
    # TensorBoard writes its event file on a thread of its own, which printed the failure's traceback
    # there; its writer raises it again at its next call.
    real_write, events = RecordWriter.write, []

    def filling_write(self, data):
        events.append(data)
        if log == "tensorboard" and len(events) > 4 * 5:  # a record is 5 scalars
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(RecordWriter, "write", filling_write)
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)  # where a thread's traceback is printed
    cfg = write_config(tmp_path / "c.json", store, run_name="full", steps_to_train=12, save_every=100, valid_every=6, step_log=1,
                       sample_every=3, sample_tokens=4, backup_every=None)
    trainer = Trainer(load_config(cfg), World(0, 1, 0, "cpu"), TrainOptions(resume="never"))
    with pytest.raises(OSError) as caught:
        trainer.fit()
    assert caught.value.filename == str(tmp_path / "runs" / "full" / log), caught.value
    assert "No space left on device" in str(caught.value)
    assert thread_errors == [] and "Traceback" not in capfd.readouterr().err


def test_a_full_disk_leaves_the_run_config_whole(tmp_path, store, monkeypatch):
    # config.json was rewritten in place as a run resumed: a disk full at that moment left it empty
    # (and `arrows generate` reads it), with an error that did not name it.
    import io

    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    cfg = write_config(tmp_path / "c.json", store, run_name="r", steps_to_train=3, save_every=3, valid_every=3, backup_every=None)
    Trainer(load_config(cfg), World(0, 1, 0, "cpu"), TrainOptions(resume="never")).fit()
    run = tmp_path / "runs" / "r"
    written = (run / "config.json").read_bytes()

    real_open = io.open

    def filling_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FillingDisk(f, 0) if Path(file).name.startswith("config.json") and "w" in mode else f

    monkeypatch.setattr(io, "open", filling_open)
    with pytest.raises(OSError) as caught:
        Trainer(load_config(cfg), World(0, 1, 0, "cpu"), TrainOptions(more=3)).fit()
    monkeypatch.undo()
    assert caught.value.filename == str(run / "config.json") and "No space left" in str(caught.value), caught.value
    assert (run / "config.json").read_bytes() == written
    assert not list(run.glob("*.tmp"))


def test_a_cpu_run_whose_model_cannot_fit_is_refused_before_it_starts(tmp_path, store, monkeypatch):
    # An LSTM of hidden size 100,000 (80 billion parameters) ended in torch's allocator traceback
    # while being built, --dry-run included; one the system lets allocate is killed at step 1.
    import arrows.preflight as preflight
    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.models import count_parameters
    from arrows.train import TrainOptions, train

    model = {"model_type": "lstm", "n_layers": 1, "embed_dim": 100_000, "attn_length": 32, "dropout": 0.0, "embd_dropout": None}
    cfg = load_config(write_config(tmp_path / "c.json", store, run_name="huge", model=model))
    parameters = count_parameters(cfg.model_dict())
    assert parameters == 80_103_400_000
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 64 << 30)
    for nproc in (1, 2):
        with pytest.raises(InputError) as refused:
            train(cfg, TrainOptions(device="cpu", nproc=nproc, dry_run=True))
        message = str(refused.value)
        assert "80,103,400,000 parameters" in message and f"{parameters * 16 * nproc / 1e9:.1f} GB" in message and "smaller model" in message
        assert ("--nproc" in message) == (nproc > 1)
    # A model that fits is not refused, nor one where the memory cannot be read (not Linux).
    small = load_config(write_config(tmp_path / "s.json", store, run_name="small"))
    assert train(small, TrainOptions(device="cpu", dry_run=True))["planned_steps"] == 40
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: None)
    assert train(cfg, TrainOptions(device="cpu", dry_run=True))["parameters"] == parameters
    assert not (tmp_path / "runs" / "huge").exists()


def test_config_notes_are_said_when_training_not_only_by_dry_run(tmp_path, store):
    # A setting the run ignores (here the reference's fast_scrambling) was said by --dry-run only:
    # `arrows train` itself trained without a word about it.
    cfg = write_config(tmp_path / "c.json", store, run_name="noted", steps_to_train=2, fast_scrambling=True)
    proc = arrows("train", cfg, "--device", "cpu")
    assert "note: training_params.fast_scrambling has no effect" in proc.stderr, proc.stderr
    dry = arrows("train", cfg, "--device", "cpu", "--dry-run")
    assert "note: training_params.fast_scrambling has no effect" in dry.stdout, dry.stdout


def test_a_backup_missed_by_a_kill_between_the_two_saves_is_made_on_resume(tmp_path, store, monkeypatch):
    # At a backup step the run writes latest.pt, then step_N.pt. Killed between the two (kill -9,
    # the out-of-memory killer, a node lost), it resumed from latest.pt at step N and went on: the
    # backup of step N was never written.
    from arrows import checkpoint
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    class Killed(BaseException):
        pass

    real_save = checkpoint.save

    def dying_save(path, payload):
        if Path(path).name.startswith("step_"):
            raise Killed
        real_save(path, payload)

    cfg = load_config(write_config(tmp_path / "c.json", store, run_name="r", steps_to_train=6, save_every=100, backup_every=3, valid_every=100))
    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(Killed):
        Trainer(cfg, World(0, 1, 0, "cpu"), TrainOptions(resume="never")).fit()
    monkeypatch.undo()
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    assert checkpoint.saved_step(ckpts / "latest.pt") == 3 and not (ckpts / "step_00000003.pt").exists()
    Trainer(cfg, World(0, 1, 0, "cpu"), TrainOptions()).fit()
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.pt", "step_00000003.pt", "step_00000006.pt"]
    assert checkpoint.load(ckpts / "step_00000003.pt")["step"] == 3


def test_an_aggregate_larger_than_an_epoch_names_the_key(tmp_path, store):
    # It said "one epoch has 770 batches, fewer than aggregate=100000": no key, nothing to do.
    cfg = write_config(tmp_path / "c.json", store, run_name="agg", aggregate=100_000)
    proc = arrows("train", cfg, "--device", "cpu", "--dry-run", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "training_params.aggregate 100000" in proc.stderr and "lower aggregate or batch_size" in proc.stderr, proc.stderr


def test_a_batch_larger_than_the_split_names_the_keys(tmp_path, store):
    # The loader's own words were "lower the batch size", which is no key of a config.
    cfg = write_config(tmp_path / "c.json", store, run_name="big", batch_size=1_000_000)
    proc = arrows("train", cfg, "--device", "cpu", "--dry-run", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "fewer than one batch of 1000000" in message and "training_params.batch_size" in message, proc.stderr


def test_a_resume_under_another_weight_decay_and_betas_uses_them(tmp_path, store):
    # They are settings a resume may change, and the change was said ("continuing with changed
    # settings: optim_params.weight_decay: 0.01 → 0.5"), but the optimizer kept the checkpoint's:
    # the losses were the unchanged run's.
    from arrows import checkpoint
    from arrows.config import load_config
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    def run(name, **optim):
        path = write_config(tmp_path / f"{name}.json", store, run_name=name, steps_to_train=3, save_every=3, valid_every=100, backup_every=None)
        cfg = json.loads(path.read_text())
        cfg["optim_params"].update(optim)
        path.write_text(json.dumps(cfg))
        return load_config(path)

    first = run("r")
    Trainer(first, World(0, 1, 0, "cpu"), TrainOptions(resume="never")).fit()
    changed = run("r", weight_decay=0.5, betas=[0.5, 0.6])
    trainer = Trainer(changed, World(0, 1, 0, "cpu"), TrainOptions(more=3))
    assert any("weight_decay" in c for c in trainer.changed_settings)
    trainer.fit()
    groups = checkpoint.load(tmp_path / "runs" / "r" / "checkpoints" / "latest.pt")["optimizer"]["param_groups"]
    assert [(g["weight_decay"], tuple(g["betas"])) for g in groups] == [(0.5, (0.5, 0.6))] * len(groups)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_nproc_on_a_cuda_machine_says_to_choose_cpu_or_gpus(tmp_path, store, monkeypatch, device):
    # --nproc is for CPU processes (its help says so): on a machine with one GPU, `--nproc 2` gave
    # each process the GPU of its rank, and process 1 crashed on a GPU that is not there.
    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.train import TrainOptions, train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = load_config(write_config(tmp_path / "c.json", store, run_name="n"))
    with pytest.raises(InputError, match=r"--nproc 2 starts processes on the CPU.*add --device cpu.*--gpus 0,1"):
        train(cfg, TrainOptions(device=device, nproc=2, dry_run=True))
    assert train(cfg, TrainOptions(device="cpu", nproc=2, dry_run=True))["devices"] == ["cpu", "cpu"]


def test_a_resume_between_two_logged_records_logs_the_uninterrupted_losses(tmp_path, store):
    # Resumed at step 6 with step_log 5, the record of step 10 averaged steps 7-10 instead of
    # 6-10: the steps since the last record are now carried over by the checkpoint.
    import shutil

    cfg = write_config(tmp_path / "c.json", store, run_name="whole", steps_to_train=10, step_log=5, save_every=3, backup_every=3, valid_every=100)
    arrows("train", cfg, "--device", "cpu")
    whole = tmp_path / "runs" / "whole"
    resumed = tmp_path / "runs" / "resumed"
    shutil.copytree(whole, resumed)
    shutil.copy(resumed / "checkpoints" / "step_00000006.pt", resumed / "checkpoints" / "latest.pt")
    (resumed / "checkpoints" / "step_00000009.pt").unlink()
    arrows("train", write_config(tmp_path / "r.json", store, run_name="resumed", steps_to_train=10, step_log=5, save_every=3, backup_every=3,
                                 valid_every=100), "--device", "cpu")
    logged = [[(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run) if "loss" in r] for run in (whole, resumed)]
    assert [step for step, _, _ in logged[0]] == [5, 10] and logged[1] == logged[0]


def test_a_data_error_of_the_loader_is_not_said_to_be_about_the_batches(tmp_path):
    # Every loader error got "(the config's batch_size, attn_length and valid_fraction decide the
    # batches)", also one about the data itself: an .h5 whose bos_id attribute is no id.
    import h5py

    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.train import make_loaders

    h5 = tmp_path / "tokens.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("tokens", data=np.arange(20_000, dtype=np.int32) % 200).attrs["bos_id"] = -1
    config = load_config(write_config(tmp_path / "c.json", h5, run_name="h5"))
    with pytest.raises(InputError) as caught:
        make_loaders(config, 0, 1)
    assert "'bos_id' attribute of 'tokens' is -1" in str(caught.value) and "decide the batches" not in str(caught.value)

