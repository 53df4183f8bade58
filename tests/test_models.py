"""The models: the paper's parameter counts, fused attention against the written-out one,
causality, the loss at initialisation, overfitting a tiny batch, generation, config checking, and
the configurations in cli/configs."""

import json
import math
import re

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")

from arrows.models import GPT, build_model, count_parameters  # noqa: E402

CONFIGS = ROOT / "cli" / "configs"
REFERENCE_CONFIGS = ROOT.parent / "shared" / "reference-configs"
MODEL_TYPES = ["gpt", "gru", "lstm"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core box two OpenMP threads can be 40× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(model_type, vocab_size=64, n_layers=2, embed_dim=32, window=16, dropout=0.0, **extra):
    cfg = dict(model_type=model_type, vocab_size=vocab_size, n_layers=n_layers, embed_dim=embed_dim, dropout=dropout)
    if model_type == "gpt":
        cfg.update(n_heads=4, attn_length=window)
    else:
        cfg.update(desired_attn_length=window)
    return {**cfg, **extra}


def gpt_cfg(n_layers, n_heads, embed_dim, attn_length=256):
    return dict(vocab_size=50257, n_layers=n_layers, n_heads=n_heads, embed_dim=embed_dim, attn_length=attn_length)


# ---------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize(
    "size, shape, exact, paper_millions",
    [
        ("nano", (3, 3, 48), 4_921_872, "4.9"),
        ("small", (10, 10, 380), 55_670_760, "55.7"),
        ("medium", (24, 16, 1024), 405_499_904, "405.5"),
        ("XL", (48, 25, 1600), 1_636_793_600, "1636.8"),
    ],
)
def test_gpt_parameter_counts_are_the_papers(size, shape, exact, paper_millions):
    n = count_parameters(gpt_cfg(*shape))
    assert n == exact
    assert f"{n / 1e6:.1f}" == paper_millions


def test_gpt_parameter_count_formula():
    # tokens + positions + per layer (qkv, proj, two MLP linears, two LayerNorms) + final LN + head
    V, T, L, d = 50257, 256, 12, 768
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert count_parameters(gpt_cfg(L, 12, d, T)) == V * d + T * d + L * per_layer + 2 * d + d * V


@pytest.mark.parametrize("model_type, gates", [("gru", 3), ("lstm", 4)])
def test_rnn_parameter_count_formula(model_type, gates):
    V, L, d = 50257, 3, 512
    per_layer = gates * (2 * d * d + 2 * d)  # input and hidden weights, two biases per gate
    cfg = dict(model_type=model_type, vocab_size=V, n_layers=L, embed_dim=d, desired_attn_length=256)
    assert count_parameters(cfg) == V * d + L * per_layer + 2 * d + d * V


