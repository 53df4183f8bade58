"""`arrows compare`: a forward and a backward run evaluated on the same validation spans (or a
forward run and one trained in a permuted window order, the reference's later experiment: below,
"backward" stands for either).

Both models score the same windows: the same stream ranges of the validation split, read forwards
by one and flipped by the other, so they predict exactly the same tokens. Windows are taken
`eval_stride` apart (a multiple of the runs' stride, at least the window length), so they do not
overlap; the paired bootstrap resamples them in blocks of neighbours, since windows of the same
section of a text are alike (see `paired_bootstrap`).

The asymmetry is δ = (L_bw − L_fw) / L_fw with L the mean loss in nats per token (a ratio: the same
in bits); δ > 0 means the backward model's loss is higher (a forward arrow). Its 95% interval is the
percentile interval of δ over bootstrap resamples of the windows (the same resample for both
directions: paired), expanded for small window counts (Hesterberg's expanded percentile interval:
the plain one covers ~80% with 5 windows, ~90% with 20). It measures evaluation noise only. With
several seeds, the summary also gives an interval that includes training noise (`seed_low`,
`seed_high`): the seed-averaged δ ± √((t·sd/√K)² + (z·se)²), sd the spread of the K seeds' δ, se
the bootstrap standard error over windows.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

from arrows.errors import InputError

STUDY_FILE = "study.json"


# ---- statistics ---------------------------------------------------------------------------------
def paired_bootstrap(fw: np.ndarray, bw: np.ndarray, *, resamples: int = 2000, level: float = 0.95, seed: int = 0,
                     block: int | None = None) -> dict:
    """δ = (mean bw − mean fw) / mean fw over paired per-window losses (each window's mean loss per
    token; every window has as many tokens), with an expanded percentile bootstrap interval: the
    percentiles at tails Φ(−√(n/(n−1))·t_{n−1}) instead of (1 − level)/2, which corrects the plain
    percentile interval's narrowness with few windows (and is the same for thousands). `se` is the
    standard deviation of the resampled δ.

    Windows are resampled in circular blocks of consecutive windows: neighbouring windows of a text
    are alike (a section, a document), and resampling them one by one took them for independent. On
    English text (210 windows, a small GPT each way) the standard error of δ came out 22% larger in
    blocks of 10 than one by one. The block length is chosen from the data (`block_length`) on δ's
    linearisation bw − (1 + δ)·fw, the series whose mean δ's error follows; `block` forces one."""
    fw, bw = np.asarray(fw, dtype=np.float64), np.asarray(bw, dtype=np.float64)
    if fw.shape != bw.shape or fw.ndim != 1 or len(fw) == 0:
        raise ValueError(f"need two equal-length, non-empty 1-D arrays, got {fw.shape} and {bw.shape}")
    _check_resamples(resamples)
    n = len(fw)
    if n < 2:
        raise InputError("an interval needs at least 2 windows (one window says nothing of the noise); evaluate more windows")
    bad = int((~np.isfinite(fw)).sum() + (~np.isfinite(bw)).sum())
    if bad:
        raise InputError(f"{bad} per-window loss(es) are not finite (NaN or inf): a model diverged, or its checkpoint is broken")
    delta = (bw.mean() - fw.mean()) / fw.mean()
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    block = block_length(bw - (1 + delta) * fw) if block is None else block
    blocks = -(-n // block)  # enough blocks to cover n windows; the last one is cut
    # Resample in chunks: resamples × n indices at once could be large.
    chunk = max(1, 2_000_000 // n)
    for a in range(0, resamples, chunk):
        b = min(resamples, a + chunk)
        starts = rng.integers(0, n, size=(b - a, blocks))
        idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(b - a, -1)[:, :n]  # circular: the end wraps to the start
        f, g = fw[idx].sum(axis=1), bw[idx].sum(axis=1)
        deltas[a:b] = (g - f) / f
    tail = NormalDist().cdf(-math.sqrt(n / (n - 1)) * t_quantile(1 - (1 - level) / 2, n - 1))
    lo, hi = np.quantile(deltas, [tail, 1 - tail])
    return {"delta": float(delta), "low": float(lo), "high": float(hi), "level": level, "resamples": resamples, "windows": n,
            "block": block, "se": float(deltas.std(ddof=1))}


# Under independent windows the standard error of δ in blocks 4× as long exceeded the chosen
# blocks' by more than 30% in none of 180 simulated texts (126 to 1,000 windows); on the English
# Debian text (126 windows) it was 35% larger.
LONGER_BLOCK_RATIO = 1.3


def dependence_note(fw: np.ndarray, bw: np.ndarray, stats: dict, *, resamples: int, seed: int) -> list[str]:
    """A note when the windows stay alike over stretches longer than the bootstrap's blocks (the
    sections of one document): resampled in blocks 4× as long, δ's standard error is over 30%
    larger, so the interval from `stats` is too narrow. Only with 6 such blocks or more."""
    longer = 4 * stats["block"]
    if stats["windows"] < 6 * longer:
        return []
    se_longer = paired_bootstrap(fw, bw, resamples=resamples, seed=seed, block=longer)["se"]
    if se_longer <= LONGER_BLOCK_RATIO * stats["se"]:
        return []
    return [f"neighbouring windows stay alike beyond blocks of {stats['block']}: in blocks of {longer} the standard error of δ is "
            f"{100 * (se_longer / stats['se'] - 1):.0f}% larger, so the 95% interval is too narrow (the sections of one text); "
            "evaluate on more text, from many documents"]


def block_length(series: np.ndarray) -> int:
    """Block length for the circular block bootstrap of the mean of `series`, chosen from the data
    (Politis & White 2004, with the correction of Patton, Politis & White 2009): the length that
    minimises the error of the bootstrap's variance, b = (2·G² / D)^(1/3) · n^(1/3), where G and D
    come from the autocovariances R(k) up to the lag M where they stop mattering, weighted by a
    flat-top window λ: G = Σ λ(k/M)·|k|·R(k), D = 4/3·(Σ λ(k/M)·R(k))². Strongly alike neighbours
    get long blocks (an AR(1) of coefficient 0.74 over 210 windows: about 15).

    Never shorter than the cube root of n, the usual order for a block bootstrap (5 for 210 windows,
    10 for 1,000): with a few dozen windows the estimate is noisy and may call independent windows
    dependent or the reverse, and too short a block is the costly mistake (an interval too narrow).
    Below 32 windows the cube root alone: there the estimate's spurious long blocks cost more than
    it finds (independent windows, 20 of them: coverage 92% instead of 94.5%). At most
    min(3√n, n/3)."""
    x = np.asarray(series, dtype=np.float64)
    n = len(x)
    least = max(1, int(round(n ** (1 / 3), 9)))
    x = x - x.mean()
    variance = x @ x / n
    if n < 32 or variance == 0:
        return least
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))  # insignificant lags in a row that end the search
    max_lag = min(n - 1, math.ceil(math.sqrt(n)) + k_n)
    rho = np.array([x[: n - k] @ x[k:] / n for k in range(max_lag + 1)]) / variance
    significant = np.abs(rho[1:]) >= 2 * math.sqrt(math.log10(n) / n)  # index j: lag j + 1
    # m̂: the first lag after which k_n autocorrelations in a row are insignificant (else the last
    # significant one), and M = 2·m̂.
    runs = [m for m in range(len(significant) - k_n + 1) if not significant[m : m + k_n].any()]
    m_hat = max(1, runs[0]) if runs else int(np.flatnonzero(significant)[-1]) + 1
    big_m = min(2 * m_hat, max_lag)
    lags = np.arange(-big_m, big_m + 1)
    t = np.abs(lags) / big_m
    flat_top = np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2 * (1 - t), 0.0))
    autocov = variance * rho[np.abs(lags)]
    g = float(np.sum(flat_top * np.abs(lags) * autocov))
    d = 4 / 3 * float(np.sum(flat_top * autocov)) ** 2
    if d == 0 or g == 0:
        return least
    b = (2 * g * g / d) ** (1 / 3) * n ** (1 / 3)
    return int(min(max(least, round(b)), math.ceil(min(3 * math.sqrt(n), n / 3))))


