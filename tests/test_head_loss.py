"""The fused, chunked LM head + cross-entropy against the plain path."""

import pytest
import torch
import torch.nn.functional as F

from arrows.models import build_model
from arrows.models.head_loss import chunked_head_loss


def _plain(h, w, t):
    return F.cross_entropy((h @ w.t()).float(), t)


@pytest.mark.parametrize("n,chunk", [(37, 8), (64, 64), (10, 1000), (100, 1)])
def test_loss_and_gradients_equal_the_plain_path(n, chunk):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (n,), generator=g)
    expected = _plain(h, w, t)
    gh, gw = torch.autograd.grad(expected * 3.0, (h, w))
    got = chunked_head_loss(h, w, t, chunk_rows=chunk)
    ch, cw = torch.autograd.grad(got * 3.0, (h, w))  # a non-unit upstream gradient is scaled through
    assert abs(got.item() - expected.item()) < 1e-5
    assert torch.allclose(ch, gh, atol=1e-5) and torch.allclose(cw, gw, atol=1e-5)


def _tiny_gpt(head_loss, model_type="gpt"):
    torch.manual_seed(0)
    if model_type == "gpt":
        shape = dict(n_heads=2, attn_length=16)
    else:
        shape = dict(desired_attn_length=16)
    return build_model(dict(model_type=model_type, vocab_size=97, n_layers=2, embed_dim=32, dropout=0.0, head_loss=head_loss, **shape))