def test_count_parameters_allocates_nothing():
    # XL on the meta device: no 6.5 GB of weights, and fast.
    with torch.device("meta"):
        model = build_model(gpt_cfg(48, 25, 1600))
    assert all(p.is_meta for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Attention: the fused path against the written-out one


@pytest.mark.parametrize("T", [1, 7, 16])
def test_sdpa_equals_plain_attention(T):
    torch.manual_seed(0)
    model = build_model(tiny("gpt", dropout=0.1, n_layers=3)).eval()  # eval: dropout off
    idx = torch.randint(0, 64, (3, T))
    targets = torch.randint(0, 64, (3, T))

    def run(impl):
        model.set_attention_impl(impl)
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    fused_logits, fused_grads = run("sdpa")
    plain_logits, plain_grads = run("plain")
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_attention_impl_from_config():
    torch.manual_seed(0)
    fused = build_model(tiny("gpt")).eval()
    plain = build_model(tiny("gpt", attention_impl="plain")).eval()
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(fused(idx)[0], plain(idx)[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Causality, loss


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_changing_a_token_does_not_change_earlier_logits(model_type):
    torch.manual_seed(0)
    model = build_model(tiny(model_type)).eval()
    idx = torch.randint(0, 64, (2, 16))
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 64
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=0)
    assert not torch.allclose(before[:, t:], after[:, t:])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_untrained_loss_is_about_ln_vocab(model_type):
    torch.manual_seed(0)
    V = 50257
    model = build_model(tiny(model_type, vocab_size=V)).eval()
    idx = torch.randint(0, V, (4, 16))
    targets = torch.randint(0, V, (4, 16))
    with torch.no_grad():
        _, loss = model(idx, targets)
    # GPT's 0.02-std init gives near-uniform predictions; the RNNs keep PyTorch's default init
    # (as the reference), whose head gives logits of variance ~1/3, i.e. ~+0.17 nats.
    assert abs(loss.item() - math.log(V)) < (0.05 if model_type == "gpt" else 0.4)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_loss_per_position_averages_to_the_loss(model_type):
    torch.manual_seed(0)
    model = build_model(tiny(model_type)).eval()
    idx = torch.randint(0, 64, (3, 16))
    targets = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        logits, loss = model(idx, targets)
        per_position = model.loss_per_position(idx, targets)
    assert per_position.shape == (3, 16)
    torch.testing.assert_close(per_position.mean(), loss)
    expected = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(per_position, expected)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tiny_model_overfits_a_fixed_batch(model_type):
    torch.manual_seed(0)
    model = build_model(tiny(model_type))
    idx = torch.randint(0, 64, (8, 16))
    targets = torch.randint(0, 64, (8, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        _, loss = model(idx, targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 3.5  # ~ln 64
    assert loss.item() < first / 10


def test_gpt_rejects_sequences_longer_than_attn_length():
    from arrows.errors import InputError

    model = build_model(tiny("gpt", window=8))
    with pytest.raises(InputError, match="attn_length is 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    "model_type, kwargs, message",
    [
        ("gpt", dict(vocab_size=10, n_layers=1, n_heads=3, embed_dim=8, attn_length=4), "must divide embed_dim"),
        ("gpt", dict(vocab_size=10, n_layers=1, n_heads=2, embed_dim=8, attn_length=4, head_loss="fused"), "head_loss must be"),
        ("lstm", dict(vocab_size=10, embed_dim=8, desired_attn_length=4, attn_length=5), "disagree"),
    ],
)
def test_model_classes_used_directly_raise_arrows_errors(model_type, kwargs, message):
    # The classes raised bare ValueErrors; only build_model turned them into arrows' InputError.
    from arrows.errors import InputError
    from arrows.models import MODELS

    with pytest.raises(InputError, match=message):
        MODELS[model_type](**kwargs)


# ---------------------------------------------------------------------------------------------
# Generation


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generate_is_reproducible_and_in_range(model_type):
    torch.manual_seed(0)
    model = build_model(tiny(model_type, window=8)).eval()
    prompt = torch.randint(0, 64, (2, 5))

    def sample(**kw):
        return model.generate(prompt, 20, generator=torch.Generator().manual_seed(1), **kw)

    out = sample()
    assert out.shape == (2, 25)  # past attn_length = 8: the GPT crops its context
    assert torch.equal(out[:, :5], prompt)
    assert 0 <= out.min() and out.max() < 64
    assert torch.equal(out, sample())
    # top_k=1 and temperature 0 are both greedy decoding
    assert torch.equal(sample(top_k=1), sample(temperature=0))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be"),  # returned the prompt unchanged
        ({"max_new_tokens": 2.5}, "max_new_tokens must be"),
        ({"top_k": 0}, "top_k must be"),  # an IndexError from inside torch
        ({"top_k": 2.5}, "top_k must be"),  # a TypeError from torch.topk
        ({"temperature": -1.0}, "temperature must be"),  # sampled the least likely tokens
        ({"temperature": float("nan")}, "temperature must be"),
        # torch's IndexError "too many indices", or a reshape or RNN error for an empty prompt
        ({"idx": torch.zeros(3, dtype=torch.long)}, r"idx must be a \(batch, tokens\) tensor.*not \(3,\) torch.int64"),
        ({"idx": torch.zeros(1, 0, dtype=torch.long)}, r"at least one token.*not \(1, 0\)"),
        ({"idx": torch.zeros(1, 2)}, r"integer ids.*torch.float32"),
    ],
)
def test_generate_refuses_bad_settings_with_input_error(model_type, kwargs, message):
    from arrows.errors import InputError

    model = build_model(tiny(model_type, window=8)).eval()
    kwargs = {"idx": torch.zeros(1, 2, dtype=torch.long), "max_new_tokens": 3, **kwargs}
    with pytest.raises(InputError, match=message):
        model.generate(kwargs.pop("idx"), kwargs.pop("max_new_tokens"), **kwargs)


@pytest.mark.parametrize("model_type", ["gru", "lstm"])
def test_rnn_generate_steps_the_state_like_a_full_rerun(model_type):
    """Stepping the recurrent state must give the tokens that rereading the whole sequence gives."""
    from arrows.models.gpt import sample_next

    torch.manual_seed(0)
    model = build_model(tiny(model_type)).eval()
    prompt = torch.randint(0, 64, (3, 4))
    stepped = model.generate(prompt, 12, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(5))

    generator = torch.Generator().manual_seed(5)
    idx = prompt
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(idx)
            idx = torch.cat([idx, sample_next(logits[:, -1], 0.8, 10, generator)], dim=1)
    assert torch.equal(stepped, idx)


def test_gpt_generate_reads_a_long_context_as_a_training_window():
    # The BOS, then the last attn_length - 1 tokens, as every training window: cut to the last
    # attn_length tokens, the context began with a token that no training window began with.
    torch.manual_seed(0)
    for window in (8, 1):
        model = build_model(tiny("gpt", window=window)).eval()
        read, logits = [], model.logits
        model.logits = lambda idx: (read.append(idx[0].tolist()), logits(idx))[1]
        prompt = torch.arange(1, 31).unsqueeze(0)  # the BOS is 1 here
        out = model.generate(prompt, 3, temperature=0)[0].tolist()
        assert len(read) == 3
        for i, context in enumerate(read):
            seq = out[:30 + i]  # what the step extends
            assert context == [1] + seq[len(seq) - (window - 1):], (window, i, context)


# ---------------------------------------------------------------------------------------------
# Configs: checking, rebuilding


@pytest.mark.parametrize(
    "cfg, key",
    [
        (dict(tiny("gpt"), n_head=4), "n_head"),  # a typo must not pass silently
        (dict(tiny("gpt"), desired_attn_length=16), "desired_attn_length"),
        (dict(tiny("gru"), n_heads=4), "n_heads"),
        (dict(tiny("lstm"), mlp_ratio=4.0), "mlp_ratio"),
        ({k: v for k, v in tiny("gpt").items() if k != "n_heads"}, "n_heads"),
        (dict(tiny("gpt"), model_type="transformer"), "model_type"),
        (dict(tiny("gpt"), embed_dim=30), "n_heads"),  # 4 heads do not divide 30
        (dict(tiny("gpt"), attention_impl="flash"), "attention_impl"),
        (dict(tiny("gpt"), dropout=1.5), "dropout"),
        (dict(tiny("gpt"), n_layers=2.0), "n_layers"),
        (dict(tiny("gru"), attn_length=32), "desired_attn_length"),  # disagrees with 16
    ],
)
def test_bad_model_params_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        build_model(cfg)


def test_gpt_config_without_model_type_and_rnn_hint():
    cfg = {k: v for k, v in tiny("gpt").items() if k != "model_type"}
    assert isinstance(build_model(cfg), GPT)
    rnn_cfg = {k: v for k, v in tiny("gru").items() if k != "model_type"}
    with pytest.raises(ValueError, match='"model_type": "gru"'):
        build_model(rnn_cfg)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_model_config_rebuilds_the_model(model_type):
    model = build_model(tiny(model_type, embd_dropout=0.05))
    again = build_model(model.config)
    assert again.config == model.config
    assert again.attn_length == model.attn_length == 16
    again.load_state_dict(model.state_dict())  # same names and shapes


def test_state_dict_names_follow_the_reference():
    gpt = build_model(tiny("gpt")).state_dict()
    for name in ["transformer.token_embedder.weight", "transformer.position_embedder.weight",
                 "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.bias",
                 "transformer.ln_f.weight", "lm_head.weight"]:
        assert name in gpt
    assert "lm_head.bias" not in gpt
    for kind in ["gru", "lstm"]:
        rnn = build_model(tiny(kind)).state_dict()
        for name in ["token_embedder.weight", f"{kind}.weight_ih_l0", "ln_f.weight", "lm_head.weight"]:
            assert name in rnn


def test_gpt_init_follows_mingpt():
    torch.manual_seed(0)
    model = build_model(dict(vocab_size=1000, n_layers=8, n_heads=4, embed_dim=256, attn_length=64))
    block = model.transformer.h[0]
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(block.attn.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.all(block.attn.c_attn.bias == 0)
    assert torch.all(block.ln_1.weight == 1) and torch.all(block.ln_1.bias == 0)


# ---------------------------------------------------------------------------------------------
# The configuration files


ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.json") if "paper" not in p.relative_to(CONFIGS).parts)
PAPER_CONFIGS = sorted((CONFIGS / "paper").rglob("*.json"))


def test_the_papers_configs_are_there():
    names = {str(p.relative_to(CONFIGS)) for p in ALL_CONFIGS}
    expected = {f"gpt_{s}.json" for s in ["nano", "micro", "mini", "small", "gpt1", "medium", "xl"]}
    expected |= {f"{k}_{s}.json" for k in ["gru", "lstm"] for s in ["1x256", "3x512", "5x768"]}
    expected |= {f"context/medium_ctx{T}.json" for T in [16, 32, 64, 128, 256, 512]}
    assert names == expected


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_file_loads_counts_and_matches_the_readme(path):
    cfg = json.loads(path.read_text())
    assert set(cfg) == {"model_params", "training_params", "optim_params"}
    n = count_parameters(cfg["model_params"])
    readme = (CONFIGS / "README.md").read_text()
    row = re.search(rf"^\| `{re.escape(str(path.relative_to(CONFIGS)))}` \|.*$", readme, re.MULTILINE)
    assert row, f"{path.name} is missing from cli/configs/README.md"
    assert f"| {n:,} |" in row.group(0)


def test_paper_study_configs_are_there():
    names = {str(p.relative_to(CONFIGS / "paper")) for p in PAPER_CONFIGS}
    expected = {"medium_en.json", "medium_fr.json"}
    expected |= {f"context/fr_ctx{T}.json" for T in [16, 32, 64, 128, 256, 512]}
    expected |= {f"sizes/en_{s}.json" for s in ["nano", "micro", "mini", "small", "gpt1", "medium", "xl"]}
    expected |= {f"rnn/{k}_{s}_en.json" for k in ["gru", "lstm"] for s in ["1x256", "3x512", "5x768"]}
    assert names == expected


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_paper_study_config_loads_and_matches_its_readme(path):
    """Each is a valid study config (no direction set) whose README row has its exact size."""
    from arrows.config import load_config

    cfg = load_config(path)
    assert not cfg.training.backwards and cfg.training.permutation is None
    assert cfg.training.dataset_folder in ("data/cc100_en", "data/cc100_fr")
    n = count_parameters(cfg.model_dict())
    readme = (CONFIGS / "paper" / "README.md").read_text()
    row = re.search(rf"^\| `{re.escape(str(path.relative_to(CONFIGS / 'paper')))}` \|.*$", readme, re.MULTILINE)
    assert row, f"{path.name} is missing from cli/configs/paper/README.md"
    t = cfg.training
    assert f"| {n:,} |" in row.group(0) and f"| {t.batch_size * t.aggregate * cfg.model.attn_length:,} |" in row.group(0)


@pytest.mark.parametrize("name", ["en_small.json", "en_med_backwards.json", "gru_en_med.json", "later_blueprint.json"])
def test_reference_configs_build(name):
    path = REFERENCE_CONFIGS / name
    if not path.exists():
        pytest.skip("../shared/reference-configs is not beside the project")
    params = json.loads(path.read_text())["model_params"]
    if name.startswith("gru"):  # the reference ran these with its GRU script
        params = dict(params, model_type="gru")
    n = count_parameters(params)
    expected = {"en_small.json": "55.7", "en_med_backwards.json": "405.5"}.get(name)
    if expected:
        assert f"{n / 1e6:.1f}" == expected


def test_flex_attention_equals_plain_attention_forward():
    """FlexAttention (a fused kernel under torch.compile on CUDA) against the written-out softmax.
    On CPU FlexAttention runs forward only, so gradients are compared on GPUs alone."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    cfg = {"model_type": "gpt", "vocab_size": 97, "n_layers": 2, "n_heads": 2, "embed_dim": 32, "attn_length": 16, "dropout": 0.0}
    torch.manual_seed(0)
    flex = build_model({**cfg, "attention_impl": "flex"}).eval()
    plain = build_model({**cfg, "attention_impl": "plain"}).eval()
    plain.load_state_dict(flex.state_dict())
    idx = torch.randint(0, 97, (3, 16))
    with torch.no_grad():
        for T in (1, 7, 16):
            assert torch.allclose(flex(idx[:, :T])[0], plain(idx[:, :T])[0], atol=1e-5)
    if torch.cuda.is_available():
        flex, plain = flex.cuda().train(), plain.cuda().train()
        idx = idx.cuda()
        flex(idx, idx)[1].backward()
        plain(idx, idx)[1].backward()
        for (n, a), (_, b) in zip(flex.named_parameters(), plain.named_parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-4), n
    with pytest.raises(ValueError, match="flex"):
        build_model({**cfg, "attention_impl": "flex", "dropout": 0.1})


@pytest.mark.parametrize("attention", ["triton", "flex"])
def test_a_run_trained_with_a_gpu_kernel_is_sampled_on_a_cpu_through_sdpa(tmp_path, attention):
    # `arrows generate` and `arrows compare` load a run's model on the CPU: one trained on a GPU
    # with arrows' Triton kernels failed there ("attention 'triton' runs on CUDA, not on cpu"), and
    # on a machine without Triton could not even be built; FlexAttention run uncompiled made torch
    # warn ("flex_attention called without torch.compile"). The weights are those of any kernel.
    from arrows import checkpoint

    config = json.loads((CONFIGS / "gpt_nano.json").read_text())
    config["model_params"].update(vocab_size=64, n_layers=1, n_heads=2, embed_dim=16, attn_length=8, attention=attention, dropout=0.0)
    config["training_params"]["dataset_folder"] = str(tmp_path)
    trained = build_model(dict(vocab_size=64, n_layers=1, n_heads=2, embed_dim=16, attn_length=8))
    path = tmp_path / "ck.pt"
    checkpoint.save(path, {"model": trained.state_dict(), "optimizer": {}, "step": 1, "per_rank": [], "config": config})
    model = checkpoint.load_model(config, path)
    assert model.config["attention_impl"] == "sdpa"
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], trained.eval()(idx)[0])


# ---------------------------------------------------------------------------------------------
# attention "auto": the kernel chosen at the run's shape


def test_auto_attention_off_cuda_is_sdpa_without_measuring():
    from arrows.models.attention_choice import choose_attention

    assert choose_attention(2, 2, 16, 8, 0.1, "cpu")[0] == "sdpa"
    cfg = dict(vocab_size=64, n_layers=1, n_heads=2, embed_dim=16, attn_length=12, dropout=0.0)
    auto, sdpa = build_model({**cfg, "attention_impl": "auto"}).eval(), build_model({**cfg, "attention_impl": "sdpa"}).eval()
    sdpa.load_state_dict(auto.state_dict())
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(auto(idx)[0], sdpa(idx)[0])


def _sdpa(q, k, v, p):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)


def _fake_timer(calls: list, sdpa_ms: float, candidate_ms: float):
    """A stand-in for forward_backward_ms: the candidate's time if running the attention calls it."""
    def forward_backward_ms(attend, upstream, reps):
        before = len(calls)
        attend()
        return candidate_ms if len(calls) > before else sdpa_ms

    return forward_backward_ms


@pytest.mark.parametrize("times, chosen", [({"sdpa": 1.0, "fast": 0.5}, "fast"), ({"sdpa": 1.0, "fast": 0.99}, "sdpa")])
def test_auto_attention_takes_a_faster_kernel_only_by_a_margin(monkeypatch, times, chosen):
    from arrows.models import attention_choice

    calls = []
    kernels = {"fast": lambda q, k, v, p: calls.append("fast") or _sdpa(q, k, v, p)}
    monkeypatch.setattr(attention_choice, "forward_backward_ms", _fake_timer(calls, times["sdpa"], times["fast"]))
    name, report = attention_choice.choose_attention(2, 2, 16, 8, 0.1, "cpu", candidates=kernels, dtype=torch.float32)
    assert name == chosen and report == times


def test_auto_attention_drops_a_wrong_or_failing_kernel(monkeypatch):
    from arrows.models import attention_choice

    calls = []

    def not_causal(q, k, v, p):
        calls.append("not_causal")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)

    def broken(q, k, v, p):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(attention_choice, "forward_backward_ms", _fake_timer(calls, 1.0, 0.1))
    name, report = attention_choice.choose_attention(2, 2, 16, 8, 0.0, "cpu", candidates={"not_causal": not_causal, "broken": broken},
                                                     dtype=torch.float32)
    assert name == "sdpa"
    assert report["not_causal"].startswith("dropped: output differs from SDPA's")
    assert "failed to run (RuntimeError: no kernel image" in report["broken"]
    assert "using sdpa" in attention_choice.describe(name, report, "B=2 H=2 T=16 D=8")


def test_auto_attention_measures_without_using_up_the_random_stream():
    # The trainer measures after a resume has restored the checkpoint's random states: timing the
    # kernels with dropout drew masks from torch's generator, so a resumed run on CUDA went on with
    # other dropout masks than the uninterrupted run.
    from arrows.models.attention_choice import choose_attention

    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    choose_attention(2, 2, 16, 8, 0.5, "cpu", candidates={"same": _sdpa}, dtype=torch.float32, reps=1)
    assert torch.equal(torch.rand(3), expected)


def test_auto_attention_says_in_one_line_why_a_kernel_failed(monkeypatch):
    # A Triton compilation error quotes the kernel's source first and gives its cause last: the log
    # line must keep the cause, and stay one line.
    from arrows.models import attention_choice

    source = "\n".join(f"    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)  # line {i}" for i in range(12))

    def fails_to_compile(q, k, v, p):
        raise RuntimeError(f"at 41:8:\n{source}\n        ^\nout of resource: shared memory, Required: 262144, Hardware limit: 232448")

    name, report = attention_choice.choose_attention(2, 2, 16, 8, 0.0, "cpu", candidates={"triton": fails_to_compile}, dtype=torch.float32, reps=1)
    line = attention_choice.describe(name, report, "B=2 H=2 T=16 D=8")
    assert name == "sdpa" and "\n" not in line
    assert report["triton"].startswith("dropped: failed to run (RuntimeError: at 41:8:")
    assert report["triton"].endswith("out of resource: shared memory, Required: 262144, Hardware limit: 232448)")


@pytest.mark.parametrize("who", ["sdpa", "candidate"])
def test_auto_attention_out_of_memory_takes_sdpa_unmeasured(monkeypatch, who):
    # A shape too big to measure must not stop the run here: the training step then runs out of
    # memory itself, with the message that says which setting to lower.
    from arrows.models import attention_choice

    def out_of_memory(q, k, v, p):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 17.00 GiB")

    if who == "sdpa":
        monkeypatch.setattr(attention_choice, "sdpa", out_of_memory)
    name, report = attention_choice.choose_attention(2, 2, 16, 8, 0.0, "cpu", candidates={"big": out_of_memory if who == "candidate" else _sdpa},
                                                     dtype=torch.float32)
    assert name == "sdpa" and report == {"sdpa": "not measured: out of memory at this shape"}


def test_auto_attention_checks_the_compiled_form_when_the_run_compiles(monkeypatch):
    # A kernel can be right eagerly and wrong once compiled (arrows' Triton kernels were, before
    # their arguments were made dense): when the run compiles, auto checks what compile makes.
    from arrows.models import attention_choice

    calls = []

    def wrong_when_compiled(q, k, v, p):
        calls.append("candidate")
        out = _sdpa(q, k, v, p)
        return out * 2 if torch.compiler.is_compiling() else out

    monkeypatch.setattr(attention_choice, "forward_backward_ms", _fake_timer(calls, 1.0, 0.5))
    eager = attention_choice.choose_attention(2, 2, 16, 8, 0.0, "cpu", candidates={"k": wrong_when_compiled}, dtype=torch.float32)
    assert eager == ("k", {"sdpa": 1.0, "k": 0.5})
    name, report = attention_choice.choose_attention(2, 2, 16, 8, 0.0, "cpu", candidates={"k": wrong_when_compiled}, dtype=torch.float32,
                                                     compiled=True)
    assert name == "sdpa" and report["k"].startswith("dropped: output differs from SDPA's")