@functools.lru_cache(maxsize=256)  # the same few (p, df) pairs come back for every pair and resample run
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 ≤ p < 0.9995) of Student's t with `df` degrees of freedom (numpy only:
    the CDF integrated on a fine grid; 4 digits, e.g. 12.706 for p = 0.975, df = 1)."""
    if df > 10_000:
        return NormalDist().inv_cdf(p)
    x = np.linspace(0.0, 700.0 if df < 2 else 60.0, 700_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = c * (1 + x * x / df) ** (-(df + 1) / 2)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * (x[1] - x[0]))])
    return float(np.interp(p - 0.5, cdf, x))


def seed_interval(deltas: np.ndarray, delta: float, se: float, level: float = 0.95) -> tuple[float, float]:
    """An interval for δ that includes training noise, from K ≥ 2 seeds scored on the same windows:
    δ ± √((t_{K−1}·sd/√K)² + (z·se)²), with sd the spread of the seeds' δ (training noise, and each
    seed's own evaluation noise) and se the bootstrap standard error of the seed-averaged δ over
    windows (the noise of which windows the text gave, shared by every seed). Slightly conservative:
    each seed's evaluation noise is in both terms."""
    k = len(deltas)
    p = 1 - (1 - level) / 2
    half = math.hypot(t_quantile(p, k - 1) * float(np.std(deltas, ddof=1)) / math.sqrt(k), NormalDist().inv_cdf(p) * se)
    return delta - half, delta + half