@pytest.mark.parametrize("model_type", ["gpt", "gru", "lstm"])
def test_models_train_the_same_with_either_head_loss(model_type):
    plain, chunked = _tiny_gpt("plain", model_type), _tiny_gpt("chunked", model_type)
    chunked.load_state_dict(plain.state_dict())
    x = torch.randint(0, 97, (6, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    logits, lp = plain(x, y)
    none, lc = chunked(x, y)
    assert none is None and logits.shape == (6, 16, 97)
    assert torch.allclose(lp, lc, atol=1e-5)
    lp.backward()
    lc.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), chunked.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    # Validation (no gradients) walks the same chunks without gradients: the same loss.
    with torch.no_grad():
        none, loss = chunked(x, y)
        per_position = chunked.loss_per_position(x, y)  # arrows compare's path: the plain head
    assert none is None and torch.allclose(loss, lp, atol=1e-5)
    assert torch.allclose(per_position.mean(), lp, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gpt", "lstm"])
def test_ignored_targets_count_for_nothing_in_either_head(model_type):
    # Targets of -100 (padding, torch's ignore_index) are left out by the plain head, through
    # cross_entropy. The chunked head failed on them with gradients, and without gradients
    # (validation) skipped them but still divided by every position: a loss too low, silently.
    plain, chunked = _tiny_gpt("plain", model_type), _tiny_gpt("chunked", model_type)
    chunked.load_state_dict(plain.state_dict())
    x = torch.randint(0, 97, (6, 16), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    y[:, 10:] = -100
    y[0] = -100
    _, lp = plain(x, y)
    _, lc = chunked(x, y)
    assert torch.allclose(lp, lc, atol=1e-5)
    _, counted_only = plain(x[1:, :10], y[1:, :10])  # causal: the ignored positions change nothing earlier
    assert torch.allclose(lp, counted_only, atol=1e-5)
    lp.backward()
    lc.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), chunked.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    with torch.no_grad():
        _, loss = chunked(x, y)
    assert torch.allclose(loss, lp, atol=1e-5)


def test_bf16_autocast_within_tolerance():
    plain, chunked = _tiny_gpt("plain"), _tiny_gpt("chunked")
    chunked.load_state_dict(plain.state_dict())
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, lp = plain(x, y)
        _, lc = chunked(x, y)
    assert abs(lp.item() - lc.item()) < 0.02 * lp.item()


def test_bad_head_loss_is_refused():
    with pytest.raises(ValueError, match="head_loss"):
        _tiny_gpt("fused")


def test_validation_loss_without_gradients_is_chunked():
    from arrows.models.head_loss import chunked_mean_loss

    g = torch.Generator().manual_seed(5)
    h, w = torch.randn(37, 16, generator=g), torch.randn(50, 16, generator=g)
    t = torch.randint(0, 50, (37,), generator=g)
    for chunk in (1, 8, 37, 100):
        assert torch.allclose(chunked_mean_loss(h, w, t, chunk_rows=chunk), _plain(h, w, t), atol=1e-5)


def test_compiled_model_with_chunked_head_gives_the_eager_gradients():
    # On CUDA the trainer compiles the model; the chunked head is left out of the graph on purpose
    # (torch.compiler.disable) and must still give the same loss and gradients through the compiled
    # body. Inductor's CPU backend checks the same split here.
    torch.manual_seed(0)
    chunked, plain = _tiny_gpt("chunked"), _tiny_gpt("plain")
    plain.load_state_dict(chunked.state_dict())
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    explanation = torch._dynamo.explain(chunked)(x, y)
    assert explanation.graph_count == 2 and all("chunked_head_loss" in str(r.reason) for r in explanation.break_reasons)
    compiled_loss = torch.compile(chunked)(x, y)[1]
    compiled_loss.backward()
    plain_loss = plain(x, y)[1]
    plain_loss.backward()
    assert abs(compiled_loss.item() - plain_loss.item()) < 1e-5
    for (name, a), (_, b) in zip(chunked.named_parameters(), plain.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_auto_is_chunked_on_a_cpu_and_plain_on_cuda():
    from arrows.models.head_loss import resolve_head_loss

    assert resolve_head_loss("auto", "cpu") == "chunked" and resolve_head_loss("auto", "cuda") == "plain"
    assert resolve_head_loss("plain", "cpu") == "plain" and resolve_head_loss("chunked", "cuda") == "chunked"
    auto, plain = _tiny_gpt("auto"), _tiny_gpt("plain")
    auto.load_state_dict(plain.state_dict())
    x = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, dims=1)
    none, la = auto(x, y)
    _, lp = plain(x, y)
    assert none is None and torch.allclose(la, lp, atol=1e-5)
    assert auto(x)[0].shape == (3, 16, 97)  # without targets: the logits, as plain


@pytest.mark.parametrize("model_type", ["gpt", "lstm"])
@pytest.mark.parametrize("compiled", [False, True])
def test_padded_vocabulary_gives_the_unpadded_losses_and_gradients(monkeypatch, model_type, compiled):
    # On CUDA the plain head's product runs over the vocabulary padded to a multiple of 128 (aligned
    # rows for cuBLAS); forced here on the CPU, the padding must change nothing but the layout: the
    # same logits, loss and gradients as the unpadded product, eager and through Inductor.
    from arrows.models import head_loss

    padded, unpadded = _tiny_gpt("plain", model_type), _tiny_gpt("plain", model_type)
    unpadded.load_state_dict(padded.state_dict())
    x = torch.randint(0, 97, (5, 16), generator=torch.Generator().manual_seed(6))
    y = torch.roll(x, -1, dims=1)
    logits, loss = unpadded(x, y)
    loss.backward()

    monkeypatch.setattr(head_loss, "vocab_multiple_for", lambda device: 128)
    run = torch.compile(padded) if compiled else padded
    padded_logits, padded_loss = run(x, y)
    padded_loss.backward()
    assert padded_logits.shape == (5, 16, 97)
    if not compiled:  # a view of the (…, 128) product without its padding columns
        assert padded_logits.stride(-2) == 128
    assert torch.allclose(padded_logits, logits, atol=1e-5) and abs(padded_loss.item() - loss.item()) < 1e-6
    for (name, a), (_, b) in zip(padded.named_parameters(), unpadded.named_parameters()):
        assert a.grad.shape == b.grad.shape and torch.allclose(a.grad, b.grad, atol=1e-6), name
    # arrows compare and generate go through the same padded head
    with torch.no_grad():
        assert torch.allclose(padded.loss_per_position(x, y).mean(), loss, atol=1e-5)


def test_padded_head_pads_its_bias_too(monkeypatch):
    from arrows.models import head_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)  # the models' heads have no bias; a head that has one keeps it
    h = torch.randn(3, 8)
    expected = head(h)
    monkeypatch.setattr(head_loss, "vocab_multiple_for", lambda device: 64)
    got = head_loss.head_logits(h, head)
    assert got.shape == (3, 50) and got.stride(0) == 64  # made over the padded vocabulary
    assert torch.allclose(got, expected, atol=1e-6)
