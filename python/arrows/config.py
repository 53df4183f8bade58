"""Training configuration: the reference JSON format, checked strictly and resolved.

A config is a JSON object with three sections, exactly as the reference research code wrote them:
`model_params`, `training_params`, `optim_params`. Both generations of the reference format load
unchanged (`state_save_loc` / `save_loc`, `attn_length` / `desired_attn_length`); arrows adds the
keys marked *new* below. Every problem (an unknown key, with the closest valid one; a missing or
mistyped key; an impossible value) is collected and reported in one `ConfigError`, one line each,
naming the section and key.

    config = load_config("cfg.json", model_type=None, overrides={"training_params": {"seed": 1}})
    paths = check_paths(config, vocab_size_of_data=50257)   # dataset exists, vocabulary fits
    json.dump(config.to_dict(), f)                          # every default filled in

Types: "int" excludes booleans; a "float" accepts an integer; `null` is accepted only where a
meaning is given for it. Every cadence counts optimizer steps (one step = `aggregate` batches).

`model_params`

| key | default | meaning |
|---|---|---|
| `model_type` *(new)* | `"gpt"` | `"gpt"`, `"gru"` or `"lstm"`. A config with `desired_attn_length` and no `n_heads` (a reference GRU/LSTM config) has no default: give `--model gru\\|lstm` or this key |
| `vocab_size` | required | vocabulary of the model (≥ the data's) |
| `n_layers` | required | transformer blocks, or stacked RNN layers |
| `n_heads` | required for GPT | attention heads; must divide `embed_dim`; GPT only |
| `embed_dim` | required | embedding width (also the RNN's hidden size) |
| `attn_length` | required | context length L: windows of BOS + L−1 tokens predict L tokens. `desired_attn_length` (the reference GRU/LSTM name) is the same setting |
| `mlp_ratio` | `4.0` | MLP width / `embed_dim` (GPT) |
| `dropout` | `0.1` | dropout, in [0, 1) |
| `embd_dropout` | `null` = `dropout` | dropout after the embeddings, in [0, 1) |
| `head_loss` *(new)* | `"auto"` | training loss (GPT, GRU and LSTM): `"plain"` (logits of the whole batch, then cross-entropy), `"chunked"` (head and cross-entropy fused over chunks of rows: the batch's logits are never held at once; for large batches and vocabularies), or `"auto"`: chunked on a CPU (faster and smaller there), plain on CUDA |
| `attention` *(new)* | `"auto"` | GPT attention: `"auto"` (on CUDA, the fastest kernel that matches SDPA, measured at the run's shape before training; SDPA elsewhere), `"sdpa"` (fused kernel), `"flex"` (FlexAttention compiled by torch.compile on CUDA; needs `dropout` 0), `"triton"` (arrows' own fused Triton kernels, forward and backward with dropout; CUDA only) or `"plain"` (hand-written, the reference's) |

`training_params`

| key | default | meaning |
|---|---|---|
| `dataset_folder` | required | a folder written by `arrows tokenize`, or a reference `.h5`; a relative path is looked up in the current directory, then beside the config file |
| `tokenizer_path` | `null` | tokenizer used to decode samples from an `.h5` dataset (a tokenized folder carries its own) |
| `batch_size` | required | windows per batch (per optimizer micro-step, all GPUs together) |
| `val_batch_size` | `batch_size` | windows per validation batch |
| `aggregate` | `1` | gradient accumulation: batches per optimizer step |
| `backwards` | `false` | train on the flipped windows (predict the previous token) |
| `permutation` | `null` | a list, a permutation of `range(attn_length)`: the fixed order in which each window's positions are read. Not with `backwards: true` |
| `steps_to_train` | `null` = one epoch | optimizer steps to train |
| `save_every` | `1000` | save the latest checkpoint every so many steps |
| `backup_every` | `null` = never | keep a numbered copy of the checkpoint every so many steps |
| `step_log` | `100` | log the training loss every so many steps |
| `valid_steps` | `1000` | the reference's validation size and cadence: each validation reads `valid_steps` batches of `val_batch_size` windows, every `20 × valid_steps` steps (so that validating costs about 5% of training, as the reference planned it) |
| `save_loc` | `"runs"` | folder under which the run folder `<save_loc>/<run_name>` is made. `state_save_loc`, its first-generation name, is the same setting; when both are given (real later-generation configs carry both), `save_loc` is used and `state_save_loc` ignored, as the reference's later code did |
| `fast_scrambling` | `false` | accepted for reference configs; no effect (arrows always shuffles by a fast exact permutation) |
| `cooldown_finish` | `null` | fraction of training, in (0, 1), spent in a final linear cooldown to 0; when given the schedule is warmup → constant → linear cooldown instead of cosine warm restarts |
| `run_name` *(new)* | config file stem + `_fw`, `_bw` or `_perm` | name of the run folder |
| `seed` *(new)* | `0` | seed of the weights, the data order and dropout |
| `valid_every` *(new)* | `20 × valid_steps` | validation cadence in steps |
| `valid_batches` *(new)* | `valid_steps` | validation batches per validation, from the start of the validation split; `null`: the whole split |
| `valid_fraction` *(new)* | `0.01` | fraction of the token stream held out for validation, in (0, 1) |
| `sample_every` *(new)* | the validation cadence | print a generated sample every so many steps; 0 = never |
| `sample_tokens` *(new)* | `64` | tokens per generated sample |
| `threads` *(new)* | `2` | data-loader threads (per process), 1 to 1024 |
| `stride` *(new)* | `null` = `(attn_length − 1) // 2` | tokens between the starts of consecutive windows (the reference's overlap by default). For text of fixed-length lines, the line length makes every window start at a line start |

`optim_params`

| key | default | meaning |
|---|---|---|
| `lr` | `1e-4` | peak learning rate (AdamW) |
| `warmup_steps` | `0` | linear warmup from `lr_init` to `lr` |
| `oscil_steps` | `null` = the whole run | period of the cosine warm restarts (from the peak to the floor) |
| `lr_shrink` | `1.0` | each restart multiplies the whole cosine by this, peak and floor (period n runs from `lr·lr_shrinkⁿ` down to `lr_min·lr_shrinkⁿ`, as the reference's) |
| `lr_init` | `1e-7` | learning rate at the start of the warmup |
| `lr_min` | `1e-6` | bottom of the first cosine period (≤ `lr`) |
| `weight_decay` *(new)* | `0.01` | AdamW weight decay (torch's default) |
| `betas` *(new)* | `[0.9, 0.999]` | AdamW betas, each in [0, 1) |
| `clip` *(new)* | `1.0` | gradient-norm clipping; `null` = none |

No torch here: the command line imports this module.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from arrows.errors import InputError

__all__ = [
    "ConfigError",
    "Config",
    "ModelConfig",
    "TrainingConfig",
    "OptimConfig",
    "ResolvedPaths",
    "load_config",
    "config_from_dict",
    "check_paths",
    "MODEL_TYPES",
    "SECTIONS",
]

MODEL_TYPES = ("gpt", "gru", "lstm")
ATTENTIONS = ("auto", "sdpa", "flex", "triton", "plain")
HEAD_LOSSES = ("auto", "plain", "chunked")
SECTIONS = ("model_params", "training_params", "optim_params")
# The reference validates `valid_steps` batches every `valid_steps / 5%` steps: about 5% of the
# steps' time goes to validation.
VALID_EVERY_PER_VALID_STEP = 20


class ConfigError(InputError):
    """A config with problems. The message starts with the config file's path and lists every
    problem on a line of its own; `problems` holds those lines, `path` the file (or None)."""

    def __init__(self, message: str, *, problems: list[str] | None = None, path: Path | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]
        self.path = path

    @classmethod
    def from_problems(cls, source: Path | None, problems: list[str]) -> "ConfigError":
        where = str(source) if source is not None else "config (from a dict)"
        n = len(problems)
        head = f"{where}: {n} problem{'s' if n != 1 else ''} in the config:"
        return cls("\n".join([head, *(f"  {p}" for p in problems)]), problems=problems, path=source)


# ---------------------------------------------------------------------------------------------
# Resolved configuration


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    n_layers: int
    n_heads: int | None  # None for GRU/LSTM
    embed_dim: int
    attn_length: int
    mlp_ratio: float
    dropout: float
    embd_dropout: float  # resolved: never None
    attention: str
    head_loss: str


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    dataset_folder: str  # as written; `check_paths` resolves it
    tokenizer_path: str | None
    batch_size: int
    val_batch_size: int
    aggregate: int
    backwards: bool
    permutation: tuple[int, ...] | None
    steps_to_train: int | None  # None: one epoch
    save_every: int
    backup_every: int | None  # None: no backups
    step_log: int
    valid_steps: int  # the reference's key: sets the defaults of valid_every and valid_batches
    valid_every: int  # the validation cadence (valid_every if given, else 20 × valid_steps)
    save_loc: str  # state_save_loc in the first-generation format
    fast_scrambling: bool  # no effect
    cooldown_finish: float | None
    run_name: str
    seed: int
    valid_batches: int | None  # None: the whole validation split
    valid_fraction: float
    sample_every: int  # 0: never
    sample_tokens: int
    threads: int
    stride: int | None  # None: (attn_length - 1) // 2, the reference's

    @property
    def direction(self) -> str:
        """"backward", "permutation" or "forward"."""
        if self.backwards:
            return "backward"
        return "permutation" if self.permutation is not None else "forward"


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float
    warmup_steps: int
    oscil_steps: int | None  # None: one period = the whole run
    lr_shrink: float
    lr_init: float
    lr_min: float
    weight_decay: float
    betas: tuple[float, float]
    clip: float | None  # None: no clipping


@dataclass(kw_only=True)
class Config:
    """A validated, fully resolved config. Equality compares the settings only (not
    `source_path` nor `notes`). Build it with `load_config` or `config_from_dict`."""

    model: ModelConfig
    training: TrainingConfig
    optim: OptimConfig
    source_path: Path | None = field(default=None, compare=False)
    notes: list[str] = field(default_factory=list, compare=False)  # things worth telling the user

    @property
    def run_dir(self) -> Path:
        """The run folder: save_loc / run_name."""
        return Path(self.training.save_loc) / self.training.run_name

    @property
    def schedule(self) -> str:
        """"cooldown" (warmup → constant → linear cooldown) or "cosine" (warm restarts)."""
        return "cooldown" if self.training.cooldown_finish is not None else "cosine"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved config in the reference layout, every default filled in, JSON-able;
        `config_from_dict` reads it back to an equal `Config`."""
        m = asdict(self.model)
        t = asdict(self.training)
        o = asdict(self.optim)
        t["permutation"] = list(self.training.permutation) if self.training.permutation is not None else None
        o["betas"] = list(self.optim.betas)
        return {
            "model_params": {k.name: m[k.name] for k in _MODEL_KEYS if k.name in m},
            "training_params": {k.name: t[k.name] for k in _TRAINING_KEYS if k.name in t},
            "optim_params": {k.name: o[k.name] for k in _OPTIM_KEYS},
        }

    def model_dict(self) -> dict[str, Any]:
        """The keyword arguments of `arrows.models.build_model`: `model_type` plus what that model
        takes (GPT: `attention` becomes `attention_impl`; GRU/LSTM: no heads, MLP or attention)."""
        m = self.model
        d: dict[str, Any] = {"model_type": m.model_type, "vocab_size": m.vocab_size, "n_layers": m.n_layers}
        if m.model_type == "gpt":
            d["n_heads"] = m.n_heads
        d.update(embed_dim=m.embed_dim, attn_length=m.attn_length)
        if m.model_type == "gpt":
            d["mlp_ratio"] = m.mlp_ratio
        d.update(dropout=m.dropout, embd_dropout=m.embd_dropout)
        if m.model_type == "gpt":
            d["attention_impl"] = m.attention
        d["head_loss"] = m.head_loss
        return d

    def with_paths(self, paths: "ResolvedPaths") -> "Config":
        """A copy whose `dataset_folder` and `tokenizer_path` are the absolute paths that
        `check_paths` found (so that the run works, and its saved config reads back, from any
        directory)."""
        tok = str(paths.tokenizer_path) if paths.tokenizer_path is not None else self.training.tokenizer_path
        training = replace(self.training, dataset_folder=str(paths.dataset_folder), tokenizer_path=tok)
        return Config(model=self.model, training=training, optim=self.optim, source_path=self.source_path, notes=list(self.notes))

    def to_json(self) -> str:
        """`to_dict()` as indented JSON text, ending with a newline."""
        return json.dumps(self.to_dict(), indent=4) + "\n"


