"""Benchmark (not a test): arrows' training step against its anchors, every figure in one run.

    python bench/train.py --gpu                 # on a CUDA GPU, every section (about 11 minutes on an H200)
    python bench/train.py --gpu --only attention,rnn
    python bench/train.py --gpu --only training --heads plain,chunked
    python bench/train.py --quick               # every section at tiny shapes on CPU (checks the script, not the speed)

Sections (targets on one H100/H200, each a ratio against an anchor measured in the same run):
  training   GPT-2 small (12×768, T=256, B=180) and GPT-medium (24×1024, T=256, B=90): tokens/s and
             MFU of arrows' training step (Trainer._train_step, fed by the Rust loader from a real
             token store) against ../shared/bench/gpu_anchor.py's reference style (fp32, eager) and
             tuned PyTorch (bf16, SDPA, fused AdamW, compile). Targets: >= 1.3x tuned for small,
             >= 1.15x for medium; >= 8x the reference style. `--heads plain,chunked` measures
             each model with both LM heads (model_params.head_loss); `plain-unpadded` is the plain
             head with its product over the bare vocabulary (50,257), to see what the padding to
             a multiple of 128 gains.
  memory     GPT-2 small with `head_loss: "chunked"`: tokens/s, peak memory against the tuned
             anchor's (target <= 0.6x), and its loss against the plain head's on the same batch.
  loader     the GPT-2 small step fed by the loader against the same step on a batch already on
             the GPU (target: within 2%).
  attention  causal attention forward + backward, bf16, B=180 H=12 D=64 at T=256, 512, 1024:
             arrows' Triton kernel against SDPA (flash) and compiled FlexAttention, all measured
             here, with and without dropout; the anchor's T=256 figures beside them.
  rnn        GRU and LSTM 3×512, T=256, B=250, no dropout: arrows (eager; compiled; compiled with
             the chunked head) against ../shared/bench/gpu_anchor_rnn.py (fp32 reference style, bf16;
             no dropout either).
             Target: >= 1.9x the fp32 reference style.

The anchors are looked for in ../shared/bench, then ./shared/bench (a GPU machine gets only the
checkout: copy ../shared into ./shared, which git ignores). Results also go to bench/out/train.json.
"""

from __future__ import annotations

import sys

# This folder holds a `tokenize.py`, which would shadow the standard library's module of that name.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import contextlib
import functools
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if (p / "bench").is_dir()), ROOT.parent / "shared")
PEAK = 989e12  # H100/H200 SXM dense bf16 FLOP/s, as the anchors
SECTIONS = ("training", "memory", "loader", "attention", "rnn")

GPT = {
    "gpt2small_T256_B180": dict(vocab=50257, layers=12, width=768, heads=12, T=256, B=180, target=1.3),
    "medium_T256_B90": dict(vocab=50257, layers=24, width=1024, heads=16, T=256, B=90, target=1.15),
}
GPT_QUICK = {"tiny": dict(vocab=512, layers=2, width=64, heads=4, T=32, B=4, target=1.3)}
RNN = dict(vocab=50257, layers=3, width=512, T=256, B=250)
RNN_QUICK = dict(vocab=512, layers=2, width=32, T=16, B=4)
ATTENTION = dict(B=180, H=12, D=64, Ts=(256, 512, 1024))
ATTENTION_QUICK = dict(B=2, H=2, D=16, Ts=(32, 64))


def model_name(shape_key: str) -> str:
    """The --models name of a GPT entry: "gpt2small_T256_B180" -> "gpt2small"."""
    return shape_key.split("_")[0]


# ---- anchors ----------------------------------------------------------------------------------
def run_anchor(script: str, quick: bool) -> dict:
    path = SHARED / "bench" / script
    if not path.exists():
        sys.exit(f"{path}: not found; put ../shared beside the checkout (or copy it into ./shared)")
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, str(path)] + (["--quick"] if quick else [])
        subprocess.run(args, check=True, env={**os.environ, "OUT": out})
        return json.loads((Path(out) / script.replace(".py", ".json")).read_text())


