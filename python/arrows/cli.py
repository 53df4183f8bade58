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
    number = m.group(1)
    value = int(number) * _UNITS[unit] if number.isdigit() else int(float(number) * _UNITS[unit])
    if value <= 0:
        raise typer.BadParameter(f"{text!r} must be positive", param_hint=option)
    if value >= 2**63:  # the Rust job takes 64-bit sizes
        raise typer.BadParameter(f"{text!r} is too large (at most 8 EiB)", param_hint=option)
    return value


def _err(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # The message is text, not markup: a "[/...]" in it (gloo's errors name their source file so) made rich raise.
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)


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
        except BrokenPipeError:
            # The reader went away (`arrows inspect DIR | head`): stop quietly, as other tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141)
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
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", min=257, max=2**32 - 1, help="Vocabulary size of the trained BPE, <|endoftext|> (id 0, the BOS) and the 256 bytes included. Default 50257."),
    sample_bytes: Optional[str] = typer.Option(None, "--sample-bytes", help="Train the BPE on at most this much text, drawn from across the whole corpus (memory stays bounded). Accepts 500MB, 2GiB, ... Default 1GB."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1, help="Seed of the training sample's draw. Default 0."),
    threads: int = typer.Option(0, "--threads", "-j", min=0, max=1024, help="Encoding threads; 0 = every core. The output does not depend on it."),
    shard_bytes: str = typer.Option("128MiB", "--shard-bytes", help="Input bytes per shard; the unit of resumption. The token stream does not depend on it. At most 20,000 shards per corpus (each one rewrites the manifest)."),
    strict_utf8: bool = typer.Option(False, "--strict-utf8", help="Stop at the first invalid UTF-8 byte, naming the file and offset (default: replace with U+FFFD and count)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT after its last complete shard; the result is identical to an uninterrupted run. Refused if the inputs or options differ."),
    force: bool = typer.Option(False, "--force", help="Start over in a non-empty OUT, deleting the arrows files there."),
    h5: bool = typer.Option(False, "--h5", help="Also write OUT/tokens.h5 (dataset 'tokens', int32), the reference code's format."),
    bos: Optional[str] = typer.Option(None, "--bos", help="The token every training window begins with, by its text (e.g. '<s>'). Default: <|endoftext|> when the tokenizer has it as a special token, else its own BOS (what its post-processor puts first, or a special token named <s>, <bos>, ...), else id 0. A store keeps the BOS it was started with."),
):
    """Train a byte-level BPE tokenizer (or use one) and encode text into memory-mapped token shards."""
    from arrows.progress import Reporter, human_bytes, human_seconds
    from arrows.tokenize import tokenize as run

    spec = tokenizer or "train"
    if spec not in ("train", "bytes") and Path(spec).is_dir():
        inside = Path(spec) / "tokenizer.json"
        hint = f"give {inside}" if inside.is_file() else "give the tokenizer.json file"
        raise typer.BadParameter(f"{spec}: a folder, not a tokenizer file ({hint}, or 'bytes')", param_hint="--tokenizer")
    if spec not in ("train", "bytes") and not Path(spec).is_file():
        copy = out / "tokenizer.json"  # a store keeps a copy of the tokenizer it was started with
        hint = f"; to resume, the store's own copy will do: --tokenizer {copy}" if resume and copy.is_file() else ""
        raise typer.BadParameter(f"{spec}: no such tokenizer file (give a tokenizer.json, or 'bytes'){hint}", param_hint="--tokenizer")
    # Options of the BPE training, which a given tokenizer has no use for: said, not silently ignored.
    for option, value in (("--vocab-size", vocab_size), ("--sample-bytes", sample_bytes), ("--seed", seed)):
        if tokenizer is not None and value is not None:
            raise typer.BadParameter(f"{option} applies only when training a tokenizer; drop it or drop --tokenizer", param_hint=option)
    with Reporter.from_env() as reporter:
        s = run(
            inputs, out, tokenizer=spec, vocab_size=50257 if vocab_size is None else vocab_size,
            sample_bytes=parse_size("1GB" if sample_bytes is None else sample_bytes, "--sample-bytes"), seed=seed or 0, threads=threads, shard_bytes=parse_size(shard_bytes, "--shard-bytes"), strict_utf8=strict_utf8,
            resume=resume, force=force, bos=bos, h5=h5, reporter=reporter,
        )
    tokens, nbytes = s["tokens"], s["input_bytes"]
    if s["replaced_bytes"] > nbytes / 100:
        s["notes"].append(
            f"{s['replaced_bytes']:,} of the {nbytes:,} input bytes ({100 * s['replaced_bytes'] / nbytes:.0f}%) are not UTF-8 text and became U+FFFD: "
            "is a binary file among the inputs? --strict-utf8 stops at the first such byte, naming the file"
        )
    asked = 50257 if vocab_size is None else vocab_size
    if "trained" in s and s["vocab_size"] < asked:
        s["notes"].append(
            f"the BPE stopped after {s['trained']['merges']:,} merges, as no pair of adjacent tokens occurs twice in its "
            f"{human_bytes(s['trained']['sample_bytes'])} sample any more: the vocabulary has {s['vocab_size']:,} ids, not the {asked:,} asked "
            # A larger --sample-bytes helps only when the sample was not the whole corpus already.
            + ("(more text, or a larger --sample-bytes, gives more merges)" if s["trained"]["sample_bytes"] < nbytes else "(the sample was the whole corpus: only more text gives more merges)")
        )
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    lines = [
        f"tokens       {tokens:,} in {s['shards']} shard(s) → {s['out']}",
        f"input        {human_bytes(nbytes)} ({nbytes:,} bytes), " + (f"{nbytes / tokens:.2f} bytes/token" if tokens else "no tokens (the tokenizer dropped all of it)"),
        f"vocabulary   {s['vocab_size']:,}",
        # A resumed run encoded only what the killed one had not: its rate counts those bytes.
        f"time         {human_seconds(s['seconds'])} ({(nbytes - s['resumed_at']) / 1e6 / max(s['seconds'], 1e-9):.1f} MB/s overall"
        + (f", of the {human_bytes(nbytes - s['resumed_at'])} encoded in this run)" if s["resumed_at"] else ")"),
        f"replaced     {s['replaced_bytes']:,} invalid UTF-8 bytes (→ U+FFFD)",
    ]
    if s["resumed_at"]:
        lines.append(f"resumed      at input byte {s['resumed_at']:,}")
    if "trained" in s:
        t = s["trained"]
        when = "by an earlier run" if t["seconds"] is None else f"in {human_seconds(t['seconds'])}"  # resumed: trained before
        lines.append(f"trained      {t['merges']:,} merges on {human_bytes(t['sample_bytes'])} ({t['distinct_words']:,} distinct words) {when}")
    if "h5" in s:
        lines.append(f"h5           {s['h5']}")
    print("\n".join(lines))


