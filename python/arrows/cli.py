"""The `arrows` command. Kept light: heavy modules (numpy, torch) are imported inside the
commands that need them, so that `arrows --help` answers at once."""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="Train language models forwards and backwards on the same text, and measure the arrow of time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str, option: str) -> int:
    """'1GB' = 10^9 bytes, '128MiB' = 2^27, '5000' = 5000 bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size; write e.g. 1GB, 128MiB or 5000000", param_hint=option)
    unit = (m.group(2) or "").lower().rstrip("b")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise typer.BadParameter(f"{text!r} must be positive", param_hint=option)
    return value


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def friendly_errors(command):
    """User mistakes and OS errors end with one clear message and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from arrows.errors import ArrowsError, CancelledError

        try:
            return command(*args, **kwargs)
        except (CancelledError, KeyboardInterrupt) as e:
            _err(str(e) or "interrupted")
            raise typer.Exit(130)
        except ArrowsError as e:
            _err(str(e))
            raise typer.Exit(1)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            _err(f"{where}{e.strerror or e}")
            raise typer.Exit(1)

    return wrapper


@app.command()
@friendly_errors
def tokenize(
    inputs: List[Path] = typer.Argument(..., help="Text files, or folders whose .txt files (searched recursively, sorted) are used. The corpus is their concatenation in that order; each file is encoded on its own."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: shards, manifest.json, tokenizer.json."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="A tokenizer.json to use, or 'bytes' for plain bytes without merges (id = byte + 1, id 0 = <|endoftext|>). Default: train a byte-level BPE on a sample of the corpus."),
    vocab_size: int = typer.Option(50257, "--vocab-size", help="Vocabulary size of the trained BPE, <|endoftext|> (id 0, the BOS) and the 256 bytes included."),
    sample_bytes: str = typer.Option("1GB", "--sample-bytes", help="Train the BPE on at most this much text, drawn from across the whole corpus (memory stays bounded). Accepts 500MB, 2GiB, ..."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training sample's draw."),
    threads: int = typer.Option(0, "--threads", "-j", help="Encoding threads; 0 = every core. The output does not depend on it."),
    shard_bytes: str = typer.Option("128MiB", "--shard-bytes", help="Input bytes per shard; the unit of resumption. The token stream does not depend on it."),
    strict_utf8: bool = typer.Option(False, "--strict-utf8", help="Stop at the first invalid UTF-8 byte, naming the file and offset (default: replace with U+FFFD and count)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT after its last complete shard; the result is identical to an uninterrupted run. Refused if the inputs or options differ."),
    force: bool = typer.Option(False, "--force", help="Start over in a non-empty OUT, deleting the arrows files there."),
    h5: bool = typer.Option(False, "--h5", help="Also write OUT/tokens.h5 (dataset 'tokens', int32), the reference code's format."),
):
    """Train a byte-level BPE tokenizer (or use one) and encode text into memory-mapped token shards."""
    from arrows.progress import Reporter, human_bytes, human_seconds
    from arrows.tokenize import tokenize as run

    spec = tokenizer or "train"
    if spec not in ("train", "bytes") and not Path(spec).is_file():
        raise typer.BadParameter(f"{spec}: no such tokenizer file (give a tokenizer.json, or 'bytes')", param_hint="--tokenizer")
    if tokenizer is not None and vocab_size != 50257:
        raise typer.BadParameter("--vocab-size applies only when training a tokenizer; drop it or drop --tokenizer", param_hint="--vocab-size")
    with Reporter.from_env() as reporter:
        s = run(
            inputs, out, tokenizer=spec, vocab_size=vocab_size, sample_bytes=parse_size(sample_bytes, "--sample-bytes"),
            seed=seed, threads=threads, shard_bytes=parse_size(shard_bytes, "--shard-bytes"), strict_utf8=strict_utf8,
            resume=resume, force=force, h5=h5, reporter=reporter,
        )
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    tokens, nbytes = s["tokens"], s["input_bytes"]
    lines = [
        f"tokens       {tokens:,} in {s['shards']} shard(s) → {s['out']}",
        f"input        {human_bytes(nbytes)} ({nbytes:,} bytes), {nbytes / max(tokens, 1):.2f} bytes/token",
        f"vocabulary   {s['vocab_size']:,}",
        f"time         {human_seconds(s['seconds'])} ({nbytes / 1e6 / max(s['seconds'], 1e-9):.1f} MB/s overall)",
        f"replaced     {s['replaced_bytes']:,} invalid UTF-8 bytes (→ U+FFFD)",
    ]
    if s["resumed_at"]:
        lines.append(f"resumed      at input byte {s['resumed_at']:,}")
    if "trained" in s:
        t = s["trained"]
        lines.append(f"trained      {t['merges']:,} merges on {human_bytes(t['sample_bytes'])} ({t['distinct_words']:,} distinct words) in {human_seconds(t['seconds'])}")
    if "h5" in s:
        lines.append(f"h5           {s['h5']}")
    print("\n".join(lines))


@app.command()
@friendly_errors
def inspect(
    store: Path = typer.Argument(..., help="A folder written by `arrows tokenize`."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every shard's checksum and name any damaged shard (exit 1 if one is)."),
    show: int = typer.Option(40, "--show", help="How many of the first tokens to print, with their text."),
):
    """Counts, vocabulary, bytes per token and the first tokens of a token store."""
    from arrows.data import TokenStore

    st = TokenStore(store, allow_incomplete=True)
    m = st.manifest
    n = len(st)
    done = m["shards"][-1]["input_end"] if m["shards"] else 0
    print(f"store        {st.path}{'' if m['complete'] else '  (UNFINISHED: resume it with arrows tokenize --resume)'}")
    print(f"tokens       {n:,} ({m['dtype']}, {len(m['shards'])} shard(s))")
    print(f"input        {len(m['inputs'])} file(s), {m['total_input_bytes']:,} bytes ({done:,} encoded), {m['replaced_bytes']:,} replaced")
    print(f"bytes/token  {done / max(n, 1):.3f}")
    print(f"tokenizer    vocab {st.vocab_size:,}, BOS id {st.bos_id}, hash {m['tokenizer']['hash']}")
    if show > 0 and n:
        ids = [int(i) for i in st[: min(show, n)]]
        print(f"first ids    {ids}")
        pieces = [st.tokenizer.id_to_token(i) for i in ids]
        print(f"as tokens    {pieces}")
        print(f"decoded      {st.decode(ids)!r}")
    if verify:
        problems = st.verify()
        if problems:
            for p in problems:
                _err(p)
            raise typer.Exit(1)
        print(f"verified     all {len(m['shards'])} shard checksums match")


@app.command()
@friendly_errors
def train(
    config: Path = typer.Argument(..., help="A JSON config in the reference format (model_params, training_params, optim_params); see cli/configs/."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Comma-separated CUDA devices, e.g. 0,1: one process per GPU with DistributedDataParallel (NCCL)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on CPU (gloo), for data parallelism without GPUs."),
    model: Optional[str] = typer.Option(None, "--model", help="gpt, gru or lstm: the model type, for configs that have no model_type key (GRU/LSTM configs)."),
    resume: str = typer.Option("auto", "--resume", help="auto: continue from the run's latest checkpoint if there is one; never: start over; or a checkpoint path."),
    more: Optional[int] = typer.Option(None, "--more", help="Train this many steps beyond the checkpoint, instead of up to steps_to_train (the reference's -s)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override training_params.steps_to_train."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Override training_params.run_name (the run folder's name under save_loc)."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Do not torch.compile the model on CUDA."),
    wandb: Optional[str] = typer.Option(None, "--wandb", help="Also log to this wandb project (needs the wandb package)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check config, data, tokenizer and devices; print the model, its exact parameter count and the plan; do not train."),
):
    """Train a GPT, GRU or LSTM forward, backward or in any fixed window order."""
    from arrows.config import check_paths, load_config
    from arrows.train import TrainOptions
    from arrows.train import train as run

    overrides: dict = {"training_params": {}}
    if steps is not None:
        overrides["training_params"]["steps_to_train"] = steps
    if run_name is not None:
        overrides["training_params"]["run_name"] = run_name
    cfg = load_config(config, model_type=model, overrides=overrides)
    cfg = cfg.with_paths(check_paths(cfg, vocab_size_of_data=None))  # paths first, then the vocabulary there
    check_paths(cfg, vocab_size_of_data=_data_vocab(cfg))
    gpu_list = [int(g) for g in gpus.split(",")] if gpus else None
    opts = TrainOptions(device=device, gpus=gpu_list, nproc=nproc, resume=resume, more=more, compile=not no_compile, wandb=wandb, dry_run=dry_run)
    result = run(cfg, opts)
    if dry_run:
        for note in getattr(cfg, "notes", []):
            print(f"note: {note}")
        print(f"model        {result['model_type']}, {result['parameters']:,} parameters ({result['parameters'] / 1e6:.1f}M)")
        print(f"data         {result['tokens']:,} tokens, {result['train_windows']:,} training windows")
        print(f"plan         {result['planned_steps']:,} steps of {result['tokens_per_step']:,} tokens ({result['steps_per_epoch']:,} steps per epoch)")
        print(f"devices      {', '.join(result['devices'])}")
        print(f"run folder   {result['run_dir']}")
        return
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun/SLURM, rank 0 reports
    if result["valid_loss"] is None:
        print(f"nothing to do: the run is already at step {result['steps']} (use --more N to train further) → {result['run_dir']}")
    else:
        print(f"trained to step {result['steps']}; validation loss {result['valid_loss']:.4f} nats/token → {result['run_dir']}")


def _data_vocab(cfg) -> int | None:
    """The vocabulary of the dataset, when it says (a token store's manifest)."""
    import json as _json

    manifest = Path(cfg.training.dataset_folder) / "manifest.json"
    if manifest.is_file():
        return int(_json.loads(manifest.read_text())["tokenizer"]["vocab_size"])
    return None


@app.command()
@friendly_errors
def generate(
    run: Path = typer.Argument(..., help="A run folder written by `arrows train`."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue. For a backward model, the END of the text: it writes what comes before."),
    tokens: int = typer.Option(100, "--tokens", "-n", help="How many tokens to generate."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample among the k most likely tokens only."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling."),
):
    """Sample text from a trained run (backward models write the text that leads to the prompt)."""
    from arrows.generate import generate_text

    print(generate_text(run, prompt, tokens=tokens, temperature=temperature, top_k=top_k, seed=seed))


@app.command()
@friendly_errors
def demo(
    out: Path = typer.Option(Path("arrows-demo"), "--out", "-o", help="Folder for the demo's files (made anew)."),
):
    """The built-in example, no download: generates a corpus, trains a tokenizer and tokenizes it."""
    from arrows.demo import run_demo

    run_demo(out)


def main() -> None:
    try:
        app(prog_name="arrows")
    except KeyboardInterrupt:  # outside a command's own handling (e.g. while starting up)
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
