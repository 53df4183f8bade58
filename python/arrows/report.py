"""The report of `arrows compare`: `report.json` (every figure), `report.md` (tables and
pictures) and the PNG figures, drawn off-screen with matplotlib."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from arrows.errors import InputError, naming_file

FIGURES = {"curves": "curves.png", "positions": "loss_by_position.png", "delta": "delta.png"}
COLOURS = {"forward": "tab:blue", "backward": "tab:orange", "permuted": "tab:orange"}


def second(report: dict) -> dict:
    """The order of the report's second run (`compare.second_order`); reports written before
    permuted runs could be compared have only backward ones."""
    from arrows.compare import BACKWARD_ORDER

    return report.get("second") or BACKWARD_ORDER


def delta_meaning(report: dict) -> str:
    """What δ > 0 says, for the report's second order."""
    if second(report)["direction"] == "backward":
        return "the backward model's loss is higher (an arrow favouring the forward direction)"
    return "the model reading the windows in the permuted order has the higher loss (reading forward is easier)"


def check_report_folder(out: Path) -> Path:
    """`out` as the report's folder: a folder, or nothing yet. Checked before the runs are
    evaluated, so that a wrong --out is said at once, not after minutes of evaluation."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; --out names the folder that receives the report's files and figures")
    # Writable: the folder, or the nearest one above it that exists (where it will be made). A
    # read-only study (a shared or archived copy) failed only after the whole evaluation, naming
    # a temporary folder ("report/.report-hqhglhoy: Read-only file system").
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():  # out = FILE/report
        raise InputError(f"{out}: {existing} is a file, not a folder; give --out a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot write {'in' if existing == out else 'under'} {existing} (a read-only file system, or no "
                         "permission); give --out a folder you can write to")
    return out


def write_report(report: dict, out: Path) -> dict:
    """Write report.json, report.md and the figures into `out` (see `write_aside`); returns the
    paths written."""
    out = Path(out)
    write_aside(out, {
        FIGURES["curves"]: lambda p: _plot_curves(report, p),
        FIGURES["positions"]: lambda p: _plot_positions(report, p),
        FIGURES["delta"]: lambda p: _plot_delta(report, p),
        "report.json": lambda p: p.write_text(json.dumps(runs_from_report(report, out), indent=2) + "\n"),
        "report.md": lambda p: p.write_text(markdown(report)),  # last: it names the others
    })
    return {"json": out / "report.json", "markdown": out / "report.md", **{name: out / file for name, file in FIGURES.items()}}


def runs_from_report(report: dict, out: Path) -> dict:
    """`report` with each pair's runs also named relative to the report's folder `out`
    (`fw_from_report`, `bw_from_report`), beside their absolute paths (`fw`, `bw`): a report
    moved or copied together with its runs (a project folder moved to another disk) still finds
    them, and a report moved alone finds them at their absolute paths."""
    base = os.path.abspath(out)
    pairs = [{**p, **{f"{k}_from_report": os.path.relpath(os.path.abspath(p[k]), base) for k in ("fw", "bw")}} for p in report["pairs"]]
    return {**report, "pairs": pairs}


def write_aside(out: Path, writers: dict) -> None:
    """Make each file `name` of `writers` ({name: function(path)}) in `out`.

    Everything is written into a temporary folder inside `out` first, then moved over the
    previous files in the order given: an interruption or a failure while drawing (Ctrl-C, a full
    disk) leaves the previous files whole, never new figures beside an old report."""
    out = check_report_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".report-{os.getpid()}-", dir=out))
    try:
        for name, write in writers.items():
            # A full disk or a quota while a figure is saved reaches here without a file name
            # (PIL's close): the message was only "No space left on device". Name the file.
            with naming_file(out / name):
                write(tmp / name)
        for name in writers:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned(out: Path) -> None:
    """Remove the temporary folders of `write_aside` in `out` whose process has ended: a kill -9
    while a report was written left one behind (hidden, but never removed)."""
    for folder in out.glob(".report-*-*"):
        pid = folder.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only whether the process exists
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (PermissionError, OverflowError):  # another user's process, or no pid at all
            pass


def _fmt_delta(d: dict) -> str:
    return f"{100 * d['delta']:+.2f}% [{100 * d['low']:+.2f}%, {100 * d['high']:+.2f}%]"


def _count(n: int, noun: str) -> str:
    """'1 token', '2,000 tokens'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def markdown(report: dict) -> str:
    s = report["summary"]
    label, sym = second(report)["label"], second(report)["symbol"]
    lines = [
        f"# Arrow of time: forward vs {label}",
        "",
        f"Data: `{report['data']}`, window {report['attn_length']} tokens; both directions scored on the same "
        f"{_count(s['windows'], 'validation window')} ({_count(s['tokens'], 'token')}) per pair: disjoint windows over the "
        f"whole validation split, so the losses can differ from the `valid_loss` that training logs (its windows "
        f"overlap, and `valid_batches` may take only some of them).",
        "",
        f"| | forward | {label} | δ = (L_{sym} − L_fw) / L_fw, 95% paired bootstrap interval |",
        "|---|---|---|---|",
        f"| validation loss (nats/token){', mean of the seeds' if len(report['pairs']) > 1 else ''} | {s['loss_fw']:.4f} | {s['loss_bw']:.4f} | {_fmt_delta(s)} |",
        "",
        f"δ > 0: {delta_meaning(report)}; δ is a ratio, the same "
        f"in nats or bits. The interval resamples the {_count(s['windows'], 'window')} (both directions together: paired; "
        f"in blocks of {s.get('block', 1)} neighbouring windows, which are alike in a text; "
        f"expanded percentile interval, {s.get('resamples', 0):,} resamples): it covers evaluation noise only, which "
        "windows of text were scored, not training noise: another seed can give a δ outside it"
        + ("." if len(report["pairs"]) > 1 else "; `arrows study --seeds K` gives an interval with both."),
    ]
    if len(report["pairs"]) > 1:
        lines += [
            "",
            f"Over {len(report['pairs'])} seeds: δ = {100 * s['delta_seed_mean']:+.2f}% ± {100 * s['delta_seed_std']:.2f}% "
            "(mean ± standard deviation over seeds: the training noise)."
            + (f" **95% interval with training and evaluation noise: [{100 * s['seed_low']:+.2f}%, {100 * s['seed_high']:+.2f}%]** "
               f"(Student t over the {len(report['pairs'])} seeds' δ, combined with the windows' bootstrap error)." if s.get("seed_low") is not None else ""),
            "",
            f"| seed | forward | {label} | δ [95% interval] |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['seed']} | {p['loss_fw']:.4f} | {p['loss_bw']:.4f} | {_fmt_delta(p)} |" for p in report["pairs"]]
    synth = report.get("synthetic")
    if synth:
        expected = f"Expected arrow: **{synth['expected_arrow']}**. " if synth.get("expected_arrow") else ""
        lines += ["", f"## Synthetic language `{synth['kind']}`", "", f"{expected}{synth['verdict']}", ""]
        if synth.get("ideal") is not None:
            lines.append(f"Best possible loss (the language's entropy, the same in both directions): {synth['ideal']:.4f} nats/token.")
            lines.append("")
        fields = report["pairs"][0].get("fields")
        if fields:
            names = list(fields["forward"])
            lines += ["Loss by field of the line (nats/token, first seed):", "", "| field | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for direction in fields:
                lines.append(f"| {direction} | " + " | ".join(f"{fields[direction][n]:.4f}" for n in names) + " |")
            lines.append("")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += [
        "",
        "## Figures",
        "",
        f"![training and validation curves]({FIGURES['curves']})",
        "",
        f"![loss by position in the window]({FIGURES['positions']})",
        "",
        f"![delta per seed]({FIGURES['delta']})",
        "",
        "## Runs",
        "",
    ]
    lines += [f"- seed {p['seed']}: forward `{p['fw']}` (step {p['steps_fw']}), {label} `{p['bw']}` (step {p['steps_bw']})" for p in report["pairs"]]
    if second(report)["permutation"] is not None:
        lines.append(f"- the permuted order (position k of its reading order is the window's position permutation[k]): {second(report)['permutation']}")
    return "\n".join(lines) + "\n"


def figure():
    import matplotlib

    matplotlib.use("Agg")  # off-screen: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(report: dict, path: Path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pairs = report["pairs"]
    for i, p in enumerate(pairs):
        # One line style per seed (colour: the direction), named in the legend when there are several.
        style = ("-", "--", ":", "-.")[i % 4]
        seed = f", seed {p['seed']}" if len(pairs) > 1 else ""
        for direction in ("forward", second(report)["label"]):
            c = p["curves"][direction]
            if c["train"]:
                steps, losses = zip(*c["train"])
                ax.plot(steps, losses, color=COLOURS[direction], ls=style, alpha=0.5, lw=1, label=f"{direction}{seed} (training)")
            if c["valid"]:
                steps, losses = zip(*c["valid"])
                ax.plot(steps, losses, color=COLOURS[direction], ls=style, marker="o", lw=2, label=f"{direction}{seed} (validation)")
    if len(pairs) > 1:
        # One entry per direction, kind of curve and seed, beside the axes: an entry per curve (4 per
        # seed) covered the curves, and from 4 seeds on ran off the bottom of the figure.
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=COLOURS[d], lw=2, label=d) for d in ("forward", second(report)["label"])]
        handles += [Line2D([], [], color="grey", lw=1, alpha=0.5, label="training"), Line2D([], [], color="grey", lw=2, marker="o", label="validation")]
        handles += [Line2D([], [], color="grey", ls=("-", "--", ":", "-.")[i % 4], label=f"seed {p['seed']}") for i, p in enumerate(pairs)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    finish_figure(plt, fig, ax, path, "optimizer step", "loss (nats/token)", "Training and validation loss", legend=len(pairs) == 1)


def _plot_positions(report: dict, path: Path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # Each model's own reading order: position 0 of the backward model is the window's last token.
    other = second(report)["label"]
    other_order = {"backward": "from the window's end", "permuted": "in its permuted order"}[other]
    for direction, key, order in (("forward", "position_loss_fw", "from the window's start"), (other, "position_loss_bw", other_order)):
        curve = np.mean([p[key] for p in report["pairs"]], axis=0)
        ax.plot(np.arange(len(curve)), curve, color=COLOURS[direction], label=f"{direction} (reads {order})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole: a short window had ticks at 2.5
    seeds = len(report["pairs"])
    finish_figure(plt, fig, ax, path, "position in the window, in the model's reading order (tokens of context before it)", "validation loss (nats/token)",
            "Loss by position" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))


def _plot_delta(report: dict, path: Path) -> None:
    plt = figure()
    pairs = report["pairs"]
    s = report.get("summary", {})
    # With several seeds, their mean with the interval that includes training noise is drawn beside
    # them: alone, the seeds' narrow intervals (evaluation noise only) read as a settled arrow even
    # where the seeds disagree and the study's own interval holds 0.
    overall = len(pairs) > 1 and s.get("seed_low") is not None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * (len(pairs) + overall) + 2), 4.8 if overall else 4))
    x = np.arange(len(pairs))
    d = np.array([100 * p["delta"] for p in pairs])
    err = np.array([[100 * (p["delta"] - p["low"]) for p in pairs], [100 * (p["high"] - p["delta"]) for p in pairs]])
    # A percentile interval need not hold the point estimate (few windows, few resamples): an arm
    # of negative length, which matplotlib refuses, is drawn as none.
    err = np.clip(err, 0, None)
    ax.errorbar(x, d, yerr=err, fmt="o", color="black", capsize=5, label="each seed: 95% interval over windows (evaluation noise)")
    labels = [f"seed {p['seed']}" for p in pairs]
    if overall:
        mean_err = np.clip([[100 * (s["delta"] - s["seed_low"])], [100 * (s["seed_high"] - s["delta"])]], 0, None)
        ax.errorbar([len(pairs)], [100 * s["delta"]], yerr=mean_err, fmt="D", color="tab:red", capsize=7, lw=2,
                    label=f"mean of {len(pairs)} seeds: 95% interval with training noise")
        labels.append(f"mean of {len(pairs)} seeds")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(np.arange(len(labels)), labels)
    title = "δ per seed, and their mean" if overall else "δ (95% paired bootstrap interval over windows)"
    if overall:  # under the axes: inside, it hid the ends of the intervals
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize="small")
    sym, label = second(report)["symbol"], second(report)["label"]
    finish_figure(plt, fig, ax, path, None, f"δ = (L_{sym} − L_fw) / L_fw  (%)\n> 0: {label} worse" + (" (forward arrow)" if label == "backward" else ""),
                  title, legend=False)


def finish_figure(plt, fig, ax, path: Path, xlabel: str | None, ylabel: str, title: str, legend: bool = True) -> None:
    """Labels, grid and legend, then the PNG."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