@app.command()
@friendly_errors
def inspect(
    store: Path = typer.Argument(..., help="A folder written by `arrows tokenize`."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every shard's checksum and name any damaged shard (exit 1 if one is)."),
    show: int = typer.Option(40, "--show", min=0, help="How many of the first tokens to print, with their text."),
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
    print(f"bytes/token  {done / n:.3f}" if n else "bytes/token  – (no tokens)")
    bos = st.window_bos_id
    named = "no BOS of the tokenizer's own" if st.bos_id is None else repr(st.tokenizer.id_to_token(bos))
    print(f"tokenizer    vocab {st.vocab_size:,}, BOS id {bos} ({named}), hash {m['tokenizer']['hash']}")
    # Verified before the first tokens are decoded: damage there may be an id beyond the
    # vocabulary, which decoding refuses without naming the shard the checksums name.
    problems = st.verify() if verify else []
    for p in problems:
        _err(p)
    if problems:
        raise typer.Exit(1)
    if show > 0 and n:
        ids = [int(i) for i in st[: min(show, n)]]
        print(f"first ids    {ids}")
        pieces = [st.tokenizer.id_to_token(i) for i in ids]
        print(f"as tokens    {pieces}")
        print(f"decoded      {st.decode(ids)!r}")
    if verify:
        print(f"verified     all {len(m['shards'])} shard checksums match")


ATTENTION_HELP = ("Override model_params.attention (GPT): auto (default: on CUDA the fastest kernel that matches SDPA at the "
                  "run's shape), sdpa, flex, triton or plain. --attention sdpa is the fallback if a kernel misbehaves.")
HEAD_LOSS_HELP = ("Override model_params.head_loss: auto (default: chunked on a CPU, plain on CUDA), plain (the batch's logits, "
                  "then the cross-entropy) or chunked (the head and the loss fused over chunks of rows; far less memory for large "
                  "batches and vocabularies; on CUDA a Triton kernel of arrows').")


@app.command()
@friendly_errors
def train(
    config: Path = typer.Argument(..., help="A JSON config in the reference format (model_params, training_params, optim_params); see cli/configs/."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Comma-separated CUDA devices, e.g. 0,1: one process per GPU with DistributedDataParallel (NCCL)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on CPU (gloo), for data parallelism without GPUs."),
    model: Optional[str] = typer.Option(None, "--model", help="gpt, gru or lstm: the model type, for configs that have no model_type key (GRU/LSTM configs)."),
    resume: str = typer.Option("auto", "--resume", help="auto: continue from the run's latest checkpoint if there is one; never: start over (the earlier run's checkpoints and logs in the run folder are removed); or a checkpoint path."),
    more: Optional[int] = typer.Option(None, "--more", min=1, help="Train this many steps beyond the checkpoint, instead of up to steps_to_train (the reference's -s). Given again to a run that the same --more left unfinished (interrupted, killed), it finishes that run."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override training_params.steps_to_train."),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Override training_params.run_name (the run folder's name under save_loc)."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Do not torch.compile the model on CUDA."),
    attention: Optional[str] = typer.Option(None, "--attention", help=ATTENTION_HELP),
    head_loss: Optional[str] = typer.Option(None, "--head-loss", help=HEAD_LOSS_HELP),
    wandb: Optional[str] = typer.Option(None, "--wandb", help="Also log to this wandb project (needs the wandb package)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check config, data, tokenizer and devices; print the model, its exact parameter count and the plan; do not train."),
):
    """Train a GPT, GRU or LSTM forward, backward or in any fixed window order."""
    from arrows.distributed import launcher_rank
    from arrows.errors import CancelledError
    from arrows.train import TrainOptions
    from arrows.train import train as run

    gpu_list = _devices(gpus, device)
    if gpu_list and nproc != 1:
        raise typer.BadParameter("--gpus starts one process per GPU; drop --nproc (it is for CPU processes)", param_hint="--nproc")
    if more is not None and steps is not None:
        raise typer.BadParameter("--more N trains N steps beyond the checkpoint, --steps sets the total: give one of them", param_hint="--more")
    if wandb is not None:  # train() checks it too; here it is a usage error of the flag (exit 2)
        from arrows.errors import InputError
        from arrows.metrics import require_wandb

        try:
            require_wandb(wandb)
        except InputError as e:
            raise typer.BadParameter(str(e), param_hint="--wandb") from None
    overrides: dict = {"training_params": {}}
    if steps is not None:
        overrides["training_params"]["steps_to_train"] = steps
    if run_name is not None:
        overrides["training_params"]["run_name"] = run_name
    cfg = _load_train_config(config, model, overrides["training_params"], _model_overrides(attention, head_loss))
    opts = TrainOptions(device=device, gpus=gpu_list, nproc=nproc, resume=resume, more=more, compile=not no_compile, wandb=wandb, dry_run=dry_run)
    if launcher_rank() == 0:  # under torchrun/SLURM, rank 0 reports
        # Said before training too, not only by --dry-run: a run ignored a setting without a word.
        _print_notes(cfg, sys.stdout if dry_run else sys.stderr)
    try:
        result = run(cfg, opts)
    except CancelledError:
        if launcher_rank() != 0:  # every process stopped at the same step: rank 0 says where, once
            raise typer.Exit(130) from None
        raise
    if dry_run:
        print(f"model        {result['model_type']}, {result['parameters']:,} parameters ({result['parameters'] / 1e6:.1f}M)")
        print(f"data         {result['tokens']:,} tokens, {result['train_windows']:,} training windows")
        print(f"plan         {result['planned_steps']:,} steps of {result['tokens_per_step']:,} tokens ({result['steps_per_epoch']:,} steps per epoch)")
        if result["resume_from"]:
            start, planned = result["start_step"], result["planned_steps"]
            todo = f"{planned - start:,} steps to train" if planned > start else "nothing to train (use --more N to train further)"
            print(f"resume       from step {start:,} ({result['resume_from']}): {todo}")
            for change in result["changed_settings"]:
                print(f"changed      {change}")
        if result["removes"]:
            print(f"start over   removes the earlier run's {', '.join(result['removes'])}, and its logs and summary")
        print(f"devices      {', '.join(result['devices'])}")
        print(f"run folder   {result['run_dir']}")
        return
    if launcher_rank() != 0:
        return  # under torchrun/SLURM, rank 0 reports
    if result.get("finished_end"):  # stopped after its last checkpoint: its summary is written now
        print(f"finished: the run had trained to step {result['steps']} when it was stopped, before its summary.json, which is "
              f"written now (use --more N to train further) → {result['run_dir']}")
    elif result.get("nothing_to_do"):
        print(f"nothing to do: the run is already at step {result['steps']} (use --more N to train further) → {result['run_dir']}")
    else:
        print(f"trained to step {result['steps']}; validation loss {result['valid_loss']:.4f} nats/token → {result['run_dir']}")


def _parse_gpus(gpus: Optional[str]) -> list[int] | None:
    """'0,1' → [0, 1]."""
    if not gpus:
        return None
    try:
        ids = [int(g) for g in gpus.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{gpus!r}: give comma-separated GPU numbers, e.g. 0,1", param_hint="--gpus") from None
    if min(ids) < 0 or len(set(ids)) != len(ids):
        raise typer.BadParameter(f"{gpus!r}: each GPU number once, none negative", param_hint="--gpus")
    return ids


def _print_notes(cfg, stream) -> None:
    """The config's notes: settings without effect, paths found beside the config, ..."""
    for note in getattr(cfg, "notes", []):
        print(f"note: {note}", file=stream, flush=True)


def _devices(gpus: Optional[str], device: str) -> list[int] | None:
    """The GPU list of --gpus, checked together with --device."""
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: choose auto, cpu or cuda", param_hint="--device")
    gpu_list = _parse_gpus(gpus)
    if gpu_list and device == "cpu":
        raise typer.BadParameter("--gpus trains on those CUDA devices, --device cpu on the CPU: give one of them", param_hint="--device")
    return gpu_list


def _data_vocab(cfg) -> int | None:
    """The vocabulary the dataset needs: a token store's (its manifest says), or for a reference
    .h5 file its largest id + 1 (one pass over the file; negative ids are refused here)."""
    import json as _json

    folder = Path(cfg.training.dataset_folder)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            return int(_json.loads(manifest.read_bytes())["tokenizer"]["vocab_size"])
        except (ValueError, KeyError, TypeError):
            return None  # a damaged manifest: opening the store names the problem
    if folder.is_file():
        from arrows.errors import CorruptDataError
        from arrows.h5 import h5_id_range

        if folder.stat().st_size > 1e9:  # a noticeable pause: say what it is
            print(f"reading the ids of {folder} ({folder.stat().st_size / 1e9:.1f} GB) to check them against the vocabulary", file=sys.stderr, flush=True)
        found = h5_id_range(folder)
        if found is None:
            return None
        if found[0] < 0:
            raise CorruptDataError(f"{folder}: holds negative token ids (the smallest is {found[0]}); ids start at 0")
        return found[1] + 1
    return None


@app.command()
@friendly_errors
def generate(
    run: Path = typer.Argument(..., help="A run folder written by `arrows train`."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue. For a backward model, the END of the text: it writes what comes before."),
    tokens: int = typer.Option(100, "--tokens", "-n", min=0, help="How many tokens to generate."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (≥ 0): below 1 sharper, above 1 flatter; 0 always takes the most likely token."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Sample among the k most likely tokens only."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling (the same seed gives the same text on the same kind of device)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Sample from this checkpoint: the step of a copy kept by backup_every (e.g. 2000), or a checkpoint file. Default: the latest."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, or auto (CUDA when present)."),
):
    """Sample text from a trained run (backward models write the text that leads to the prompt)."""
    from arrows.generate import generate_text

    if not 0 <= temperature < float("inf"):
        raise typer.BadParameter(f"{temperature} must be a number ≥ 0 (0: always the most likely token)", param_hint="--temperature")
    _devices(None, device)  # the same check of --device as the other commands'
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    print(generate_text(run, prompt, tokens=tokens, temperature=temperature, top_k=top_k, seed=seed, checkpoint=checkpoint, device=device))


@app.command()
@friendly_errors
def synth(
    kind: str = typer.Argument(..., help="sparse-linear (a forward arrow), sparse-linear-reversed (a backward arrow), reversible (no arrow) or primes (p*q=n)."),
    out: Path = typer.Option(..., "--out", "-o", help="Text file to write, one example per line; the parameters go to <stem>.synth.json beside it."),
    lines: int = typer.Option(100_000, "--lines", "-n", help="Number of examples (lines)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the language (matrix, graph) and of the examples."),
    bits: Optional[int] = typer.Option(None, "--bits", help="sparse-linear: length of x and of y (default 8)."),
    row_weight: Optional[int] = typer.Option(None, "--row-weight", help="sparse-linear: x bits that each y bit is the parity of (default 2)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="reversible: nodes of the graph, written as letters a, b, ... (default 8)."),
    walk_length: Optional[int] = typer.Option(None, "--walk-length", help="reversible: letters per line, the nodes a walk visits (default 16: 15 steps)."),
    edges_per_node: Optional[float] = typer.Option(None, "--edges-per-node", help="reversible: average edges per node of the random graph (default 2)."),
    max_prime: Optional[int] = typer.Option(None, "--max-prime", help="primes: the primes are below this (default 1000)."),
    pad: Optional[bool] = typer.Option(None, "--pad/--no-pad", help="primes: zero-pad the numbers so that every line has the same length (default: no)."),
):
    """Write a synthetic language whose arrow of time is known (tokenize it with --tokenizer bytes)."""
    from arrows.synth import DEFAULTS, KINDS, sidecar_path, write_language

    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r}: choose one of {', '.join(KINDS)}", param_hint="KIND")
    given = {"bits": bits, "row_weight": row_weight, "nodes": nodes, "walk_length": walk_length, "edges_per_node": edges_per_node, "max_prime": max_prime, "pad": pad}
    wrong = [k for k, v in given.items() if v is not None and k not in DEFAULTS[kind]]
    if wrong:
        raise typer.BadParameter(f"{kind} does not take {', '.join('--' + w.replace('_', '-') for w in wrong)}", param_hint="KIND")
    info = write_language(kind, out, lines, seed, **given)
    print(f"wrote        {out} ({info['bytes']:,} bytes, {lines:,} lines of {info['format']})")
    print(f"parameters   {sidecar_path(out)}")
    if kind.startswith("sparse-linear"):
        print(f"hard bits    {info['hard_bits']} of {info['params']['bits']} need more than {info['params']['row_weight']} known bits in the hard direction (costs {info['hard_direction_costs']})")
    expected = "no" if info["expected_arrow"] == "none" else info["expected_arrow"]  # "no arrow", not "none arrow"
    print(f"expected     {expected} arrow   next: arrows tokenize {out} --tokenizer bytes --out TOKENS")


@app.command()
@friendly_errors
def reverse(
    src: Path = typer.Argument(..., help="A UTF-8 text file."),
    dst: Path = typer.Argument(..., help="Where to write it reversed (replaced if it exists)."),
):
    """Reverse a whole text character by character (the reference's control). Streams: any size."""
    from arrows.progress import Reporter, human_bytes
    from arrows.reverse import reverse_file

    if not src.is_file():
        what = "no such file" if not src.exists() else "a folder" if src.is_dir() else "not a regular file"
        from arrows.errors import InputError

        raise InputError(f"{src}: {what}; give a text file")
    with Reporter.from_env() as reporter:
        n = reverse_file(src, dst, reporter=reporter)
    print(f"reversed     {src} → {dst} ({human_bytes(n)})")


def _model_overrides(attention: Optional[str], head_loss: Optional[str]) -> dict:
    """The model_params keys given on the command line (checked with the config's own)."""
    given = {"attention": attention, "head_loss": head_loss}
    return {k: v for k, v in given.items() if v is not None}


def _load_train_config(config: Path, model: Optional[str], training_overrides: dict, model_overrides: dict):
    """A config as `arrows train` reads it: checked, paths resolved, the data's vocabulary checked."""
    from arrows.config import ConfigError, check_paths, dataset_problems, load_config

    overrides = {"training_params": training_overrides, "model_params": model_overrides}
    try:
        cfg = load_config(config, model_type=model, overrides=overrides)
    except ConfigError as e:
        # Listed with the config's other problems: a missing dataset is one of them.
        missing = dataset_problems(config)
        if missing and not any(p.startswith("training_params.dataset_folder") for p in e.problems):
            raise ConfigError.from_problems(e.path, e.problems + missing) from None
        raise
    cfg = cfg.with_paths(check_paths(cfg, vocab_size_of_data=None))  # paths first, then the vocabulary there
    check_paths(cfg, vocab_size_of_data=_data_vocab(cfg))
    return cfg


@app.command()
@friendly_errors
def study(
    config: Path = typer.Argument(..., help="A training config (as for `arrows train`), without backwards: the study trains both directions. With a permutation, the second run reads the windows in that order instead of backward."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Train this many forward/backward pairs (seeds S, S+1, ...; S = training_params.seed). Default: the count the study folder records (study.json), else 1."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study folder (default <save_loc>/<config stem>). Running a study again resumes its runs."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Override training_params.steps_to_train."),
    model: Optional[str] = typer.Option(None, "--model", help="gpt, gru or lstm, for configs without model_type."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Comma-separated GPUs. With two or more, forward and backward train at the same time, each on half of them."),
    parallel: bool = typer.Option(False, "--parallel", help="Train forward and backward at the same time (separate processes) even without GPUs."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Do not torch.compile the model on CUDA."),
    attention: Optional[str] = typer.Option(None, "--attention", help=ATTENTION_HELP),
    head_loss: Optional[str] = typer.Option(None, "--head-loss", help=HEAD_LOSS_HELP),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", min=2, help="Compare on at most this many validation windows (default: all; at least 2)."),
):
    """Train the forward and the backward (or permuted) model on identical settings, then compare them."""
    from arrows.study import run_name_note, run_study

    gpu_list = _devices(gpus, device)
    overrides = {} if steps is None else {"steps_to_train": steps}
    cfg = _load_train_config(config, model, overrides, _model_overrides(attention, head_loss))
    study_dir = out or Path(cfg.training.save_loc) / config.stem
    if note := run_name_note(cfg, study_dir):
        cfg.notes.append(note)
    _print_notes(cfg, sys.stderr)  # once: the runs are trained from configs the study writes
    pairs = run_study(cfg, study_dir, seeds=seeds, device=device, gpus=gpu_list, parallel=parallel, compile=not no_compile)
    try:
        _compare_and_print(pairs, study_dir / "report", device=device, max_windows=max_windows)
    except KeyboardInterrupt:  # said "interrupted" alone: the runs are trained, only the report is missing
        from arrows.errors import CancelledError

        raise CancelledError("interrupted while comparing; the runs are trained: run the same command to compare them") from None


@app.command(help="Evaluate forward and backward runs on the same validation windows: losses, δ with a 95% paired "
             "bootstrap interval, loss by position, curves; as a table, report.md, report.json and PNG figures.")  # one line in --help
@friendly_errors
def compare(
    runs: List[Path] = typer.Argument(..., help="A study folder, or run folders in pairs: FORWARD BACKWARD [FORWARD BACKWARD ...] (one pair per seed); the second run of a pair may instead be one trained in a permuted window order (training_params.permutation), the same for every pair."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.md, report.json and the figures (default: <study>/report, or ./arrows-report)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", min=2, help="Evaluate on at most this many validation windows (default: all; at least 2)."),
    resamples: int = typer.Option(2000, "--resamples", min=2, help="Bootstrap resamples for the 95% interval."),
):
    from arrows.compare import resolve_pairs

    _devices(None, device)  # the same check of --device as train's and study's, before any run is read
    pairs = resolve_pairs(runs)
    if out is None:
        out = runs[0] / "report" if len(runs) == 1 else Path("arrows-report")
    _compare_and_print(pairs, out, device=device, max_windows=max_windows, resamples=resamples)


def _compare_and_print(pairs, out: Path, *, device: str, max_windows: int | None = None, resamples: int = 2000) -> dict:
    import torch

    from arrows.compare import compare_runs
    from arrows.errors import InputError
    from arrows.progress import Reporter
    from arrows.report import check_report_folder, write_report

    check_report_folder(out)  # a wrong --out (a file) said now, not after the evaluation
    if device == "cuda" and not torch.cuda.is_available():  # worded as train's own check (arrows.train)
        raise InputError("--device cuda: no CUDA device is visible; compare on the CPU with --device cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with Reporter.from_env() as reporter:
        report = compare_runs(pairs, device=device, max_windows=max_windows, resamples=resamples, reporter=reporter)
    paths = write_report(report, out)
    print_table(report)
    print(f"report       {paths['markdown']}")
    return report


def print_table(report: dict, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from arrows.report import second

    s = report["summary"]
    label, sym = second(report)["label"], second(report)["symbol"]
    table = Table(title=title or f"arrow of time: {report['data']}", title_justify="left",
                  caption=f"loss in nats/token; δ = (L_{sym} − L_fw) / L_fw, > 0: {label} worse; 95% paired bootstrap interval over "
                          f"{s['windows']:,} windows (in blocks of {s['block']}): evaluation noise only, not training noise", caption_justify="left")
    for col in ("", "forward", label, "δ", "95% interval"):
        table.add_column(col, justify="right", no_wrap=True)
    seeds = len(report["pairs"])
    rows = [("validation loss" if seeds == 1 else f"mean of {seeds} seeds", s)] + ([(f"seed {p['seed']}", p) for p in report["pairs"]] if len(report["pairs"]) > 1 else [])
    for label, r in rows:
        table.add_row(label, f"{r['loss_fw']:.4f}", f"{r['loss_bw']:.4f}", f"{100 * r['delta']:+.2f}%", f"[{100 * r['low']:+.2f}%, {100 * r['high']:+.2f}%]")
    console = Console(highlight=False)
    console.print(table)
    if len(report["pairs"]) > 1:
        console.print(f"seed-to-seed: δ {100 * s['delta_seed_mean']:+.2f}% ± {100 * s['delta_seed_std']:.2f}% (mean ± sd over {len(report['pairs'])} seeds)")
        if s.get("seed_low") is not None:
            console.print(f"95% interval with training noise (seeds) and evaluation noise (windows): [{100 * s['seed_low']:+.2f}%, {100 * s['seed_high']:+.2f}%]")
    if report.get("synthetic"):
        console.print(report["synthetic"]["verdict"])
    for n in report["notes"]:
        console.print(f"note: {n}")


@app.command(help="Several studies side by side (a context-length, model-size or language sweep): δ of each with its "
             "interval, as a table, sweep.md, sweep.json and sweep.png (δ against the setting that varies).")  # one line in --help
@friendly_errors
def sweep(
    studies: List[Path] = typer.Argument(..., help="Two or more study folders (arrows study), or report folders that arrows compare --out wrote. Their reports are read, not recomputed; one that evaluated a run at another step than its checkpoint's now (trained further since) is refused, with the command that updates it."),
    out: Path = typer.Option(Path("arrows-sweep"), "--out", "-o", help="Folder for sweep.md, sweep.json and sweep.png (an earlier sweep's files there are replaced)."),
):
    """δ against the setting that differs between the studies: the one numeric setting that
    varies (attn_length: the paper's context sweep), else the parameter count when the models
    differ in size on the same data and window (its size sweep), else the studies side by side
    (languages)."""
    from arrows.report import check_report_folder
    from arrows.sweep import print_sweep, sweep as sweep_studies, write_sweep

    check_report_folder(out)
    result = sweep_studies(studies)
    paths = write_sweep(result, out)
    print_sweep(result)
    print(f"sweep        {paths['markdown']}")


@app.command(help="The built-in example, no download: synthetic languages with a known arrow, tokenized, trained "
             "forward and backward with a small GPT, compared; ends with the table and the report's path.")  # one line in --help
@friendly_errors
def demo(
    out: Path = typer.Option(Path("arrows-demo"), "--out", "-o", help="Folder for the demo's files, made anew: an earlier demo's folder is replaced (refused while a demo runs in it), any other non-empty folder refused."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps per run (default: the demo's tuned budget; fewer for a quick look)."),
):
    from arrows.demo import run_demo

    run_demo(out, steps=steps)


def main() -> None:
    import signal

    from arrows.errors import terminated

    signal.signal(signal.SIGTERM, terminated)  # stop as at a Ctrl-C, saying where things stand
    try:
        app(prog_name="arrows")
    except KeyboardInterrupt:  # outside a command's own handling (e.g. while starting up)
        _err("interrupted")
        sys.exit(130)
    finally:
        # The command has done its work (or said why not): a Ctrl-C from here on, during the
        # interpreter's shutdown, where Python's handler is gone, killed the process by the signal
        # without a word, so that a finished job looked interrupted. Ignored, the job's own exit
        # status stands. The same for SIGTERM, whose handler raises the same interrupt.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()