# ---- arrows' step -----------------------------------------------------------------------------
def token_store(work: Path, vocab: int) -> Path:
    """A real token store: the English and French texts of ../shared/data (generated words without
    them), BPE-tokenized by arrows. Made once per vocabulary size."""
    from arrows.tokenize import tokenize

    store = work / f"store_{vocab}"
    if (store / "manifest.json").exists():
        return store
    texts = sorted((SHARED / "data").glob("*.txt"))
    if not texts:
        import random

        rng = random.Random(0)
        words = [f"w{rng.randrange(5000)}" for _ in range(400_000)]
        (work / "generated.txt").write_text(" ".join(words))
        texts = [work / "generated.txt"]
    tokenize(texts, store, vocab_size=vocab, force=True)
    return store


def make_trainer(name: str, model: dict, B: int, store: Path, work: Path, *, compile: bool = True):
    import torch

    from arrows.config import config_from_dict
    from arrows.distributed import World
    from arrows.train import TrainOptions, Trainer

    cfg = config_from_dict({
        "model_params": {"dropout": 0.1, **model},
        "training_params": {"dataset_folder": str(store), "batch_size": B, "steps_to_train": 10**6, "save_every": 10**9, "valid_every": 10**9,
                            "valid_fraction": 0.01, "save_loc": str(work / "runs"), "run_name": name, "sample_every": 0, "threads": 4},
        "optim_params": {"lr": 1e-4},
    })
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    return Trainer(cfg, World(0, 1, 0, device), TrainOptions(resume="never", compile=compile))


def seconds_per_step(trainer, batches, steps: int) -> float:
    import torch

    sync = torch.cuda.synchronize if trainer.cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        result = trainer._train_step(batches)
    result.read()  # waits for the last step, hence for all of them
    sync()
    return (time.perf_counter() - t0) / steps


def peak_memory_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure_step(trainer, steps: int, warm: int) -> dict:
    """tokens/s and peak memory of the step, after `warm` steps (compilation, autotuning)."""
    batches = trainer._batches()
    seconds_per_step(trainer, batches, warm)
    seconds = seconds_per_step(trainer, batches, steps)
    return {"tokens_per_s": round(trainer.tokens_per_step / seconds), "step_ms": round(seconds * 1e3, 2), "peak_mem_GiB": round(peak_memory_gib(), 2)}


def gpt_flops_per_token(trainer, s: dict) -> float:
    nonemb = sum(p.numel() for n, p in trainer.model.named_parameters() if "embedder" not in n)  # the head counts
    return 6 * nonemb + 12 * s["layers"] * s["T"] * s["width"]


@contextlib.contextmanager
def vocab_padding(on: bool):
    """With `on` False, the heads make their products over the bare vocabulary while inside."""
    from arrows.models import head_loss

    padded = head_loss.vocab_multiple_for
    if not on:
        head_loss.vocab_multiple_for = lambda device: 1
    try:
        yield
    finally:
        head_loss.vocab_multiple_for = padded


def gpt_model(s: dict, **extra) -> dict:
    return {"vocab_size": s["vocab"], "n_layers": s["layers"], "n_heads": s["heads"], "embed_dim": s["width"], "attn_length": s["T"], **extra}


