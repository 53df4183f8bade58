"""arrows' Triton kernel for the chunked head's cross-entropy (loss and gradient of each row, in
place) against torch: losses, gradients, padding columns, ragged blocks, bf16, NaN, and the chunked
head built on it. Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set
here before it is defined); with one, on CUDA."""

import pytest
from conftest import triton_kernel_test_device

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

DEVICE = triton_kernel_test_device()
pytest.importorskip("triton")
from arrows.models import triton_cross_entropy as tx  # noqa: E402
from arrows.models.head_loss import chunked_head_loss, softmax_xent_rows_torch_  # noqa: E402


def expected_rows(logits, targets, n_classes):
    """Per-row losses and the gradient of their sum (0 past n_classes), by autograd in fp64."""
    x = logits[:, :n_classes].double().requires_grad_()
    losses = F.cross_entropy(x, targets, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), x)
    return losses, F.pad(grad, (0, logits.shape[1] - n_classes))


@pytest.mark.parametrize("rows, n_classes, n_cols", [
    (5, 200, 200),  # 200 classes: three full blocks of the interpreter's 64 and a ragged one
    (3, 200, 256),  # padded to a multiple of 128: the padding gets gradient 0
    (4, 64, 64),  # exactly one block
    (2, 1, 8),  # a single class
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_and_gradients_equal_torch(rows, n_classes, n_cols, dtype):
    g = torch.Generator().manual_seed(rows * n_cols)
    logits = (3 * torch.randn(rows, n_cols, generator=g)).to(DEVICE, dtype)
    targets = torch.randint(0, n_classes, (rows,), generator=g).to(DEVICE)
    want_losses, want_grad = expected_rows(logits, targets, n_classes)
    got = logits.clone()
    losses = tx.softmax_xent_rows_(got, targets, n_classes)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 holds the gradient to about 3 digits
    assert losses.dtype == torch.float32 and losses.shape == (rows,)
    assert torch.allclose(losses.double(), want_losses, atol=1e-4)
    assert torch.allclose(got.double(), want_grad, atol=tol)
    assert (got[:, n_classes:] == 0).all()
    # The torch fallback of the CPU path does the same.
    fallback = logits.clone()
    assert torch.allclose(softmax_xent_rows_torch_(fallback, targets, n_classes).double(), want_losses, atol=1e-4)
    assert torch.allclose(fallback.double(), want_grad, atol=tol)


def test_large_logits_do_not_overflow():
    logits = torch.tensor([[1000.0, 999.0, -1000.0, 0.0]], device=DEVICE)
    targets = torch.tensor([1], device=DEVICE)
    want_losses, want_grad = expected_rows(logits, targets, 4)
    losses = tx.softmax_xent_rows_(logits, targets, 4)
    assert torch.isfinite(losses).all() and torch.allclose(losses.double(), want_losses, atol=2e-4)  # fp32 spacing at 1000: 6e-5
    assert torch.allclose(logits.double(), want_grad, atol=1e-4)


def test_nan_logits_or_a_target_outside_the_classes_give_nan_not_a_wrong_loss():
    logits = torch.zeros(3, 100, device=DEVICE)
    logits[0, 70] = float("nan")
    targets = torch.tensor([3, 3, 100], device=DEVICE)  # row 2: class 100 of 100 does not exist
    losses = tx.softmax_xent_rows_(logits, targets, 100)
    assert torch.isnan(losses[0]) and torch.isnan(losses[2])
    assert abs(losses[1].item() - torch.log(torch.tensor(100.0)).item()) < 1e-5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unit column stride"):
        tx.softmax_xent_rows_(torch.zeros(8, 4, device=DEVICE).t(), torch.zeros(4, dtype=torch.long, device=DEVICE), 8)
    with pytest.raises(ValueError, match="n_classes"):
        tx.softmax_xent_rows_(torch.zeros(2, 4, device=DEVICE), torch.zeros(2, dtype=torch.long, device=DEVICE), 5)


@pytest.mark.parametrize("n, chunk, vocab_multiple", [(37, 8, 16), (20, 64, 1), (9, 1, 128)])
def test_chunked_head_on_the_kernel_equals_the_plain_head(n, chunk, vocab_multiple):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 24, generator=g).to(DEVICE).requires_grad_()
    w = (0.3 * torch.randn(101, 24, generator=g)).to(DEVICE).requires_grad_()  # 101 classes: padded unless the multiple is 1
    t = torch.randint(0, 101, (n,), generator=g).to(DEVICE)
    plain = F.cross_entropy(h @ w.t(), t)
    gh, gw = torch.autograd.grad(plain * 2.0, (h, w))
    got = chunked_head_loss(h, w, t, chunk_rows=chunk, rows_kernel=tx.softmax_xent_rows_, vocab_multiple=vocab_multiple)
    ch, cw = torch.autograd.grad(got * 2.0, (h, w))
    assert abs(got.item() - plain.item()) < 1e-5
    assert cw.shape == w.shape
    assert torch.allclose(ch, gh, atol=1e-5) and torch.allclose(cw, gw, atol=1e-5)


def test_chunked_head_on_the_kernel_under_bf16_autocast():
    g = torch.Generator().manual_seed(7)
    h = torch.randn(40, 32, generator=g).to(DEVICE).requires_grad_()
    w = (0.2 * torch.randn(300, 32, generator=g)).to(DEVICE).requires_grad_()
    t = torch.randint(0, 300, (40,), generator=g).to(DEVICE)
    plain = F.cross_entropy(h @ w.t(), t)
    gh, gw = torch.autograd.grad(plain, (h, w))
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = chunked_head_loss(h, w, t, chunk_rows=16, rows_kernel=tx.softmax_xent_rows_, vocab_multiple=128)
    ch, cw = torch.autograd.grad(got, (h, w))
    assert ch.dtype == h.dtype and cw.dtype == w.dtype  # gradients in the parameters' dtypes
    assert abs(got.item() - plain.item()) < 0.01 * plain.item()
    assert (ch - gh).abs().max() < 0.02 * gh.abs().max() and (cw - gw).abs().max() < 0.02 * gw.abs().max()