def _check_resamples(resamples: int) -> None:
    # The interval is taken from the quantiles of the resamples: it needs at least two.
    if not isinstance(resamples, (int, np.integer)) or resamples < 2:
        raise InputError(f"resamples must be an integer of at least 2, not {resamples!r}")


# ---- runs ---------------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    config: dict
    checkpoint: Path
    metrics: list[dict] = field(default_factory=list)

    @property
    def training(self) -> dict:
        return self.config["training_params"]

    @property
    def model(self) -> dict:
        return self.config["model_params"]

    @property
    def direction(self) -> str:
        if self.training.get("backwards"):
            return "backward"
        return "permutation" if self.training.get("permutation") is not None else "forward"

    @property
    def permutation(self) -> list[int] | None:
        """The window order of a permutation run (position k of its reading order is the
        window's position permutation[k]), else None."""
        perm = self.training.get("permutation")
        return None if perm is None else [int(i) for i in perm]

    @property
    def seed(self) -> int:
        return int(self.training.get("seed", 0))


def load_run(path: Path) -> Run:
    path = Path(path)
    config_file = path / "config.json"
    if not path.exists():
        raise InputError(f"{path}: no such folder; give folders written by `arrows train` or `arrows study`")
    if not config_file.is_file():
        raise InputError(f"{path}: not a run folder (no config.json); give folders written by `arrows train` or `arrows study`")
    checkpoint = path / "checkpoints" / "latest.pt"
    if not checkpoint.is_file():
        raise InputError(f"{path}: no checkpoint yet ({checkpoint} is missing); train it first")
    from arrows.metrics import read

    metrics = read(path) if (path / "metrics.jsonl").is_file() else []
    run = Run(path, json.loads(config_file.read_text()), checkpoint, metrics)
    # The runs' folders may move (they are found wherever they are); their data is named by the
    # path it was trained from. Gone from there, evaluation failed with only "/x/tokens: No such
    # file or directory", not which run named it or what to do.
    data = Path(run.training["dataset_folder"])
    if not data.exists():
        raise InputError(f"{path}: its data {data} (training_params.dataset_folder in {config_file}) is not there, moved or deleted; "
                         "put it back at that path, or give its new path there")
    return run


def training_now(run_dir: Path) -> bool:
    """Whether an `arrows train` is running in `run_dir` now: it holds the folder's lock (`.lock`,
    see `arrows.train`) while it trains (no lock file: never trained here, or a copy without it)."""
    from arrows.folder_lock import held_elsewhere

    return held_elsewhere(Path(run_dir) / ".lock")


def _data_identity(run: Run) -> dict:
    """What the data of a run is: the store's content (tokenizer hash, inputs' fingerprints,
    token count), so that two copies of one store compare equal and two stores at one path do not."""
    folder = Path(run.training["dataset_folder"])
    manifest = folder / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        return {"tokenizer": m["tokenizer"]["hash"], "inputs": [i["fingerprint"] for i in m["inputs"]], "tokens": m["tokens"]}
    return {"file": str(folder.resolve()), "size": folder.stat().st_size if folder.exists() else None}


_DATA_FIELDS = {"tokenizer": "the tokenizers", "inputs": "the input files", "tokens": "the token counts", "file": "the files", "size": "the sizes"}