# ---- sections ---------------------------------------------------------------------------------
def section_gpt(a, anchor: dict, work: Path, results: dict) -> None:
    """training, memory and loader: they share the token store and GPT-2 small's trainers."""
    every = GPT_QUICK if a.quick else GPT
    shapes = {name: s for name, s in every.items() if a.quick or a.models is None or model_name(name) in a.models}
    store = token_store(work, next(iter(shapes.values()))["vocab"])
    rows = []
    for name, s in shapes.items():
        small = name == next(iter(every))  # GPT-2 small: the memory and loader sections use it
        heads = list(a.heads) if "training" in a.only else []
        if small and "memory" in a.only and "chunked" not in heads:
            heads.append("chunked")
        if small and "loader" in a.only and not heads:
            heads.append("plain")
        # attention "auto" measures the kernels at the first head's trainer; the others take its
        # choice, which does not depend on the head (measuring again compiled every kernel again,
        # minutes of a GPU lease).
        attention = {}
        for head in heads:
            key = f"arrows_{name}" + ("" if head == "plain" else f"_{head}")
            reset_memory()
            with vocab_padding(head != "plain-unpadded"):  # the profile too: leaving it recompiles
                trainer = make_trainer(key, gpt_model(s, head_loss=head.removesuffix("-unpadded"), **attention), s["B"], store, work)
                taken = " (the first head's choice)" if attention else ""
                attention = {"attention": trainer.model.config["attention_impl"]}
                mine = measure_step(trainer, a.steps, a.warm)
                mine["mfu"] = round(mine["tokens_per_s"] * gpt_flops_per_token(trainer, s) / PEAK, 4)
                mine["attention"] = trainer.attention_choice or trainer.model.config["attention_impl"] + taken
                if head == "chunked" and small and "memory" in a.only:
                    mine.update(chunked_loss_check(trainer))
                results[key] = mine
                rows.append((name, head, mine))
                print(key, json.dumps(mine), flush=True)  # now: a time limit may cut the table off
                if a.profile:
                    print_profile(trainer, f"{name}, {head} head")
                if small and "loader" in a.only and "loader_stall" not in results:
                    results["loader_stall"] = loader_stall(trainer, a.stall_steps)
            del trainer
    reset_memory()

    print("\n## Training step (GPT)\n")
    print("| model | head | reference style tok/s | tuned tok/s | arrows tok/s | arrows MFU | vs tuned | vs reference (target ≥ 8×) | peak memory arrows / tuned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, head, mine in rows:
        ref, tuned = anchor.get(f"reference_style_{name}"), anchor.get(f"tuned_{name}")
        if not (ref and tuned):  # the anchor was not run (--only loader)
            print(f"| {name} | {head} | - | - | {mine['tokens_per_s']:,} | {mine['mfu']:.1%} | - | - | {mine['peak_mem_GiB']} GiB / - |")
            continue
        memory = f"{mine['peak_mem_GiB']} / {tuned.get('peak_mem_GiB', 0)} GiB"
        if tuned.get("peak_mem_GiB"):
            memory += f" = {mine['peak_mem_GiB'] / tuned['peak_mem_GiB']:.2f}×" + (" (target ≤ 0.6×)" if head == "chunked" else "")
        print(f"| {name} | {head} | {ref['tokens_per_s']:,} | {tuned['tokens_per_s']:,} | {mine['tokens_per_s']:,} | {mine['mfu']:.1%} | "
              f"{mine['tokens_per_s'] / tuned['tokens_per_s']:.2f}× (target ≥ {shapes[name]['target']}×) | "
              f"{mine['tokens_per_s'] / ref['tokens_per_s']:.1f}× | {memory} |")
    print()
    for name, head, mine in rows:
        print(f"{name}, {head} head, attention: {mine['attention']}")
    for name, head, mine in rows:
        if "loss_plain" in mine:
            print(f"\n{name}, chunked head: loss {mine['loss_chunked']:.5f} against the plain head's {mine['loss_plain']:.5f} on the same "
                  f"batch and weights under bf16 autocast (difference {mine['loss_rel_diff']:.2e} relative).")
    if "loader_stall" in results:
        r = results["loader_stall"]
        print(f"\n## Loader\n\n{next(iter(shapes))} step fed by the loader from real shards: {r['fed_ms']} ms; the same step on a batch already on the "
              f"device: {r['resident_ms']} ms; ratio {r['ratio']:.3f} (target ≤ 1.02; medians of {r['rounds']} alternating rounds "
              f"of {r['steps']} steps).")


def print_profile(trainer, name: str, steps: int = 3) -> None:
    """Where the step's device time goes: the kernels that take most of it over a few steps."""
    from torch.profiler import ProfilerActivity, profile

    batches = trainer._batches()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.cuda else [])
    with profile(activities=activities) as prof:
        seconds_per_step(trainer, batches, steps)
    sort = "self_cuda_time_total" if trainer.cuda else "self_cpu_time_total"
    print(f"\n## Profile of {name}, {steps} steps (top kernels by self time)\n")
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70))


