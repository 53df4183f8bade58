"""The CUDA paths: bf16 autocast, torch.compile, pinned-memory batches, FlexAttention and Triton
attention gradients (tests/test_triton_attention.py also runs its kernels on CUDA here),
the chunked head + loss, and training end to end. Skipped where no CUDA device is visible (every
CPU machine, CI included): run `pytest tests/test_cuda.py` on a GPU machine."""

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from conftest import arrows  # noqa: E402

from arrows.metrics import read as read_metrics  # noqa: E402
from arrows.models import build_model  # noqa: E402
from arrows.models.head_loss import chunked_head_loss  # noqa: E402


def _gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(model_type="gpt", vocab_size=1000, n_layers=2, n_heads=4, embed_dim=128, attn_length=64, dropout=0.0)
    return build_model({**cfg, **kw}).cuda()


def test_loader_batches_on_cuda_equal_cpu_batches(tmp_path):
    from arrows.loader import WindowLoader

    (tmp_path / "t.txt").write_text("the arrow of time " * 20_000)
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cpu = WindowLoader(tmp_path / "s", 64, 32, backward=True, seed=3)
    gpu = WindowLoader(tmp_path / "s", 64, 32, backward=True, seed=3, device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_loader_pins_no_more_than_the_batches_it_serves(tmp_path):
    """A split of fewer windows than batch_size: the pinned staging buffers were batch_size × L
    tokens each (here 3 × 2 × 100,000 × 64 int64 = 307 MB) for batches of a few rows."""
    from arrows.loader import WindowLoader

    (tmp_path / "t.txt").write_text("the arrow of time " * 200)
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cpu = WindowLoader(tmp_path / "s", 64, 100_000, seed=3, drop_last=False)
    gpu = WindowLoader(tmp_path / "s", 64, 100_000, seed=3, drop_last=False, device="cuda")
    for _ in range(2):  # the buffers are reused from one epoch to the next
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
            assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
    pinned = [buf for buf, _ in gpu._staging if buf is not None]
    assert pinned and all(buf.shape == (2, cpu.windows, 64) and buf.is_pinned() for buf in pinned)


def _compiled_bf16_against_plain(model, plain, loss_rtol):
    """`model` compiled and `plain` (its weights copied in) run one batch in bf16 and back-propagate:
    the losses within `loss_rtol`, every gradient close and in its parameter's dtype. Returns the
    compiled model's logits."""
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 1000, (8, 64), device="cuda")
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, a = compiled(idx, idx)
        _, b = plain(idx, idx)
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < loss_rtol * b.item()
    for (n, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert p.grad.dtype == p.dtype and torch.allclose(p.grad.float(), q.grad.float(), atol=5e-2, rtol=5e-2), n
    return logits


@pytest.mark.parametrize("attention", ["sdpa", "flex", "triton"])
def test_compiled_bf16_attention_matches_plain(attention):
    _compiled_bf16_against_plain(_gpt(attention_impl=attention), _gpt(attention_impl="plain"), 0.02)


def test_compiled_bf16_chunked_head_matches_plain():
    # On CUDA the chunked head runs arrows' Triton cross-entropy kernel on a vocabulary padded to
    # 1024 (from 1000), outside the compiled graph of the body.
    from arrows.models.head_loss import rows_kernel_for
    from arrows.models.triton_cross_entropy import softmax_xent_rows_

    assert rows_kernel_for(torch.device("cuda")) is softmax_xent_rows_
    assert _compiled_bf16_against_plain(_gpt(head_loss="chunked"), _gpt(), 0.01) is None  # no logits


def test_triton_attention_compiles_into_one_graph_with_dropout():
    # torch.compile must trace through arrows' kernels (triton_op), not break the graph at them.
    pytest.importorskip("triton")
    model = _gpt(attention_impl="triton", dropout=0.1).train()
    idx = torch.randint(0, 1000, (4, 64), device="cuda")
    explanation = torch._dynamo.explain(model)(idx, idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, fullgraph=True)
    torch.manual_seed(5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = compiled(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_chunked_head_loss_saves_memory_and_matches():
    n, d, v = 16384, 768, 50257
    h = torch.randn(n, d, device="cuda", requires_grad=True)
    w = (torch.randn(v, d, device="cuda") * 0.02).requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda")

    def peak(fn):
        h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn()
        loss.backward()
        torch.cuda.synchronize()
        return loss.item(), torch.cuda.max_memory_allocated() - base

    plain_loss, plain_peak = peak(lambda: torch.nn.functional.cross_entropy((h @ w.t()).float(), t))
    plain_grad = h.grad.clone()
    chunked_loss, chunked_peak = peak(lambda: chunked_head_loss(h, w, t))
    assert abs(plain_loss - chunked_loss) < 1e-2 * plain_loss
    assert torch.allclose(plain_grad, h.grad, atol=1e-3, rtol=5e-2)
    assert chunked_peak < 0.5 * plain_peak, (chunked_peak, plain_peak)


def test_train_on_cuda_end_to_end_and_resume(tmp_path):
    (tmp_path / "t.txt").write_text("forwards and backwards, the same text. " * 30_000)
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cfg = {
        "model_params": {"vocab_size": 257, "n_layers": 2, "n_heads": 4, "embed_dim": 128, "attn_length": 64, "dropout": 0.0, "head_loss": "chunked"},
        "training_params": {"dataset_folder": str(tmp_path / "s"), "batch_size": 64, "steps_to_train": 60, "save_every": 30,
                            "step_log": 10, "valid_every": 30, "valid_batches": 4, "save_loc": str(tmp_path / "runs"), "run_name": "r"},
        "optim_params": {"lr": 1e-3, "warmup_steps": 10},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = arrows("train", tmp_path / "cfg.json", "--device", "cuda")
    assert "trained to step 60" in proc.stdout
    # attention "auto" (the default) measured the kernels at this shape and said which it took
    assert "attention auto at B=64 H=4 T=64 D=32" in proc.stderr
    chosen = [r["attention"] for r in read_metrics(tmp_path / "runs" / "r") if "attention" in r]
    assert len(chosen) == 1 and ("using sdpa" in chosen[0] or "using triton" in chosen[0])
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["valid_loss"] < 1.0  # a repeated sentence: learned
    out = arrows("train", tmp_path / "cfg.json", "--device", "cuda", "--more", "10").stdout
    assert "trained to step 70" in out


def test_study_side_by_side_on_one_gpu(tmp_path):
    arrows("synth", "reversible", "--out", tmp_path / "w.txt", "--lines", "20000", "--walk-length", "11")
    arrows("tokenize", tmp_path / "w.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cfg = {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 64, "attn_length": 12, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp_path / "s"), "batch_size": 64, "steps_to_train": 300, "stride": 12,
                            "valid_fraction": 0.1, "save_loc": str(tmp_path / "runs")},
        "optim_params": {"lr": 3e-3, "warmup_steps": 20},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    arrows("study", tmp_path / "cfg.json", "--parallel", "--device", "cuda", "--out", tmp_path / "study")
    report = json.loads((tmp_path / "study" / "report" / "report.json").read_text())
    assert abs(report["summary"]["delta"]) < 0.01


@pytest.mark.parametrize("model_type", ["gru", "lstm"])
def test_compiled_rnn_trains_on_cuda(tmp_path, model_type):
    # On CUDA the RNNs are compiled too: dynamo leaves the cuDNN GRU/LSTM to eager and compiles
    # the embedding and the head + loss around it.
    (tmp_path / "t.txt").write_text("forwards and backwards, the same text. " * 30_000)
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cfg = {
        "model_params": {"model_type": model_type, "vocab_size": 257, "n_layers": 2, "embed_dim": 128, "desired_attn_length": 64, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp_path / "s"), "batch_size": 64, "steps_to_train": 150, "step_log": 50, "valid_every": 150,
                            "valid_batches": 4, "save_loc": str(tmp_path / "runs"), "run_name": "r"},
        "optim_params": {"lr": 3e-3, "warmup_steps": 10},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert "trained to step 150" in arrows("train", tmp_path / "cfg.json", "--device", "cuda").stdout
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["valid_loss"] < 1.0  # a repeated sentence: learned


@pytest.mark.alone
def test_real_cuda_out_of_memory_names_the_settings_to_lower(tmp_path):
    # A batch that cannot fit (8192 windows of 1024 tokens, width 1024): the run stops with the
    # settings to lower, not a traceback, whether the memory runs out while "auto" measures the
    # attention kernels or in the first step.
    (tmp_path / "t.txt").write_text("the arrow of time " * 700_000)  # 12.6 MB: enough windows for the batch
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cfg = {
        "model_params": {"vocab_size": 257, "n_layers": 2, "n_heads": 8, "embed_dim": 1024, "attn_length": 1024, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp_path / "s"), "batch_size": 8192, "steps_to_train": 5, "valid_fraction": 0.01,
                            "save_loc": str(tmp_path / "runs"), "run_name": "r"},
        "optim_params": {"lr": 1e-4},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = arrows("train", tmp_path / "cfg.json", "--device", "cuda", "--no-compile", check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "CUDA out of memory at training_params.batch_size 8192" in said, said[-3000:]
    assert 'head_loss to "chunked"' in said and "Traceback" not in said


def test_plain_head_runs_over_the_padded_vocabulary():
    # 1000 classes: the product is made over 1024 (aligned rows for cuBLAS), the logits are a view
    # without the padding, and the compiled bf16 model gives the unpadded product's logits.
    model = _gpt()
    idx = torch.randint(0, 1000, (8, 64), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model.logits(idx)
        unpadded = model.lm_head(model.hidden(idx))
        compiled, _ = torch.compile(model)(idx, idx)
    assert eager.shape == compiled.shape == (8, 64, 1000) and eager.stride(-2) == 1024
    assert torch.allclose(eager.float(), unpadded.float(), atol=2e-2, rtol=2e-2)
    assert torch.allclose(compiled.float(), unpadded.float(), atol=2e-2, rtol=2e-2)


def test_resume_restores_the_rng_of_the_gpu_it_trains_on():
    # The checkpoint holds the generator of the GPU its process trained on, restored to the GPU the
    # resumed process trains on, whatever its number. A checkpoint of an earlier arrows holds one
    # state per GPU its process could see (8 here): restoring them all failed where fewer are
    # visible (IndexError, tuple index out of range); the GPU's own number picks its state.
    from arrows import checkpoint

    device = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.cuda.manual_seed_all(3)
    state = checkpoint.rng_state(device)
    expected = torch.rand(4, device=device)
    checkpoint.set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), expected)
    state["cuda"] = [state["cuda"]] * 8
    checkpoint.set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), expected)


def test_auto_attention_leaves_the_cuda_random_stream_as_it_found_it():
    # The trainer measures after a resume restored the checkpoint's random states; the timed
    # dropout (SDPA's and the Triton kernels' seeds) draws from the CUDA generator.
    from arrows.models.attention_choice import choose_attention

    torch.cuda.manual_seed(11)
    state = torch.cuda.get_rng_state()
    choose_attention(2, 2, 64, 32, 0.1, "cuda", reps=1)
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_sigterm_stops_a_cuda_run_after_its_step_with_a_checkpoint_of_it(tmp_path):
    # On CUDA a step's loss, which carries the stop request, is read while the next step runs:
    # the run stops one step later than on a CPU, and must still save the step it stopped at.
    import signal
    import subprocess

    from conftest import ARROWS

    from arrows import checkpoint

    (tmp_path / "t.txt").write_text("forwards and backwards, the same text. " * 30_000)
    arrows("tokenize", tmp_path / "t.txt", "--tokenizer", "bytes", "--out", tmp_path / "s")
    cfg = {
        "model_params": {"vocab_size": 257, "n_layers": 2, "n_heads": 4, "embed_dim": 128, "attn_length": 64, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp_path / "s"), "batch_size": 64, "steps_to_train": 1_000_000, "save_every": 100_000,
                            "step_log": 1, "valid_every": 100_000, "save_loc": str(tmp_path / "runs"), "run_name": "r"},
        "optim_params": {"lr": 1e-3, "warmup_steps": 10},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([str(ARROWS), "train", str(tmp_path / "cfg.json"), "--device", "cuda", "--no-compile"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("step 30/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    err = " ".join(err.split())
    step = checkpoint.saved_step(tmp_path / "runs" / "r" / "checkpoints" / "latest.pt")
    assert proc.returncode == 130 and step is not None and step >= 30, err[-2000:]
    assert f"interrupted by SIGTERM at step {step}; its checkpoint is saved in" in err and "Traceback" not in err, err[-2000:]
    assert f"from step {step}" in arrows("train", tmp_path / "cfg.json", "--device", "cuda", "--dry-run").stdout