# ---------------------------------------------------------------------------------------------
# The schema: one row per key (aliases are read as the key they stand for)

_REQUIRED = object()
_BAD = object()  # a value that failed its checks (already reported)


@dataclass(frozen=True)
class _Key:
    name: str
    kind: str  # "int" | "float" | "bool" | "str" | "list"
    default: Any = _REQUIRED
    nullable: bool = False  # null has a documented meaning
    check: Callable[[Any], str | None] | None = None
    aliases: tuple[str, ...] = ()
    # Given with an alias, the key itself is read and the alias ignored (a note says so), instead of
    # both being refused: real configs of the reference's later code carry both `state_save_loc`
    # (unused there) and `save_loc` (read there).
    wins_over_aliases: bool = False


def _positive(v) -> str | None:
    return None if v > 0 else f"must be > 0, not {_show(v)}"


def _window_length(v) -> str | None:
    return None if v >= 2 else f"must be ≥ 2 (a window is the BOS and at least one token to predict), not {_show(v)}"


def _non_negative(v) -> str | None:
    return None if v >= 0 else f"must be ≥ 0, not {_show(v)}"


def _threads(v) -> str | None:
    # As tokenize's --threads: tens of thousands made the loader's thread start fail with a panic.
    return None if 0 < v <= 1024 else f"must be in 1..1024, not {_show(v)}"