def loader_stall(trainer, steps: int, rounds: int = 3) -> dict:
    """The step fed by the loader against the same step on one batch already on the device, in
    alternating rounds (timings drift on shared machines; alternating spreads the drift evenly)."""
    fed_batches = trainer._batches()
    resident = next(fed_batches)
    resident_batches = itertools.repeat(resident)
    fed, kept = [], []
    for _ in range(rounds):
        fed.append(seconds_per_step(trainer, fed_batches, steps))
        kept.append(seconds_per_step(trainer, resident_batches, steps))
    f, k = statistics.median(fed), statistics.median(kept)
    return {"fed_ms": round(f * 1e3, 2), "resident_ms": round(k * 1e3, 2), "ratio": round(f / k, 4), "rounds": rounds, "steps": steps}


def chunked_loss_check(trainer) -> dict:
    """The chunked head's loss against the plain head's: the same weights, the same batch, the same
    dropout masks (the same seed before each), bf16."""
    import torch

    model = trainer.model
    x, y = next(trainer._batches())
    x, y = x.to(trainer.device), y.to(trainer.device)
    losses = {}
    for head in ("chunked", "plain"):
        model.head_loss = head
        with torch.random.fork_rng(devices=[trainer.device] if trainer.cuda else []):
            torch.manual_seed(1)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.cuda):
                losses[head] = model(x, y)[1].item()  # gradients on: the training path of each head
        model.zero_grad(set_to_none=True)
    model.head_loss = "chunked"
    return {"loss_chunked": losses["chunked"], "loss_plain": losses["plain"],
            "loss_rel_diff": abs(losses["chunked"] - losses["plain"]) / losses["plain"]}


