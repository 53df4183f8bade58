"""arrows' own Triton attention kernels against plain attention: outputs and gradients, ragged
lengths, head sizes that are not powers of two, strided heads, dropout with the kernels' own mask,
and the GPT built on them. Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1,
set here before they are defined); with one, on CUDA."""

import json
import math

import pytest
from conftest import arrows, triton_kernel_test_device

torch = pytest.importorskip("torch")

DEVICE = triton_kernel_test_device()
pytest.importorskip("triton")
from arrows.models import triton_attention as ta  # noqa: E402
from arrows.models import build_model  # noqa: E402
from arrows.models.gpt import split_heads  # noqa: E402

# Tolerance of the kernels' fp32 results against plain attention's. On a GPU their fp32 dots run
# in tf32 on the tensor cores, and Triton hands Hopper's wgmma the fp32 operands as they are, so
# they are truncated to tf32's 10 mantissa bits, not rounded (no cvt.rna in the PTX it makes for
# sm_90). Emulating that truncation on these tests' own data gives errors up to 6.8e-3 in outputs
# of magnitude 3 to 4.5, and 8e-3 in gradients: 2e-3, the rounded-tf32 figure, failed them.
# Within 1e-2 they still catch a kernel error (a wrong mask or block is off by 1e-1 and more).
FP32_TOL = 1e-5 if DEVICE == "cpu" else 1e-2


def plain_attention(q, k, v, keep=None, p_drop=0.0):
    """The reference's attention written out, in fp32; `keep` (B·H, T, T) applies a dropout mask."""
    B, H, T, D = q.shape
    att = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(D)
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf")).softmax(-1)
    if keep is not None:
        att = att * keep.view(B, H, T, T) / (1 - p_drop)
    return att @ v.float()