def _describe_data(identity: dict) -> str:
    """A `_data_identity` for people: "300,000 tokens, tokenizer dfe102b1…, input xxh3:1a2726dc…"."""
    if "tokens" not in identity:
        return f"a file of {identity['size']:,} bytes" if identity["size"] is not None else "missing"
    inputs = [f[:13] + "…" for f in identity["inputs"]]  # "xxh3:" and 8 hex digits tell them apart
    shown = ", ".join(inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    return f"{identity['tokens']:,} tokens, tokenizer {identity['tokenizer'][:8]}…, input{'s' if len(inputs) != 1 else ''} {shown}"


def mismatches(fw: Run, other: Run) -> list[str]:
    """Why two runs cannot be compared as a forward run and a backward (or permuted) one (empty:
    they can)."""
    problems = []
    if fw.direction != "forward":
        problems.append(f"{fw.path} is a {fw.direction} run; the first run must be forward")
    if other.direction == "forward":
        problems.append(f"{other.path} is a forward run; the second run must be backward, or trained in a permuted window order")
    return problems + setup_differences(fw, other)


BACKWARD_ORDER = {"direction": "backward", "label": "backward", "symbol": "bw", "permutation": None}


def second_order(run: Run) -> dict:
    """How the report names the second run's order: backward, or permuted (with its permutation)."""
    if run.direction == "backward":
        return dict(BACKWARD_ORDER)
    return {"direction": "permutation", "label": "permuted", "symbol": "perm", "permutation": run.permutation}


def setup_differences(a: Run, b: Run) -> list[str]:
    """What differs between two runs' data, vocabulary, windows and split."""
    problems = []
    x, y = _data_identity(a), _data_identity(b)
    if x != y:
        if x.keys() != y.keys():
            differ = "a token store and a file"
        else:
            names = [_DATA_FIELDS[k] for k in x if x[k] != y[k]]
            differ = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
            differ += " differ"
        problems.append(f"data: {differ}: {a.training['dataset_folder']} ({_describe_data(x)}) "
                        f"vs {b.training['dataset_folder']} ({_describe_data(y)})")
    for section, key in (("model_params", "attn_length"), ("model_params", "vocab_size"), ("training_params", "valid_fraction"), ("training_params", "stride")):
        u, v = a.config[section].get(key), b.config[section].get(key)
        if u != v:
            problems.append(f"{section}.{key}: {u!r} in {a.path}, {v!r} in {b.path}")
    return problems


def repeated_seeds(runs: list[tuple[Run, Run]]) -> list[str]:
    """Pairs that are not distinct seeds: a run folder given twice, or two pairs trained with one
    seed (a study and its copy). Counted as seeds, they made a "mean of 2 seeds" whose spread, 0,
    was taken for training noise: an interval narrower than evaluation noise alone."""
    problems, folders, seeds = [], {}, {}
    for fw, other in runs:
        for run in (fw, other):
            real = Path(run.path).resolve()
            if real in folders:
                problems.append(f"{run.path} is given twice (also as {folders[real]}); give each run once")
            folders.setdefault(real, run.path)
        if fw.seed in seeds and Path(fw.path).resolve() != Path(seeds[fw.seed]).resolve():
            problems.append(f"{seeds[fw.seed]} and {fw.path} are both trained with seed {fw.seed}: pairs are seeds, and two of one "
                            "seed are the same training, no measure of its noise; give one pair per seed (arrows study --seeds K trains them)")
        seeds.setdefault(fw.seed, fw.path)
    return problems


# Settings that may differ between a forward and a backward run without making them incomparable,
# but that δ then measures too. The attention and head_loss kernels compute the same function.
_KERNEL_KEYS = {"attention", "head_loss"}


def training_differences(fw: Run, bw: Run, steps_fw: int, steps_bw: int) -> list[str]:
    """What differs in how two comparable runs were trained (model, optimizer, batch, steps): notes,
    since δ then measures those differences along with the direction."""
    found, other = [], second_order(bw)["label"]
    if steps_fw != steps_bw:
        found.append(f"trained {steps_fw:,} steps forward and {steps_bw:,} {other}")
    sections = [("model_params", k) for k in fw.model if k not in _KERNEL_KEYS]
    sections += [("optim_params", k) for k in fw.config.get("optim_params", {})]
    # The seed too: a study gives both directions one (the same initial weights and window order);
    # runs trained apart with two seeds differ by that noise as well, and the report named the
    # pair by the forward run's seed alone.
    sections += [("training_params", k) for k in ("batch_size", "aggregate", "seed")]
    for section, key in sections:
        u, v = fw.config[section].get(key), bw.config[section].get(key)
        if u != v:
            found.append(f"{section}.{key} {u!r} forward, {v!r} {other}")
    if not found:
        return []
    return [f"the forward and {other} runs of seed {fw.seed} differ: {'; '.join(found)}. δ measures that difference too, not the "
            f"direction alone{' (continue the shorter one with `arrows train CONFIG --more N`)' if steps_fw != steps_bw else ''}"]


def resolve_pairs(paths: list[Path]) -> list[tuple[Path, Path]]:
    """`RUN` (a study folder) → its pairs; `FW BW [FW BW ...]` → those pairs."""
    if len(paths) == 1:
        from arrows.study import finish_command, read_study_record

        folder = Path(paths[0])
        record = read_study_record(folder)
        if record is None:
            raise InputError(f"{folder}: not a study folder (no {STUDY_FILE}); give a study folder, or FW BW run folders in pairs")
        pairs = [(folder / fw, folder / bw) for fw, bw in record["pairs"]]
        # A study stopped before some run's first checkpoint: said as such, with the command that
        # finishes it (each such run was named "not a run folder" or "train it first").
        unfinished = [str(run) for pair in pairs for run in pair if not (run / "checkpoints" / "latest.pt").is_file()]
        if unfinished and any(training_now(run) for pair in pairs for run in pair):
            # `arrows study` is running in it: its own command would be refused ("another arrows train").
            raise InputError(f"{folder}: the study is unfinished and training now: {', '.join(unfinished)} {'has' if len(unfinished) == 1 else 'have'} "
                             "no checkpoint yet; wait for the study to end (it compares at the end)")
        if unfinished:
            raise InputError(f"{folder}: the study is unfinished: {', '.join(unfinished)} {'has' if len(unfinished) == 1 else 'have'} no "
                             f"checkpoint yet; finish it with `{finish_command(folder, record)}` (it compares at the end)")
        return pairs
    if len(paths) % 2:
        raise InputError(f"give a study folder, or forward and backward (or permuted) run folders in pairs (FW BW FW BW ...); got {len(paths)} paths")
    return [(Path(paths[i]), Path(paths[i + 1])) for i in range(0, len(paths), 2)]


# ---- evaluation ---------------------------------------------------------------------------------
@dataclass
class Evaluation:
    window_loss: np.ndarray  # (windows,) mean loss per token of each window
    position_loss: np.ndarray  # (L,) mean loss at each position of the window, in the model's order
    target_stream_positions: np.ndarray | None  # (windows, L) stream index of each target
    target_losses: np.ndarray | None  # (windows, L) each target's loss (kept for per-field breakdowns)
    tokens: int
    step: int  # the step of the checkpoint evaluated


def eval_stride(run: Run) -> int:
    """Disjoint windows that are also the runs' own validation windows: the smallest multiple of
    the run's stride that is at least the window length."""
    L = int(run.model["attn_length"])
    stride = run.training.get("stride") or max((L - 1) // 2, 1)
    return stride * math.ceil(L / stride)


def evaluate(run: Run, *, device: str, max_windows: int | None, batch_size: int = 64, keep_targets: bool = False) -> Evaluation:
    import torch

    from arrows import checkpoint
    from arrows.loader import WindowLoader

    t, L = run.training, int(run.model["attn_length"])
    loader = WindowLoader(
        t["dataset_folder"], L, batch_size, backward=run.direction == "backward", permutation=run.permutation, split="valid",
        valid_fraction=t["valid_fraction"], stride=eval_stride(run), shuffle=False, drop_last=False,
        vocab_size=run.model["vocab_size"], device=device,
    )
    if loader.windows == 0:
        raise InputError(f"{run.path}: the validation split of {t['dataset_folder']} holds no window of {L} tokens; use more data or a larger valid_fraction")
    # The step the report gives is the checkpoint's: the metrics of a run killed or still training
    # run ahead of its last checkpoint.
    model, step = checkpoint.load_model_and_step(run.config, run.checkpoint)
    model = model.to(device)
    n_windows = loader.windows if max_windows is None else min(loader.windows, max_windows)
    losses = np.empty((n_windows, L), dtype=np.float64) if keep_targets else None
    window_loss = np.empty(n_windows)
    position_sum = np.zeros(L)
    done = 0
    with torch.no_grad():
        for x, y in loader:
            take = min(len(x), n_windows - done)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
                lp = model.loss_per_position(x[:take], y[:take]).double().cpu().numpy()
            window_loss[done : done + take] = lp.mean(axis=1)
            position_sum += lp.sum(axis=0)
            if losses is not None:
                losses[done : done + take] = lp
            done += take
            if done >= n_windows:
                break
    stream = None
    if keep_targets:
        starts = loader.window_starts(0)[:n_windows]
        offsets = np.arange(L)[::-1] if run.direction == "backward" else np.array(run.permutation or range(L))
        stream = starts[:, None] + offsets[None, :]
    return Evaluation(window_loss, position_sum / n_windows, stream, losses, n_windows * L, step)


# ---- synthetic languages: loss by field of the line ---------------------------------------------
def synthetic_sidecar(run: Run) -> dict | None:
    """The sidecar of a synthetic language, when the run's data is one tokenized with bytes."""
    from arrows.synth import sidecar_path

    manifest = Path(run.training["dataset_folder"]) / "manifest.json"
    if not manifest.is_file():
        return None
    m = json.loads(manifest.read_text())
    if len(m["inputs"]) != 1 or m["settings"].get("tokenizer") != "bytes":
        return None
    side = sidecar_path(Path(m["inputs"][0]["path"]))
    return json.loads(side.read_text()) if side.is_file() else None


def field_of_positions(tokens: np.ndarray, separators: str, *, line_start: bool = False) -> np.ndarray:
    """For a byte-token stream (id = byte + 1): the index of the field of the line each token is in,
    -1 for separators and newlines. With `line_start`, the range begins a line (the stream's start);
    otherwise the tokens before its first newline get -2 (their line's start is not in the range)."""
    ids = tokens.astype(np.int64) - 1
    newline = ids == ord("\n")
    sep = np.isin(ids, [ord(c) for c in separators]) if separators else np.zeros(len(ids), dtype=bool)
    seps_so_far = np.cumsum(sep)
    last_newline = np.maximum.accumulate(np.where(newline, np.arange(len(ids)), -1))  # at or before each token
    before = np.where(last_newline >= 0, seps_so_far[np.maximum(last_newline, 0)], 0)
    field = seps_so_far - before - sep  # separators strictly before this token, in its line
    field = np.where(sep | newline, -1, field)
    return field if line_start else np.where(last_newline < 0, -2, field)


_LOOK_BACK = 4096  # tokens read before a range to find where its first line starts


@dataclass
class StreamFields:
    """The field of each token of the stream around the evaluated windows (the same windows for
    every run of a comparison): `fields[i]` and `tokens[i]` are those of stream position `start + i`."""
    tokens: np.ndarray
    fields: np.ndarray
    start: int
    names: list[str]

    @classmethod
    def around(cls, run: Run, ev: Evaluation, sidecar: dict) -> "StreamFields":
        from arrows.data import TokenStore

        store = TokenStore(run.training["dataset_folder"])
        lo, hi = int(ev.target_stream_positions.min()), int(ev.target_stream_positions.max()) + 1
        start = max(0, lo - _LOOK_BACK)  # back far enough to see where the first line starts
        tokens = np.asarray(store[start:hi]).astype(np.int64)
        return cls(tokens, field_of_positions(tokens, sidecar["separators"], line_start=start == 0), start, sidecar["fields"])

    def losses(self, ev: Evaluation) -> dict[str, float]:
        """Mean loss of `ev`'s targets in each field (and on the separators)."""
        f = self.fields[ev.target_stream_positions - self.start]
        out = {name: float(ev.target_losses[f == i].mean()) for i, name in enumerate(self.names) if (f == i).any()}
        if (f == -1).any():
            out["separators"] = float(ev.target_losses[f == -1].mean())
        return out

    def chance(self, ev: Evaluation) -> dict[str, float]:
        """Entropy of the token frequencies within each field: what a model pays that guesses."""
        at = ev.target_stream_positions.ravel() - self.start
        tokens, fields = self.tokens[at], self.fields[at]
        return {name: _entropy(np.bincount(tokens[fields == i])) for i, name in enumerate(self.names)}


def _entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the distribution that `counts` are the frequencies of."""
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log(p)).sum())


def unigram_entropy(run: Run) -> float:
    """Entropy of the validation split's token frequencies: the loss of a model that learned only
    which tokens are common. A run at or above it has not learned anything from context."""
    from arrows.data import TokenStore
    from arrows.h5 import h5_tokens

    data = Path(run.training["dataset_folder"])
    ids = h5_tokens(data) if data.is_file() else TokenStore(data)  # a reference .h5, or a token store
    n = len(ids)
    valid = np.asarray(ids[n - int(n * run.training["valid_fraction"]) :])
    return _entropy(np.bincount(valid.astype(np.int64)))


# ---- the comparison -----------------------------------------------------------------------------
def _curves(run: Run) -> dict:
    return {
        "train": [(m["step"], m["loss"]) for m in run.metrics if "loss" in m],
        "valid": [(m["step"], m["valid_loss"]) for m in run.metrics if "valid_loss" in m],
    }


def _synthetic_verdict(sidecar: dict, pairs: list[dict], chance: dict[str, float], summary: dict,
                       frequencies_only: bool = False) -> tuple[str, list[str]]:
    """What the run shows against what the language is built to show, and notes on any field
    that a direction should have computed but did not learn. `frequencies_only`: a run has not
    learned beyond token frequencies (its loss is at their entropy)."""
    notes, states = [], {}  # states: direction → (the field it reads last, how far it learned it)
    names = sidecar["fields"]
    if len(names) >= 2:
        # The field read last is a function of the others (y = A·x, n = p·q, ...): a direction
        # that learned its computation predicts it almost for free.
        last = {"forward": names[-1], "backward": names[0]}
        for direction, field in last.items():
            loss = pairs[0]["fields"][direction].get(field)
            if loss is None:
                continue
            guess = chance.get(field, float("nan"))
            if loss < 0.1 * guess:
                state = "learned"
            elif loss < 0.75 * guess:
                state = "partly learned"
            else:
                state = "NOT learned"
            states[direction] = (field, state)
            notes.append(
                f"{direction}: the field read last, `{field}`, is a function of the rest of the line; it costs {loss:.3f} nats/token "
                f"against {guess:.3f} for a guess: {state}"
            )
    expected = sidecar["expected_arrow"]
    with_seeds = summary.get("seed_low") is not None  # several seeds: the interval that includes training noise
    lo, hi = (summary["seed_low"], summary["seed_high"]) if with_seeds else (summary["low"], summary["high"])
    over = " over seeds" if with_seeds else ""
    measured = "forward" if lo > 0 else "backward" if hi < 0 else "none"
    if expected == "none":
        ok = abs(summary["delta"]) < 0.01
        # Models that learned nothing from context have no arrow whatever the language: within ±1%
        # then confirms nothing (one step of training was "as a reversible language should be").
        verdict = (
            f"Measured δ = {100 * summary['delta']:+.2f}%: within ±1%, but not conclusive: a run has not learned beyond token "
            "frequencies (see the notes), and models that learned nothing show no arrow whatever the language; train longer."
            if ok and frequencies_only else
            f"Measured δ = {100 * summary['delta']:+.2f}%: within ±1%, as a reversible language should be." if ok else
            f"Measured δ = {100 * summary['delta']:+.2f}%: OUTSIDE ±1%, though a reversible language has no arrow; "
            f"the runs are probably not trained far enough (compare their curves)."
        )
    elif states.get(expected, ("", ""))[1] == "NOT learned":
        # The arrow is built in as what the easy direction computes: if it has not learned that, the
        # two models are alike on the hard part and the δ measured, of either sign, is not the
        # language's arrow (a short run's δ was called "NOT the expected one", as if the language
        # or the comparison were wrong).
        found = "the expected one" if measured == expected else f"not the expected {expected} one"
        verdict = (f"Measured: {'a ' + measured + ' arrow' if measured != 'none' else 'no arrow'}, {found}, but not conclusive: the "
                   f"{expected} model has NOT learned `{states[expected][0]}`, the field it can compute, so this δ does not come from "
                   "the language's asymmetry yet; train longer.")
    else:
        ok = measured == expected
        verdict = (
            f"Measured: {'a ' + measured + ' arrow' if measured != 'none' else 'no arrow (the 95% interval' + over + ' includes 0)'}"
            f"{', as expected' if ok else ', NOT the expected one: see the notes on what each direction learned'}."
        )
    return verdict, notes


def compare_runs(pairs: list[tuple[Path, Path]], *, device: str = "cpu", max_windows: int | None = None,
                 resamples: int = 2000, seed: int = 0, reporter=None) -> dict:
    """Evaluate each (forward, backward or permuted) pair on the same validation windows; the report dict."""
    if max_windows is not None and (not isinstance(max_windows, (int, np.integer)) or max_windows < 2):
        raise InputError(f"max_windows must be an integer of at least 2 (or None: every window), not {max_windows!r}; an interval needs 2")
    _check_resamples(resamples)
    runs = [(load_run(f), load_run(b)) for f, b in pairs]
    problems = []
    for fw, bw in runs:
        problems += mismatches(fw, bw)
    for fw, other in runs[1:]:
        problems += setup_differences(runs[0][0], fw)  # every pair scores the same windows
        if other.permutation != runs[0][1].permutation:  # ... in the same order
            a, b = second_order(other)["label"], second_order(runs[0][1])["label"]
            orders = "two different permutations" if a == b else f"{a} and {b}"
            problems.append(f"{other.path} and {runs[0][1].path} read their windows in different orders ({orders}); "
                            "the seeds of one comparison must share the second run's order")
    problems += repeated_seeds(runs)
    if problems:
        raise InputError("these runs cannot be compared:\n  " + "\n  ".join(problems))
    sidecar = synthetic_sidecar(runs[0][0])
    entries, notes, window_losses = [], [], []
    chance, stream = {}, None
    for k, (fw, bw) in enumerate(runs):
        if reporter is not None:
            reporter.update("evaluating", k, len(runs), "pairs")
        f, b = (evaluate(run, device=device, max_windows=max_windows, keep_targets=sidecar is not None) for run in (fw, bw))
        assert f.tokens == b.tokens and len(f.window_loss) == len(b.window_loss)
        for run, e in ((fw, f), (bw, b)):
            if not np.isfinite(e.window_loss).all():
                raise InputError(f"{run.path}: its loss is not finite (NaN or inf) on {int((~np.isfinite(e.window_loss)).sum())} of "
                                 f"{len(e.window_loss)} validation windows: the model diverged, or its checkpoint is broken")
        if len(f.window_loss) < 2:
            raise InputError(f"{fw.path}: the validation split of {fw.training['dataset_folder']} holds 1 window; an interval needs at "
                             f"least 2: use more data or a larger valid_fraction")
        stats = paired_bootstrap(f.window_loss, b.window_loss, resamples=resamples, seed=seed)
        notes += training_differences(fw, bw, f.step, b.step)
        # A run still training (--parallel, or trained on after the study): the report looks final
        # and is not; with both runs at the same checkpoint step nothing else said so.
        notes += [f"{run.path} was still training (an arrows train is running in it): evaluated at its checkpoint of step {e.step:,}; "
                  "compare again once it has ended" for run, e in ((fw, f), (bw, b)) if training_now(run.path)]
        window_losses.append((f.window_loss, b.window_loss))
        entry = {
            # Absolute: the report is read later from other folders (`arrows sweep`), where a path
            # relative to the folder compare ran in named nothing or another run.
            "fw": os.path.abspath(fw.path), "bw": os.path.abspath(bw.path), "seed": fw.seed,
            "steps_fw": f.step, "steps_bw": b.step,
            "loss_fw": float(f.window_loss.mean()), "loss_bw": float(b.window_loss.mean()),
            **stats, "tokens": f.tokens,
            "position_loss_fw": f.position_loss.tolist(), "position_loss_bw": b.position_loss.tolist(),
            "curves": {"forward": _curves(fw), second_order(bw)["label"]: _curves(bw)},
        }
        if sidecar is not None:
            # Identical spans: the same multiset of predicted stream positions.
            assert np.array_equal(np.sort(f.target_stream_positions, axis=None), np.sort(b.target_stream_positions, axis=None))
            if stream is None:
                stream = StreamFields.around(fw, f, sidecar)
                chance = stream.chance(f)
            entry["fields"] = {"forward": stream.losses(f), second_order(bw)["label"]: stream.losses(b)}
        entries.append(entry)
    unigram = unigram_entropy(runs[0][0])
    frequencies_only = False
    for e in entries:
        for direction, key, path in (("forward", "loss_fw", "fw"), (second_order(runs[0][1])["label"], "loss_bw", "bw")):
            if e[key] >= 0.99 * unigram:
                frequencies_only = True
                notes.append(f"the {direction} run {e[path]} has not learned beyond token frequencies: loss {e[key]:.4f} ≥ {unigram:.4f}, the entropy of the validation tokens' frequencies")
    deltas = np.array([e["delta"] for e in entries])
    summary = {
        "loss_fw": float(np.mean([e["loss_fw"] for e in entries])),
        "loss_bw": float(np.mean([e["loss_bw"] for e in entries])),
        "windows": entries[0]["windows"], "tokens": entries[0]["tokens"],
        "delta_seed_mean": float(deltas.mean()),
        "delta_seed_std": float(deltas.std(ddof=1)) if len(deltas) > 1 else None,
        "unigram_entropy": unigram,
    }
    # The headline interval: every pair scored the same windows, so average each window's loss over
    # the seeds and bootstrap those (the mean model pair; with one seed, that pair's own figures).
    mean_fw = np.mean([w[0] for w in window_losses], axis=0)
    mean_bw = np.mean([w[1] for w in window_losses], axis=0)
    summary.update({k: v for k, v in paired_bootstrap(mean_fw, mean_bw, resamples=resamples, seed=seed).items() if k != "windows"})
    notes += dependence_note(mean_fw, mean_bw, summary, resamples=resamples, seed=seed)
    summary["seeds"] = len(entries)
    if summary["windows"] < 20:
        notes.append(f"only {summary['windows']} windows: below about 20 the bootstrap interval is too narrow (simulated, it holds the true δ "
                     "about half the time with 2 windows, 85-95% with 5); evaluate more windows")
    # That interval is evaluation noise only, even with several seeds (the seeds are averaged, not
    # resampled); with two or more, another one that includes the training noise too.
    summary["seed_low"], summary["seed_high"] = seed_interval(deltas, summary["delta"], summary["se"]) if len(deltas) > 1 else (None, None)
    report = {
        "data": runs[0][0].training["dataset_folder"], "attn_length": int(runs[0][0].model["attn_length"]),
        "second": second_order(runs[0][1]), "summary": summary, "pairs": entries, "notes": notes,
    }
    if sidecar is not None and report["second"]["direction"] == "permutation":
        # The language's expected arrow is between reading forward and backward; a permuted order
        # has none to check against: the loss of each field of the line is reported, no verdict.
        report["synthetic"] = {"kind": sidecar["kind"], "expected_arrow": None, "ideal": sidecar.get("nats_per_token", {}).get("ideal"),
                               "chance_by_field": chance, "verdict": "No expected arrow against a permuted order: the loss of each field shows what each order learned."}
    elif sidecar is not None:
        verdict, field_notes = _synthetic_verdict(sidecar, entries, chance, summary, frequencies_only)
        report["synthetic"] = {"kind": sidecar["kind"], "expected_arrow": sidecar["expected_arrow"], "verdict": verdict,
                               "ideal": sidecar.get("nats_per_token", {}).get("ideal"), "chance_by_field": chance}
        report["notes"] = field_notes + notes
    if reporter is not None:
        reporter.update("evaluating", len(runs), len(runs), "pairs", final=True)
    return report
