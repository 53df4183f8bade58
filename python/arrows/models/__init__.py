"""The language models: GPT (`gpt.py`), GRU and LSTM (`rnn.py`), built from a config's
`model_params` section plus `model_type` ("gpt" when absent, as in the reference's GPT configs).

Every model has the same interface:
    model(idx, targets=None) -> (logits (B, T, vocab), mean loss in nats/token or None)
        the mean is over the targets that are not -100 (torch's ignore_index); with targets and
        head_loss "chunked" ("auto" on a CPU, as in a run's config) the logits are None
    model.loss_per_position(idx, targets) -> (B, T) losses in nats
    model.generate(idx, max_new_tokens, temperature=1.0, top_k=None, generator=None) -> (B, T + new)
    model.config -> the dict that builds it again;  model.attn_length -> the window length
"""

from __future__ import annotations

import inspect

import torch

from arrows.errors import InputError
from arrows.models.gpt import GPT
from arrows.models.rnn import GRU, LSTM

MODELS = {"gpt": GPT, "gru": GRU, "lstm": LSTM}

# Keys a model_params section may carry without the model using them. Everything else that the
# model's constructor does not take is an error (a typo must not pass silently). The RNNs' window
# length (`desired_attn_length` / `attn_length`) is a constructor argument, so it needs no entry.
IGNORED_KEYS: dict[str, frozenset[str]] = {"gpt": frozenset(), "gru": frozenset(), "lstm": frozenset()}

__all__ = ["GPT", "GRU", "LSTM", "MODELS", "build_model", "count_parameters", "model_kwargs"]


def model_kwargs(cfg: dict) -> tuple[type, dict]:
    """Check a model_params dict (with optional `model_type`) and return (model class, kwargs).
    Raises InputError (a ValueError) naming the offending key."""
    cfg = dict(cfg)
    model_type = cfg.pop("model_type", None) or "gpt"
    if model_type not in MODELS:
        raise InputError(f"model_params: model_type must be one of {sorted(MODELS)}, not {model_type!r}")
    cls = MODELS[model_type]
    params = inspect.signature(cls.__init__).parameters
    accepted = set(params) - {"self"}

    unknown = sorted(set(cfg) - accepted - IGNORED_KEYS[model_type])
    if unknown:
        hint = ""
        if model_type == "gpt" and "desired_attn_length" in unknown:
            hint = ' (a GRU/LSTM config? set "model_type": "gru" or "lstm")'
        raise InputError(
            f"model_params: unknown key {unknown[0]!r} for model_type {model_type!r}{hint}; "
            f"accepted keys: {', '.join(sorted(accepted))}"
        )
    missing = [n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty and n not in cfg]
    if missing:
        raise InputError(f"model_params: missing key {missing[0]!r} for model_type {model_type!r}")

    kwargs = {k: v for k, v in cfg.items() if k in accepted}
    for key in ("vocab_size", "n_layers", "n_heads", "embed_dim", "attn_length", "desired_attn_length"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InputError(f"model_params: {key} must be a positive integer, not {value!r}")
    for key in ("dropout", "embd_dropout"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise InputError(f"model_params: {key} must be a number in [0, 1), not {value!r}")
    ratio = kwargs.get("mlp_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0):
        raise InputError(f"model_params: mlp_ratio must be a positive number, not {ratio!r}")
    return cls, kwargs


def build_model(cfg: dict) -> torch.nn.Module:
    """The model that a model_params dict (plus optional `model_type`) describes, on the current
    default device (use `with torch.device(...)` to choose), freshly initialised."""
    cls, kwargs = model_kwargs(cfg)
    try:
        return cls(**kwargs)
    except ValueError as e:  # the constructors' own consistency checks
        raise InputError(str(e)) from None


def count_parameters(cfg: dict) -> int:
    """Exact number of parameters of the model `cfg` describes. Built on the meta device, so it
    allocates nothing and takes milliseconds even for billions of parameters."""
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())