def section_attention(a, anchor: dict, results: dict) -> None:
    import torch

    from arrows.models.attention_choice import cuda_candidates, forward_backward_ms, sdpa
    from arrows.models.gpt import flex_causal_attention

    shape = ATTENTION_QUICK if a.quick else ATTENTION
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    kernels = {"sdpa": sdpa}
    if cuda:
        kernels["flex"] = lambda q, k, v, p: flex_causal_attention(q, k, v)  # no dropout: timed at p = 0 only
        kernels.update(cuda_candidates())  # arrows' Triton kernels
    else:
        print("\n(attention: no CUDA device; the Triton and Flex kernels are timed on a GPU only)")

    rows = []
    for T in shape["Ts"]:
        q, k, v = (torch.randn(shape["B"], shape["H"], T, shape["D"], device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        upstream = torch.randn_like(q, requires_grad=False)
        for p in (0.0, 0.1):
            row = {}
            for name, fn in kernels.items():
                if p and name == "flex":
                    continue  # FlexAttention has no dropout
                row[name] = round(forward_backward_ms(functools.partial(fn, q, k, v, p), upstream, 2 if a.quick else 30), 3)
            rows.append((T, p, row))
            results[f"attention_T{T}_dropout{p}"] = row
        del q, k, v, upstream
    print(f"\n## Attention forward + backward (B={shape['B']}, H={shape['H']}, D={shape['D']}, causal, {str(dtype).split('.')[-1]}), ms\n")
    names = list(kernels)
    print("| T | dropout | " + " | ".join(names) + " | triton / sdpa (target ≤ 1.0) | anchor hand / SDPA / Flex |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    for T, p, row in rows:
        ratio = f"{row['triton'] / row['sdpa']:.2f}" if "triton" in row else "n/a"
        key = f"attn_B{shape['B']}_H{shape['H']}_T{T}_D{shape['D']}"
        anc = anchor.get(key, {})
        anc_text = " / ".join(str(anc.get(k, "-")) for k in ("manual_ms", "sdpa_ms", "flex_ms")) if anc and not p else ""
        print(f"| {T} | {p} | " + " | ".join(str(row.get(n, "-")) for n in names) + f" | {ratio} | {anc_text} |")


def section_rnn(a, work: Path, results: dict) -> None:
    import torch

    s = RNN_QUICK if a.quick else RNN
    anchor = run_anchor("gpu_anchor_rnn.py", False) if torch.cuda.is_available() else {}
    store = token_store(work, s["vocab"])
    rows = []
    if torch.cuda.is_available():
        variants = (("eager", False, "plain"), ("compiled", True, "plain"), ("compiled, chunked head", True, "chunked"))
    else:  # the Trainer compiles on CUDA only
        variants = (("eager", False, "plain"), ("eager, chunked head", False, "chunked"))
    for kind in ("gru", "lstm"):
        for variant, compile, head in variants:
            reset_memory()
            model = {"model_type": kind, "vocab_size": s["vocab"], "n_layers": s["layers"], "embed_dim": s["width"],
                     "desired_attn_length": s["T"], "head_loss": head, "dropout": 0.0}  # the anchor's RNNs have none
            trainer = make_trainer(f"{kind}_{head}_{compile}", model, s["B"], store, work, compile=compile)
            mine = measure_step(trainer, a.steps, a.warm)
            nonemb = sum(p.numel() for n, p in trainer.model.named_parameters() if "embedder" not in n)
            mine["mfu_6N"] = round(6 * nonemb * mine["tokens_per_s"] / PEAK, 4)
            results[f"arrows_{kind}_{variant}"] = mine
            rows.append((kind, variant, mine))
            print(f"arrows_{kind}_{variant}", json.dumps(mine), flush=True)
            del trainer
    reset_memory()
    print(f"\n## GRU / LSTM ({s['layers']}×{s['width']}, T={s['T']}, B={s['B']})\n")
    print("| model | arrows | tok/s | MFU (6N) | peak memory | fp32 reference style tok/s | bf16 anchor tok/s | vs fp32 reference (target ≥ 1.9×) | vs bf16 anchor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, variant, mine in rows:
        ref = anchor.get(f"reference_style_{kind}_3x512_B250_T256_fp32", {}).get("tokens_per_s")
        bf16 = anchor.get(f"{kind}_3x512_B250_T256_bf16", {}).get("tokens_per_s")
        vs_ref = f"{mine['tokens_per_s'] / ref:.2f}×" if ref else "n/a"
        vs_bf16 = f"{mine['tokens_per_s'] / bf16:.2f}×" if bf16 else "n/a"
        print(f"| {kind} | {variant} | {mine['tokens_per_s']:,} | {mine['mfu_6N']:.1%} | {mine['peak_mem_GiB']} GiB | {ref or 'n/a'} | {bf16 or 'n/a'} | {vs_ref} | {vs_bf16} |")


def set_inductor_option(setting: str) -> None:
    import ast

    import torch._inductor.config as inductor

    key, _, text = setting.partition("=")
    *path, name = key.split(".")
    owner = inductor
    for part in path:  # nested sections, e.g. triton.cudagraphs
        owner = getattr(owner, part, None)
    if owner is None or not hasattr(owner, name):
        sys.exit(f"--inductor {setting}: torch._inductor.config has no {key}")
    value = ast.literal_eval(text)
    setattr(owner, name, value)
    print(f"torch._inductor.config.{key} = {value!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="every section on a CUDA GPU (the default is the training section only)")
    mode.add_argument("--quick", action="store_true", help="tiny shapes on CPU: checks the script, not the speed")
    ap.add_argument("--only", default=None, help=f"comma-separated sections among {', '.join(SECTIONS)}")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per measurement (default 12)")
    ap.add_argument("--warm", type=int, default=4, help="untimed steps first: compilation and autotuning (default 4)")
    ap.add_argument("--heads", default="plain", help="comma-separated head_loss settings the training section measures for each GPT "
                    "(plain, chunked, plain-unpadded: the plain head without its padding of the vocabulary; default plain; "
                    "the memory section adds chunked for GPT-2 small)")
    ap.add_argument("--models", default=None, help="comma-separated GPTs the GPT sections measure: gpt2small, medium (default both)")
    ap.add_argument("--anchor-from", type=Path, default=None, metavar="JSON",
                    help="take gpu_anchor.py's figures from an earlier run's bench/out/train.json instead of running it again "
                         "(the same machine, minutes before: a GPU session split into parts)")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY (a Python literal) before anything compiles, to try a compiler "
                         "setting on the step (repeatable; e.g. coordinate_descent_tuning=True, max_autotune_gemm=True)")
    ap.add_argument("--profile", action="store_true", help="also print the top kernels of each GPT step measured (torch.profiler)")
    ap.add_argument("--stall-steps", type=int, default=10, help="steps per round of the loader check (default 10)")
    a = ap.parse_args()
    import torch

    if not (a.quick or torch.cuda.is_available()):
        sys.exit("no CUDA device is visible: the full shapes need a GPU (use --quick on a CPU)")
    if a.quick:
        a.steps, a.warm, a.stall_steps = min(a.steps, 3), min(a.warm, 1), min(a.stall_steps, 2)
    a.only = set(SECTIONS if (a.gpu or a.quick) and a.only is None else (a.only or "training").split(","))
    a.models = set(a.models.split(",")) if a.models else None
    if a.models and a.models - set(map(model_name, GPT)):
        sys.exit(f"--models: choose among {', '.join(map(model_name, GPT))} (not {','.join(sorted(a.models))})")
    a.heads = a.heads.split(",")
    if set(a.heads) - {"plain", "chunked", "plain-unpadded"}:
        sys.exit(f"--heads: choose among plain, chunked, plain-unpadded (not {','.join(a.heads)})")
    unknown = a.only - set(SECTIONS)
    if unknown:
        sys.exit(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose among {', '.join(SECTIONS)}")

    for setting in a.inductor:
        set_inductor_option(setting)

    work = ROOT / "bench" / "out" / "train"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    needs_anchor = a.only & {"training", "memory"}  # the attention section times SDPA and Flex itself
    if needs_anchor and a.anchor_from:
        anchor = json.loads(a.anchor_from.read_text())["anchor"]
        print(f"anchor figures from {a.anchor_from} (device {anchor.get('device')}), not measured again")
    else:
        anchor = run_anchor("gpu_anchor.py", a.quick) if needs_anchor else {}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results["device"], results["torch"], results["inductor"] = device, torch.__version__, a.inductor
    print(f"\ndevice: {device}  torch {torch.__version__}  anchors: {SHARED / 'bench'}")
    if a.only & {"training", "memory", "loader"}:
        section_gpt(a, anchor, work, results)
    if "attention" in a.only:
        section_attention(a, anchor, results)
    if "rnn" in a.only:
        section_rnn(a, work, results)
    (ROOT / "bench" / "out" / "train.json").write_text(json.dumps({"anchor": anchor, "arrows": results}, indent=1) + "\n")
    print(f"\nresults: {ROOT / 'bench' / 'out' / 'train.json'}")


if __name__ == "__main__":
    main()