def heads_of_one_projection(B, H, T, D, dtype=torch.float32, seed=0):
    """q, k, v as the GPT makes them: strided views of one (B, T, 3·H·D) projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(DEVICE, dtype).requires_grad_()
    return (qkv, *split_heads(qkv, H))


def grads_of(fn, qkv, q, k, v, upstream):
    qkv.grad = None
    out = fn(q, k, v)
    (out.float() * upstream).sum().backward()
    return out, qkv.grad.clone()


@pytest.mark.parametrize(
    "B, H, T, D",
    [
        (2, 3, 37, 16),  # T not a multiple of the blocks
        (1, 2, 50, 38),  # head size 38 (GPT small: 380/10), padded to 64 inside the kernels
        (2, 2, 64, 64),  # T a multiple of the blocks, GPT-2's head size
        (1, 1, 1, 32),  # a single position
        (1, 2, 23, 128),
    ],
)
def test_forward_and_gradients_equal_plain_attention(B, H, T, D):
    qkv, q, k, v = heads_of_one_projection(B, H, T, D)
    upstream = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out, grad = grads_of(ta.causal_attention, qkv, q, k, v, upstream)
    ref, ref_grad = grads_of(plain_attention, qkv, q, k, v, upstream)
    tol = FP32_TOL
    assert out.shape == (B, H, T, D)
    assert torch.allclose(out, ref, atol=tol), (out - ref).abs().max()
    assert torch.allclose(grad, ref_grad, atol=tol * 4), (grad - ref_grad).abs().max()


def test_contiguous_inputs_and_independent_tensors():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 30, 32, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    out = ta.causal_attention(q, k, v)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    plain_attention(q, k, v).sum().backward()
    assert torch.allclose(out, plain_attention(q, k, v), atol=FP32_TOL)
    for mine, ref in zip(grads, (q.grad, k.grad, v.grad)):
        assert torch.allclose(mine, ref, atol=FP32_TOL * 4)


def test_output_is_laid_out_for_merging_heads():
    _, q, k, v = heads_of_one_projection(2, 3, 10, 16)
    out = ta.causal_attention(q, k, v)
    B, H, T, D = out.shape
    assert out.transpose(1, 2).is_contiguous()  # so .transpose(1, 2).contiguous().view(B, T, C) copies nothing


def test_half_precision_forward():
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter computes through numpy, which has no bf16
    _, q, k, v = heads_of_one_projection(2, 2, 40, 32, dtype=dtype)
    out = ta.causal_attention(q, k, v)
    assert out.dtype == dtype
    assert torch.allclose(out.float(), plain_attention(q, k, v), atol=2e-2)


@pytest.mark.parametrize("p_drop", [0.1, 0.5])
def test_dropout_equals_plain_attention_with_the_kernels_mask(p_drop):
    B, H, T, D = 2, 2, 45, 16
    qkv, q, k, v = heads_of_one_projection(B, H, T, D, seed=3)
    seed = torch.tensor([12345], dtype=torch.int32, device=DEVICE)
    upstream = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out, grad = grads_of(lambda a, b, c: ta.attention_forward(a, b, c, seed, p_drop)[0], qkv, q, k, v, upstream)
    keep = ta.dropout_keep_mask(seed, B * H, T, p_drop)
    ref, ref_grad = grads_of(lambda a, b, c: plain_attention(a, b, c, keep, p_drop), qkv, q, k, v, upstream)
    tol = FP32_TOL
    assert torch.allclose(out, ref, atol=tol), (out - ref).abs().max()
    assert torch.allclose(grad, ref_grad, atol=tol * 4), (grad - ref_grad).abs().max()
    # The mask itself: about 1 - p kept, different for every head, and not the mask of another seed.
    assert abs(keep.float().mean().item() - (1 - p_drop)) < 0.02
    assert not torch.equal(keep[0], keep[1])
    assert not torch.equal(keep, ta.dropout_keep_mask(seed + 1, B * H, T, p_drop))


def test_dropout_follows_torchs_generator():
    _, q, k, v = heads_of_one_projection(1, 2, 33, 16)
    torch.manual_seed(7)
    a = ta.causal_attention(q, k, v, dropout_p=0.2)
    b = ta.causal_attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(7)
    again = ta.causal_attention(q, k, v, dropout_p=0.2)
    assert torch.equal(a, again)  # reproducible from the RNG state (which checkpoints save)
    assert not torch.equal(a, b)  # and a fresh mask on every call


def twin_gpts(attn_length: int, dropout: float, n_layers: int = 1, train: bool = False):
    """A GPT on the Triton kernels and one on plain attention, with the same weights."""
    cfg = dict(vocab_size=64, n_layers=n_layers, n_heads=2, embed_dim=32, attn_length=attn_length, dropout=dropout)
    torch.manual_seed(0)
    mine = build_model({**cfg, "attention_impl": "triton"}).to(DEVICE).train(train)
    plain = build_model({**cfg, "attention_impl": "plain"}).to(DEVICE).train(train)
    plain.load_state_dict(mine.state_dict())
    return mine, plain


def test_gpt_with_triton_attention_equals_plain_attention():
    mine, plain = twin_gpts(24, dropout=0.0, n_layers=2, train=True)
    idx = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    losses = []
    for model in (mine, plain):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for (name, a), (_, b) in zip(mine.named_parameters(), plain.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5 if DEVICE == "cpu" else 3e-3), name


def test_gpt_with_triton_attention_and_dropout_evaluates_like_plain():
    # Dropout is on in training only: in eval mode the kernels must give plain attention's logits.
    mine, plain = twin_gpts(20, dropout=0.1)
    idx = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with torch.no_grad():
        assert torch.allclose(mine(idx)[0], plain(idx)[0], atol=1e-5 if DEVICE == "cpu" else 3e-3)


def test_gpt_with_triton_attention_generates_like_plain():
    # Generation calls the kernels with every length from the prompt's up to attn_length.
    mine, plain = twin_gpts(12, dropout=0.1)
    prompt = torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    assert torch.equal(mine.generate(prompt, 14, temperature=0), plain.generate(prompt, 14, temperature=0))


def test_the_kernels_get_only_dense_tensors():
    # The kernels take strides as integers, which torch.compile bakes in while tracing; Inductor
    # keeps only a tensor's stride order and may lay a gapped view out afresh. A dense tensor has
    # one layout per stride order, so the kernels are given only dense ones.
    qkv = torch.randn(2, 5, 3 * 4 * 8)
    q = qkv[..., :32].view(2, 5, 4, 8).transpose(1, 2)  # one third of the projection: gaps
    assert ta._dense(q) is not q and ta._dense(q).is_contiguous() and torch.equal(ta._dense(q), q)
    o = torch.randn(2, 5, 4, 8).transpose(1, 2)  # a permutation of a contiguous tensor: dense
    assert ta._dense(o) is o
    d_not_innermost = torch.randn(2, 4, 8, 5).transpose(2, 3)  # dense, but D steps by 5
    assert ta._dense(d_not_innermost).stride(-1) == 1 and torch.equal(ta._dense(d_not_innermost), d_not_innermost)
    one_head = torch.randn(2, 1, 5, 8)  # size-1 dimensions have no say
    assert ta._dense(one_head) is one_head


def test_bad_shapes_are_refused():
    q = torch.zeros(1, 2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="one shape"):
        ta.causal_attention(q, q[:, :1], q)


@pytest.mark.skipif(DEVICE == "cuda", reason="the refusal is for CPU runs")
def test_training_on_cpu_with_triton_attention_is_refused_up_front(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the arrow of time " * 2000)
    arrows("tokenize", text, "--out", tmp_path / "store", "--tokenizer", "bytes")
    cfg = {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": 16, "attention": "triton"},
        "training_params": {"dataset_folder": str(tmp_path / "store"), "batch_size": 4, "steps_to_train": 2, "save_loc": str(tmp_path / "runs")},
        "optim_params": {"lr": 1e-3},
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    proc = arrows("train", tmp_path / "c.json", "--dry-run", check=False, env={"TRITON_INTERPRET": "0"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "attention 'triton' runs on CUDA" in proc.stderr and "sdpa" in proc.stderr


def test_auto_attention_measures_the_triton_kernel_against_sdpa():
    # What "auto" does on CUDA, here with the kernels run by the interpreter in fp32 on the CPU.
    from arrows.models.attention_choice import choose_attention

    name, report = choose_attention(2, 2, 24, 16, 0.1, DEVICE, candidates={"triton": ta.causal_attention}, dtype=torch.float32, reps=1)
    assert isinstance(report["sdpa"], float) and isinstance(report["triton"], float), report  # both ran, and triton matched
    assert name in ("sdpa", "triton")