def _dropout(v) -> str | None:
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), not {_show(v)}"


def _open_unit(v) -> str | None:
    return None if 0.0 < v < 1.0 else f"must be in (0, 1), not {_show(v)}"


def _choice(options: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        if v in options:
            return None
        close = difflib.get_close_matches(v.lower(), options, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"must be one of {', '.join(repr(o) for o in options)}, not {_show(v)}{hint}"

    return check


def _name(v: str) -> str | None:
    if not v.strip() or v in (".", "..") or "/" in v or "\\" in v or "\0" in v:
        return f"must be a plain folder name (no '/', not empty), not {_show(v)}"
    return None


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


_MODEL_KEYS = (
    _Key("model_type", "str", "gpt", check=_choice(MODEL_TYPES)),
    _Key("vocab_size", "int", check=_positive),
    _Key("n_layers", "int", check=_positive),
    _Key("n_heads", "int", None, nullable=True, check=_positive),  # required for GPT (checked below)
    _Key("embed_dim", "int", check=_positive),
    _Key("attn_length", "int", check=_window_length, aliases=("desired_attn_length",)),
    _Key("mlp_ratio", "float", 4.0, check=_positive),
    _Key("dropout", "float", 0.1, check=_dropout),
    _Key("embd_dropout", "float", None, nullable=True, check=_dropout),
    _Key("attention", "str", "auto", check=_choice(ATTENTIONS)),
    _Key("head_loss", "str", "auto", check=_choice(HEAD_LOSSES)),
)

_TRAINING_KEYS = (
    _Key("dataset_folder", "str", check=_non_empty),
    _Key("tokenizer_path", "str", None, nullable=True, check=_non_empty),
    _Key("batch_size", "int", check=_positive),
    _Key("val_batch_size", "int", None, nullable=True, check=_positive),
    _Key("aggregate", "int", 1, check=_positive),
    _Key("backwards", "bool", False),
    _Key("permutation", "list", None, nullable=True),  # checked against attn_length below
    _Key("steps_to_train", "int", None, nullable=True, check=_positive),
    _Key("save_every", "int", 1000, check=_positive),
    _Key("backup_every", "int", None, nullable=True, check=_positive),
    _Key("step_log", "int", 100, check=_positive),
    _Key("valid_steps", "int", 1000, check=_positive),
    _Key("valid_every", "int", None, nullable=True, check=_positive),
    _Key("valid_batches", "int", None, nullable=True, check=_positive),
    _Key("valid_fraction", "float", 0.01, check=_open_unit),
    _Key("sample_every", "int", None, nullable=True, check=_non_negative),
    _Key("sample_tokens", "int", 64, check=_positive),
    _Key("save_loc", "str", "runs", check=_non_empty, aliases=("state_save_loc",), wins_over_aliases=True),
    _Key("run_name", "str", None, nullable=True, check=_name),
    _Key("seed", "int", 0, check=_non_negative),
    _Key("threads", "int", 2, check=_threads),
    _Key("stride", "int", None, nullable=True, check=_positive),
    _Key("fast_scrambling", "bool", False),
    _Key("cooldown_finish", "float", None, nullable=True, check=_open_unit),
)


def _betas(v) -> str | None:
    if len(v) != 2:
        return f"must be a list of two numbers, not {_show(v)}"
    for b in v:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            return f"must be a list of two numbers, not {_show(v)}"
    if not all(0.0 <= b < 1.0 for b in v):
        return f"each must be in [0, 1), not {_show(v)}"
    return None


_OPTIM_KEYS = (
    _Key("lr", "float", 1e-4, check=_positive),
    _Key("warmup_steps", "int", 0, check=_non_negative),
    _Key("oscil_steps", "int", None, nullable=True, check=_positive),
    _Key("lr_shrink", "float", 1.0, check=_positive),
    _Key("lr_init", "float", 1e-7, check=_non_negative),
    _Key("lr_min", "float", 1e-6, check=_non_negative),
    _Key("weight_decay", "float", 0.01, check=_non_negative),
    _Key("betas", "list", [0.9, 0.999], check=_betas),
    _Key("clip", "float", 1.0, nullable=True, check=_positive),
)

_SCHEMA = {"model_params": _MODEL_KEYS, "training_params": _TRAINING_KEYS, "optim_params": _OPTIM_KEYS}
_REQUIRED_SECTIONS = ("model_params", "training_params")


def _all_names(keys: tuple[_Key, ...]) -> list[str]:
    return [n for k in keys for n in (k.name, *k.aliases)]


# ---------------------------------------------------------------------------------------------
# Reading and checking


def _show(v: Any) -> str:
    try:
        text = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list"}


def _convert(v: Any, kind: str) -> tuple[Any, str | None]:
    """(value converted to the kind, None) or (_BAD, the problem)."""
    want = _KIND_WORDS[kind]
    if kind == "bool":
        if isinstance(v, bool):
            return v, None
    elif isinstance(v, bool):
        return _BAD, f"expected {want}, got {_show(v)} (a boolean)"
    elif kind == "int":
        if isinstance(v, int):
            if abs(v) >= 2**63:  # the data loader's core and torch's seeds take 64-bit integers
                return _BAD, f"expected an integer below 2^63 (9.2e18), got {v}"
            return v, None
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            return _BAD, f"expected an integer, got {_show(v)} (write {int(v)})"
    elif kind == "float":
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                return _BAD, f"expected a finite number, got {v}"
            return float(v), None
    elif kind == "str":
        if isinstance(v, str):
            return v, None
    elif kind == "list":
        if isinstance(v, list):
            return v, None
    if v is None:
        return _BAD, f"expected {want}, got null"
    return _BAD, f"expected {want}, got {_show(v)}"


class _JsonObject(dict):
    """A JSON object that remembers the keys it was given more than once."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    dups = []
    for k, v in pairs:
        if k in obj and k not in dups:
            dups.append(k)
        obj[k] = v
    obj.duplicates = tuple(dups)
    return obj


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def unknown_keys(self, section: str, raw: dict, known: list[str]) -> None:
        for key in raw:
            if key not in known:
                home = next((other for other in _SCHEMA if other != section and key in _all_names(_SCHEMA[other])), None)
                self.problem(f"{section}.{key}", f"not a key of {section}; it belongs in {home}" if home else _unknown(key, known, "key"))

    def read(self, section: str, raw: dict, key: _Key) -> Any:
        """The value of `key` (an alias counts as the key), its default, or _BAD."""
        given = [n for n in (key.name, *key.aliases) if n in raw]
        if len(given) > 1 and key.wins_over_aliases and given[0] == key.name:
            for alias in given[1:]:
                self.notes.append(f"{section}.{alias} ({_show(raw[alias])}) is ignored: {key.name} ({_show(raw[key.name])}) is given too, "
                                  f"and it is the one the reference's later code reads")
            given = [key.name]
        if len(given) > 1:
            self.problem(f"{section}.{given[1]}", f"the same setting as {given[0]}; give one of them, not both")
            return _BAD
        if not given:
            if key.default is _REQUIRED:
                also = f" (or {', '.join(key.aliases)}, the same setting)" if key.aliases else ""
                self.problem(f"{section}.{key.name}", f"missing: this key is required{also}")
                return _BAD
            return copy.deepcopy(key.default)
        name = given[0]
        v = raw[name]
        if v is None and key.nullable:
            return None
        converted, why = _convert(v, key.kind)
        if why is None and key.check is not None:
            why = key.check(v)  # the value as written, so that messages quote it
        if why is not None:
            self.problem(f"{section}.{name}", why)
            return _BAD
        return converted


def _unknown(key: str, known: list[str], what: str) -> str:
    cutoff = 0.6 if what == "key" else 0.4  # section names share a long "_params" suffix
    close = difflib.get_close_matches(key, known, n=1, cutoff=cutoff)
    if not close:  # case-insensitive second try: "Batch_Size"
        lower = {k.lower(): k for k in known}
        hit = difflib.get_close_matches(key.lower(), list(lower), n=1, cutoff=cutoff)
        close = [lower[hit[0]]] if hit else []
    if close:
        return f"unknown {what}; did you mean {close[0]}?"
    return f"unknown {what} (valid: {', '.join(known)})"


def _apply_overrides(d: dict, overrides: dict | None, checker: _Checker) -> None:
    """Set `overrides[section][key]` in `d`; a key replaces its aliases (so that `save_loc`
    given on the command line wins over a `state_save_loc` in the file)."""
    if not overrides:
        return
    if not isinstance(overrides, dict):
        checker.problem("overrides", f"expected a dict of section -> {{key: value}}, got {_show(overrides)}")
        return
    for section, values in overrides.items():
        if not isinstance(values, dict):
            checker.problem(f"{section} (override)", f"expected a dict of key -> value, got {_show(values)}")
            continue
        target = d.get(section)
        if not isinstance(target, dict):
            if target is not None:
                continue  # the section itself is malformed: reported during validation
            target = d[section] = {}
        keys = _SCHEMA.get(section, ())
        for k, v in values.items():
            for key in keys:
                names = (key.name, *key.aliases)
                if k in names:
                    for other in names:
                        if other != k:
                            target.pop(other, None)
            target[k] = v


# Deeper values are refused before anything recurses into them: copy.deepcopy ran out of Python's
# stack at about 500 levels (a traceback), which JSON's reader still reads.
_MAX_DEPTH = 32


def _nested_too_deep(d: dict) -> str | None:
    """The setting (section.key) under which `d` nests lists or objects more than _MAX_DEPTH levels
    deep, else None. Walked with a stack of its own, not by recursion."""
    stack = [(d, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return ".".join(path[:2])
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
        stack.extend((v, (*path, str(k)), depth + 1) for k, v in items)
    return None


def config_from_dict(
    d: dict,
    *,
    model_type: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    source_path: str | Path | None = None,
) -> Config:
    """Validate and resolve a config given as a dict (the parsed JSON); see `load_config`.
    `source_path` names the file it came from: it heads error messages, gives the default
    `run_name` its stem, and is where `check_paths` looks for relative paths second. `d` is not
    modified."""
    shown = Path(source_path) if source_path is not None else None  # as given, for messages
    source = shown.absolute() if shown is not None else None
    checker = _Checker()
    if not isinstance(d, dict):
        raise ConfigError.from_problems(shown, [f"(top level): expected a JSON object with sections {', '.join(SECTIONS)}, got {_show(d)}"])
    for dup in getattr(d, "duplicates", ()):
        checker.problem(dup, "section given twice; keep one")
    if (deep := _nested_too_deep(d)) is not None:
        raise ConfigError.from_problems(shown, [f"{deep}: lists or objects nested more than {_MAX_DEPTH} levels deep; a setting is a "
                                                f"number, a string, a boolean or a flat list"])
    d = copy.deepcopy(d)
    _apply_overrides(d, overrides, checker)

    for section in d:
        if section not in _SCHEMA:
            checker.problem(section, _unknown(section, list(SECTIONS), "section"))
    raws: dict[str, dict | None] = {}
    for section in SECTIONS:
        raw = d.get(section, _BAD)
        if raw is _BAD or raw is None and section not in _REQUIRED_SECTIONS:
            if section in _REQUIRED_SECTIONS:
                checker.problem(section, "missing section")
                raws[section] = None
            else:
                raws[section] = {}
            continue
        if not isinstance(raw, dict):
            checker.problem(section, f"expected an object {{...}}, got {_show(raw)}")
            raws[section] = None
            continue
        for dup in getattr(raw, "duplicates", ()):
            checker.problem(f"{section}.{dup}", "given twice; keep one")
        checker.unknown_keys(section, raw, _all_names(_SCHEMA[section]))
        raws[section] = raw

    model = _read_model(raws["model_params"], model_type, checker)
    training = _read_training(raws["training_params"], checker)
    optim = _read_optim(raws["optim_params"], checker)
    _cross_checks(model, training, optim, raws, checker)
    if checker.problems:
        raise ConfigError.from_problems(shown, checker.problems)

    # Resolve the defaults that depend on other keys.
    model["embd_dropout"] = model["dropout"] if model["embd_dropout"] is None else model["embd_dropout"]
    if training["val_batch_size"] is None:
        training["val_batch_size"] = training["batch_size"]
    # The reference validated `valid_steps` batches every valid_steps / 5% steps (its train.py).
    if training["valid_every"] is None:
        training["valid_every"] = VALID_EVERY_PER_VALID_STEP * training["valid_steps"]
    if "valid_batches" not in raws["training_params"]:  # an explicit null keeps the whole split
        training["valid_batches"] = training["valid_steps"]
    if training["sample_every"] is None:
        training["sample_every"] = training["valid_every"]
    if training["permutation"] is not None:
        training["permutation"] = tuple(training["permutation"])
    if training["run_name"] is None:
        training["run_name"] = default_run_name(source, training["backwards"], training["permutation"])
    optim["betas"] = tuple(float(b) for b in optim["betas"])
    return Config(
        model=ModelConfig(**model),
        training=TrainingConfig(**training),
        optim=OptimConfig(**optim),
        source_path=source,
        notes=checker.notes,
    )


def default_run_name(source_path: Path | None, backwards: bool, permutation) -> str:
    """A run's name when its config gives none: the config file's stem and the direction."""
    stem = source_path.stem if source_path is not None else "run"
    return stem + ("_bw" if backwards else "_fw" if permutation is None else "_perm")


def _read_model(raw: dict | None, model_type: str | None, c: _Checker) -> dict:
    raw = dict(raw) if raw is not None else None
    if raw is None:
        return {k.name: _BAD for k in _MODEL_KEYS}
    if model_type is not None:
        old = raw.get("model_type")
        if old is not None and old != model_type:
            c.notes.append(f"model_params.model_type {_show(old)} replaced by the model type asked for ({model_type!r})")
        raw["model_type"] = model_type
    out: dict[str, Any] = {}
    if "model_type" not in raw and "desired_attn_length" in raw and raw.get("n_heads") is None:
        c.problem(
            "model_params.model_type",
            "missing: this is a GRU/LSTM config (desired_attn_length, no n_heads); "
            'run it with --model gru or --model lstm, or add "model_type": "gru" (or "lstm") to model_params',
        )
        out["model_type"] = _BAD
    for key in _MODEL_KEYS:
        if key.name not in out:
            out[key.name] = c.read("model_params", raw, key)
    mtype = out["model_type"]
    if mtype == "gpt" and "n_heads" in raw and raw["n_heads"] is None:
        c.problem("model_params.n_heads", "expected an integer for model_type 'gpt', got null")
        out["n_heads"] = _BAD
    elif mtype == "gpt" and "n_heads" not in raw:
        c.problem("model_params.n_heads", 'missing: required for model_type "gpt" (a GRU or LSTM config needs "model_type" or --model)')
        out["n_heads"] = _BAD
    elif mtype in ("gru", "lstm"):
        if out["n_heads"] is not None and out["n_heads"] is not _BAD:
            c.problem("model_params.n_heads", f"only for model_type 'gpt' (this config is {mtype!r}); remove it")
        out["n_heads"] = None
        for name in ("mlp_ratio", "attention"):
            default = next(k.default for k in _MODEL_KEYS if k.name == name)
            if name in raw and out[name] is not _BAD and out[name] != default:
                c.notes.append(f"model_params.{name} has no effect on a {mtype.upper()} model")
    return out


def _read_training(raw: dict | None, c: _Checker) -> dict:
    if raw is None:
        return {k.name: _BAD for k in _TRAINING_KEYS}
    out = {key.name: c.read("training_params", raw, key) for key in _TRAINING_KEYS}
    # Only when true: false asked the reference for an exact shuffle, which arrows always does. (A
    # note on false was said again by every run config a study writes, every default filled in.)
    if raw.get("fast_scrambling") is True:
        c.notes.append("training_params.fast_scrambling has no effect: arrows always shuffles windows by a fast exact permutation")
    return out


def _read_optim(raw: dict | None, c: _Checker) -> dict:
    raw = raw if raw is not None else {}
    return {key.name: c.read("optim_params", raw, key) for key in _OPTIM_KEYS}


def _ok(*values) -> bool:
    return all(v is not _BAD for v in values)


def _cross_checks(model: dict, training: dict, optim: dict, raws: dict, c: _Checker) -> None:
    heads, dim, length = model["n_heads"], model["embed_dim"], model["attn_length"]
    if _ok(heads, dim) and heads is not None and dim % heads:
        c.problem("model_params.n_heads", f"{heads} does not divide embed_dim {dim}")

    perm, backwards = training["permutation"], training["backwards"]
    if _ok(perm) and perm is not None:
        _check_permutation(perm, length, c)
        if backwards is True:
            c.problem("training_params.permutation", "not with backwards: true (a permutation already fixes the reading order; the reversed one is the backward run)")

    tr = raws.get("training_params") or {}
    shrink = optim["lr_shrink"]
    if _ok(shrink, training["cooldown_finish"]) and training["cooldown_finish"] is None and shrink > 1:
        # Allowed (the reference allowed it), but more likely a slip for 1/lr_shrink: said, not refused.
        c.notes.append(f"optim_params.lr_shrink {shrink} is above 1: each warm restart multiplies the learning rate by it, "
                       f"so it grows without bound ({shrink}ⁿ after n restarts); a value below 1 shrinks it")
    if _ok(training["cooldown_finish"]) and training["cooldown_finish"] is not None:
        if optim["oscil_steps"] not in (None, _BAD) or optim["lr_shrink"] not in (1.0, _BAD):
            c.notes.append("optim_params.oscil_steps and lr_shrink have no effect with training_params.cooldown_finish (warmup → constant → linear cooldown)")
        steps, warm = training["steps_to_train"], optim["warmup_steps"]
        if _ok(steps, warm) and steps is not None:
            cool = math.ceil(training["cooldown_finish"] * steps)
            if warm + cool > steps:
                c.problem(
                    "optim_params.warmup_steps",
                    f"{warm} warmup steps and a cooldown of {cool} steps (cooldown_finish) do not fit in steps_to_train {steps}",
                )
    every, steps = training["valid_every"], training["valid_steps"]
    # Not for valid_steps at its default: the run configs a study writes (every default filled in)
    # said it for a valid_every the user gave alone.
    default_steps = next(k.default for k in _TRAINING_KEYS if k.name == "valid_steps")
    if "valid_steps" in tr and _ok(every, steps) and every is not None and steps != default_steps and every != VALID_EVERY_PER_VALID_STEP * steps:
        c.notes.append(f"training_params.valid_every ({every}) sets the validation cadence, instead of the "
                       f"{VALID_EVERY_PER_VALID_STEP} × valid_steps = {VALID_EVERY_PER_VALID_STEP * steps} steps the reference would use")

    lr, lr_min = optim["lr"], optim["lr_min"]
    if _ok(lr, lr_min) and lr_min > lr:
        c.problem("optim_params.lr_min", f"{lr_min:g} is above lr {lr:g}")


def _check_permutation(perm: list, length: Any, c: _Checker) -> None:
    where = "training_params.permutation"
    bad = [x for x in perm if isinstance(x, bool) or not isinstance(x, int)]
    if bad:
        c.problem(where, f"expected a list of integers, found {_show(bad[0])}")
        return
    if length is _BAD:
        return
    problems = []
    if len(perm) != length:
        problems.append(f"has {len(perm)} entries, attn_length is {length}")
    seen: dict[int, int] = {}
    for x in perm:
        seen[x] = seen.get(x, 0) + 1
    twice = sorted(x for x, n in seen.items() if n > 1)
    missing = sorted(set(range(length)) - set(seen))
    outside = sorted(x for x in seen if not 0 <= x < length)
    for label, xs in (("repeated", twice), ("missing", missing), ("out of range", outside)):
        if xs:
            shown = ", ".join(map(str, xs[:8])) + (", ..." if len(xs) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        c.problem(where, f"not a permutation of range({length}) (attn_length): " + "; ".join(problems))
    elif perm == list(range(length)):
        c.notes.append("training_params.permutation is the identity: the same as a forward run")
    elif perm == list(range(length - 1, -1, -1)):
        c.notes.append("training_params.permutation is the reversal: the same as backwards: true")


def load_config(
    path: str | Path,
    *,
    model_type: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Read a reference-format JSON config, apply `overrides` (section -> {key: value}, e.g. from
    command-line flags; a key replaces its alias), set `model_params.model_type` to `model_type`
    when given (`--model`), then validate and resolve it.

    Raises `ConfigError` listing every problem (message starting with the path), or
    `FileNotFoundError` (an `OSError`) when the file cannot be read. The dataset's existence is
    not checked here: see `check_paths`."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        # utf-8-sig: a UTF-8 file may begin with a byte-order mark (Windows editors write one).
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf16 = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError.from_problems(path, [f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}{utf16}; save it as UTF-8"]) from None
    try:
        d = json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as e:
        # Some of json's messages end with "at" ("Unterminated string starting at"): the place follows.
        raise ConfigError.from_problems(path, [f"not valid JSON: {e.msg.removesuffix(' at')} at line {e.lineno}, column {e.colno}"]) from None
    except RecursionError:  # Python's reader recurses once per level: a traceback, not a message, before
        raise ConfigError.from_problems(path, ["not a config: its lists or objects are nested thousands of levels deep, more than "
                                               "Python's JSON reader can read (a config has three levels: sections, their keys, "
                                               "a permutation's list)"]) from None
    return config_from_dict(d, model_type=model_type, overrides=overrides, source_path=path)


# ---------------------------------------------------------------------------------------------
# Paths and data


@dataclass(frozen=True)
class ResolvedPaths:
    """Where `check_paths` found things: absolute paths."""

    dataset_folder: Path
    tokenizer_path: Path | None


def _resolve(value: str, config: Config, key: str) -> tuple[Path | None, str]:
    """(the absolute path found, a note) or (None, why not)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return (p, "") if p.exists() else (None, f"{value!r} does not exist")
    here = Path.cwd() / p
    if here.exists():
        return here.absolute(), ""
    tried = [str(here)]
    if config.source_path is not None:
        beside = config.source_path.parent / p
        if beside.exists():
            return beside.absolute(), f"training_params.{key} {value!r} is not in the current directory; using {beside}, beside the config file"
        if str(beside) not in tried:
            tried.append(str(beside))
    return None, f"{value!r} not found (looked for {' and '.join(tried)})"


def dataset_problems(path: str | Path) -> list[str]:
    """The problem `check_paths` would report about the dataset_folder of the config file at `path`,
    read raw: for listing beside the problems of a config that does not load. Empty when the
    dataset is found or the file cannot say (no such key, not JSON)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))["training_params"]["dataset_folder"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []
    if not isinstance(value, str):
        return []
    source = SimpleNamespace(source_path=path.absolute())
    found, why = _resolve(value, source, "dataset_folder")
    return [] if found is not None else [f"training_params.dataset_folder: {why}"]


def check_paths(config: Config, *, vocab_size_of_data: int | None) -> ResolvedPaths:
    """Check what `load_config` leaves alone: that `dataset_folder` exists — a relative path is
    looked up in the current directory first, then beside the config file (a note in
    `config.notes` says when the latter was used) — and that the model's vocabulary holds the
    data's (`vocab_size_of_data`, when known). Every problem goes into one `ConfigError`.

    `tokenizer_path` is looked up the same way, but a missing one is only a note (it is optional,
    used to decode samples; a reference config must run with only `dataset_folder` changed): its
    `ResolvedPaths.tokenizer_path` is then None. Returns the absolute paths found;
    `config.with_paths(...)` makes a config that uses them."""
    c = _Checker()
    dataset, why = _resolve(config.training.dataset_folder, config, "dataset_folder")
    if dataset is None:
        c.problem("training_params.dataset_folder", why)
    elif why:
        c.notes.append(why)
    tokenizer = None
    if config.training.tokenizer_path is not None:
        # Optional (it only decodes samples), and reference configs must run with only
        # dataset_folder changed: a tokenizer that is not there is a note, not an error.
        tokenizer, why = _resolve(config.training.tokenizer_path, config, "tokenizer_path")
        if tokenizer is None:
            c.notes.append(f"training_params.tokenizer_path {why}; samples cannot be decoded with it")
        elif why:
            c.notes.append(why)
        if tokenizer is not None and dataset is not None and (dataset / "manifest.json").is_file():
            c.notes.append(f"training_params.tokenizer_path has no effect: the token store {dataset} decodes "
                           "with its own tokenizer, the one its ids were made with (tokenizer_path is for .h5 files)")
    if vocab_size_of_data is not None and config.model.vocab_size < vocab_size_of_data:
        c.problem("model_params.vocab_size", f"{config.model.vocab_size} is smaller than the data's vocabulary ({vocab_size_of_data} ids)")
    config.notes.extend(n for n in c.notes if n not in config.notes)
    if c.problems:
        raise ConfigError.from_problems(config.source_path, c.problems)
    assert dataset is not None
    return ResolvedPaths(dataset_folder=dataset, tokenizer_path=tokenizer)
