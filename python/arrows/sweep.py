"""`arrows sweep`: several studies side by side, each differing from the others in a setting
(context length, model size, language), as the paper's sweeps are read: δ of each study with its
interval, as a table (`sweep.md`, `sweep.json`) and as δ against the setting (`sweep.png`).

It reads the reports that `arrows study` and `arrows compare` wrote and evaluates nothing itself,
so a sweep over GPT-medium studies takes a second; a report that evaluated a run at another step
than its checkpoint's now is refused, with the command that brings it up to date."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from arrows.errors import InputError
from arrows.report import figure, finish_figure, write_aside
from arrows.report import second as second_run  # how a report's second run reads its windows

SWEEP_FILES = {"json": "sweep.json", "markdown": "sweep.md", "figure": "sweep.png"}

# Settings that name a run rather than describe it: never "the setting that varies".
_RUN_IDENTITY = {"run_name", "save_loc", "state_save_loc", "backwards", "permutation", "wandb"}

# The order of a study's second run (backward, or a permutation), a setting of the study rather
# than of its forward run's config: a column when it differs between the studies.
ORDER_KEY = "study.second_run"


@dataclass
class Study:
    name: str  # as the table shows it: the folder's name
    report_path: Path
    report: dict
    settings: dict = field(default_factory=dict)  # "section.key" -> value, of its first forward run
    parameters: int | None = None
    runs_found: bool = True  # False: its runs are not where the report says; settings are the report's own


def _locate(path: Path) -> tuple[Path, list[Path], str]:
    """(report.json, the run folders it was computed from, in its pairs' order (fw, bw, fw, ...),
    what to run to redo it) for an argument: a study folder, a report folder (compare's --out) or
    a report.json."""
    from arrows.study import read_study_record

    path = Path(path)
    if path.is_file() and path.name == "report.json":
        path = path.parent
    record = read_study_record(path)
    if record is not None:
        runs = [path / run for pair in record["pairs"] for run in pair]
        return path / "report" / "report.json", runs, f"arrows compare {_shell_argument(path)}"
    if (path / "report.json").is_file():
        report = json.loads((path / "report.json").read_text())
        runs = [_run_folder(p, d, path, report.get("data")) for p in report.get("pairs", []) for d in ("fw", "bw")]
        redo = "arrows compare " + " ".join(_shell_argument(r) for r in runs) + f" --out {shlex.quote(str(path))}"
        return path / "report.json", runs, redo
    if not path.exists():
        raise FileNotFoundError(2, "No such study folder", str(path))
    raise InputError(f"{path}: neither a study folder (no study.json) nor a report (no report.json); give study folders, "
                     "or folders that `arrows compare --out` wrote")


def _shell_argument(path: Path) -> str:
    """`path` as an argument of a command to paste into a shell: quoted, and a relative path that
    begins with "-" (a study folder named -s) as ./-s, which the command does not take for an option."""
    text = str(path)
    return shlex.quote("./" + text if text.startswith("-") else text)


def _run_folder(pair: dict, key: str, report_dir: Path, data) -> Path:
    """The run folder of `pair[key]` ("fw" or "bw") in a report of `arrows compare --out`.

    A report names each run relative to its own folder (`fw_from_report`: found when the report
    and the runs moved together) and by its absolute path (`fw`). Reports written before
    2026-11-29 name it only as compare was given it, relative to the folder compare ran in: from
    elsewhere, the same relative path under a folder above the report is that run when its config
    names the report's data (compare run from the folder that holds both the runs and its --out);
    else the path as written."""
    from_report = pair.get(f"{key}_from_report")
    if from_report is not None:
        beside = Path(os.path.normpath(Path(report_dir) / from_report))
        if (beside / "config.json").is_file():
            return beside
    run = Path(pair[key])
    if run.is_absolute() or (run / "config.json").is_file():
        return run
    for above in Path(report_dir).resolve().parents:
        candidate = above / run
        try:
            if json.loads((candidate / "config.json").read_text())["training_params"]["dataset_folder"] == data:
                return candidate
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return run


def _problem(report_path: Path, runs: list[Path], redo: str) -> str | None:
    """Why a study's report cannot be used as it is, or None. A report is out of date when a
    run's checkpoint is at another step than the one it evaluated (trained further since): the
    steps, not the files' times, which a copy of the folder changes."""
    from arrows.checkpoint import LATEST, saved_step
    from arrows.compare import training_now
    from arrows.study import finish_command, read_study_record

    if not report_path.is_file():
        study = report_path.parent.parent
        record = read_study_record(study)
        if any(training_now(run) for run in runs):
            return f"{study}: no report yet: the study is training now; wait for it to end (it compares at the end)"
        if record["config"] is None:
            return f"{study}: no report yet (the study is unfinished, or was not compared): run `{redo}`"
        return (f"{study}: no report yet (the study is unfinished, or was not compared): run `{finish_command(study, record)}` "
                f"to finish it (it compares at the end), or `{redo}` to compare its runs as they are")
    pairs = json.loads(report_path.read_text()).get("pairs", [])
    evaluated = [p.get(key) for p in pairs for key in ("steps_fw", "steps_bw")]
    for run, step in zip(runs, evaluated):
        ckpt = run / "checkpoints" / LATEST
        now = saved_step(ckpt) if ckpt.is_file() else None  # runs moved away: the report as it is
        if now is not None and step is not None and now != step:
            if training_now(run):  # compared now, it would be out of date again at the next checkpoint
                return (f"{report_path}: evaluated {run} at step {step:,}, and it is training now (at step {now:,}): wait for it to end, "
                        f"then run `{redo}`")
            return f"{report_path}: evaluated {run} at step {step:,}, and its checkpoint is now at step {now:,}: run `{redo}` to bring it up to date"
    return None


def _flatten(config: dict) -> dict:
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items() if key not in _RUN_IDENTITY}


def load_studies(paths: list[Path]) -> list[Study]:
    """Each argument's report and settings; every problem named at once."""
    from arrows.config import config_from_dict
    from arrows.models import count_parameters

    if len(paths) < 2:
        raise InputError(f"give two or more studies to set side by side (got {len(paths)}); `arrows compare STUDY` reports one")
    located = [_locate(p) for p in paths]
    seen: dict[Path, Path] = {}
    problems = []
    for path, (report_path, runs, redo) in zip(paths, located):
        key = report_path.resolve()
        if key in seen:
            problems.append(f"{path}: the same report as {seen[key]}; give each study once")
        seen.setdefault(key, path)
        problems += filter(None, [_problem(report_path, runs, redo)])
    if problems:
        raise InputError("cannot set these studies side by side:\n  " + "\n  ".join(problems))

    studies = []
    for report_path, runs, _ in located:
        report = json.loads(report_path.read_text())
        study = Study(name=_folder(report_path).name, report_path=report_path, report=report)
        config_file = runs[0] / "config.json" if runs else None
        if config_file is not None and config_file.is_file():
            config = json.loads(config_file.read_text())
            study.settings = _flatten(config)
            try:
                study.parameters = count_parameters(config_from_dict(config).model_dict())
            except (InputError, OSError):
                pass  # a config this version no longer reads: the table goes without the count
        else:  # the runs moved away: what the report itself records
            study.settings = {"training_params.dataset_folder": report["data"], "model_params.attn_length": report["attn_length"]}
            study.runs_found = False
        studies.append(study)
    names = [s.name for s in studies]
    for s in studies:  # two folders named alike (runs/en/medium, runs/fr/medium): their parents tell them apart
        if names.count(s.name) > 1:
            s.name = f"{_folder(s.report_path).parent.name}/{s.name}"
    return studies


def _folder(report_path: Path) -> Path:
    """The folder a report stands for: its study's (STUDY/report/report.json), else its own."""
    from arrows.study import STUDY_FILE

    folder = report_path.resolve().parent
    return folder.parent if folder.name == "report" and (folder.parent / STUDY_FILE).is_file() else folder


def varying_settings(studies: list[Study]) -> list[str]:
    """The settings whose value differs between the studies, in the configs' order."""
    keys = list(dict.fromkeys(k for s in studies for k in s.settings))
    # A study whose runs were not found knows only its data and window: its other settings are
    # unknown, not different (every other key of the config was listed as varying).
    return [k for k in keys if len({json.dumps(s.settings.get(k), sort_keys=True) for s in studies if s.runs_found or k in s.settings}) > 1]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mark_orders(studies: list[Study]) -> None:
    """When the studies' second runs read in different orders (backward and permuted, or two
    permutations of one window length), that order is a setting that varies: δ measures another
    thing in each. Permutations of different window lengths differ of necessity (a permuted
    context sweep): they are all "permuted"."""
    seconds = [second_run(s.report) for s in studies]
    names = [x["label"] for x in seconds]
    perms = list(dict.fromkeys(json.dumps(x["permutation"]) for x in seconds if x["permutation"] is not None))
    lengths = [len(json.loads(p)) for p in perms]
    if len(set(lengths)) < len(lengths):  # two permutations of one length: numbered, the json has them
        names = [n if x["permutation"] is None else f"{n} #{perms.index(json.dumps(x['permutation'])) + 1}" for n, x in zip(names, seconds)]
    if len(set(names)) < 2:
        return
    for s, name in zip(studies, names):
        s.settings = {ORDER_KEY: name, **s.settings}


def sweep_axis(studies: list[Study], varying: list[str]) -> tuple[str, list[float]] | None:
    """What δ is drawn against: the one numeric setting that varies (a context length); else the
    parameter count when the models differ in size on the same data and window, of one kind (a
    model-size sweep, whose batch and learning rate may change with the size: a GPT beside a GRU
    is two architectures, not two sizes); None: the studies themselves, side by side (languages,
    architectures, or several settings at once)."""
    if len(varying) == 1 and all(_number(s.settings.get(varying[0])) for s in studies):
        return varying[0].split(".", 1)[1], [float(s.settings[varying[0]]) for s in studies]
    same_data_window_and_kind = not {"training_params.dataset_folder", "model_params.attn_length", "model_params.desired_attn_length",
                                     "model_params.model_type", ORDER_KEY} & set(varying)
    sizes = [s.parameters for s in studies]
    if same_data_window_and_kind and all(sizes) and len(set(sizes)) == len(sizes):
        return "parameters", [float(n) for n in sizes]
    return None


def interval(summary: dict) -> tuple[float, float, str]:
    """The interval a sweep shows for a study: with several seeds the one with training noise,
    else the windows' bootstrap interval (evaluation noise only)."""
    if summary.get("seed_low") is not None:
        return summary["seed_low"], summary["seed_high"], "training + evaluation noise"
    return summary["low"], summary["high"], "evaluation noise only"


def sweep(paths: list[Path]) -> dict:
    """The sweep of the studies at `paths` (study folders, or report folders of `arrows compare`)
    as a dict: what varies, and each study's figures, sorted along the axis when there is one."""
    studies = load_studies(paths)
    _mark_orders(studies)
    varying = varying_settings(studies)
    axis = sweep_axis(studies, varying)
    rows = []
    for k, s in enumerate(studies):
        summary = s.report["summary"]
        low, high, noise = interval(summary)
        rows.append({
            # Absolute, as compare records its runs: sweep.json and sweep.md are read from elsewhere.
            "study": s.name, "report": os.path.abspath(s.report_path), "settings": {key: s.settings.get(key) for key in varying},
            "parameters": s.parameters, "x": axis[1][k] if axis else None, "data": s.report["data"],
            "windows": summary["windows"], "seeds": summary.get("seeds", len(s.report.get("pairs", [])) or 1),
            "loss_fw": summary["loss_fw"], "loss_bw": summary["loss_bw"], "delta": summary["delta"],
            "low": low, "high": high, "interval": noise, "notes": len(s.report.get("notes", [])),
            "second": second_run(s.report)["label"], "permutation": second_run(s.report)["permutation"],
            "runs_found": s.runs_found,
        })
    if axis:
        rows.sort(key=lambda r: r["x"])
    labels = {r["second"] for r in rows}
    return {"varying": varying, "axis": axis[0] if axis else None, "second": labels.pop() if len(labels) == 1 else None, "studies": rows}


def _words(result: dict) -> tuple[str, str, str]:
    """The second runs' loss symbol, word and phrase: backward (bw), permuted (perm), or both."""
    second = result.get("second", "backward")
    if second is None:
        return "2nd", "second run", "the second run's model (backward or permuted: its second_run column)"
    return ("bw", "backward", "the backward model") if second == "backward" else ("perm", second, f"the {second} model")


def write_sweep(result: dict, out: Path) -> dict:
    """sweep.json, sweep.md and sweep.png into `out`, replacing an earlier sweep's files whole."""
    write_aside(out, {
        SWEEP_FILES["figure"]: lambda p: _plot(result, p),
        SWEEP_FILES["json"]: lambda p: p.write_text(json.dumps(result, indent=2) + "\n"),
        SWEEP_FILES["markdown"]: lambda p: p.write_text(markdown(result)),  # last: it names the others
    })
    return {name: Path(out) / file for name, file in SWEEP_FILES.items()}


def _short(key: str) -> str:
    return key.split(".", 1)[1]


def _value(v) -> str:
    if _number(v):
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"
    return "–" if v is None else str(v)


def markdown(result: dict) -> str:
    rows, varying = result["studies"], result["varying"]
    varies = ", ".join(f"`{_short(k)}`" for k in varying) or "nothing (the same settings: repeated studies)"
    sym, _, name = _words(result)
    arrow = " (a forward arrow)" if sym == "bw" else ""
    lines = [
        "# Arrow of time across studies",
        "",
        f"Settings that differ between the studies: {varies}. δ = (L_{sym} − L_fw) / L_fw; > 0: {name} is "
        f"worse{arrow}. Each study's interval is its report's 95% interval: with several seeds the one that "
        "includes training noise, else the paired bootstrap over validation windows (evaluation noise only: another "
        "seed can land outside it).",
        "",
        "| study | " + "".join(f"{_short(k)} | " for k in varying) + f"parameters | windows | seeds | L_fw | L_{sym} | δ | 95% interval | noise covered |",
        "|---|" + "---|" * len(varying) + "---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['study']} | " + "".join(f"{_value(r['settings'][k])} | " for k in varying)
            + f"{_value(r['parameters'])} | {r['windows']:,} | {r['seeds']} | {r['loss_fw']:.4f} | {r['loss_bw']:.4f} | "
            f"{100 * r['delta']:+.2f}% | [{100 * r['low']:+.2f}%, {100 * r['high']:+.2f}%] | {r['interval']} |"
        )
    noted = [r for r in rows if r["notes"]]
    if noted:
        lines += ["", "Notes of the studies' own reports (read them before the table):", ""]
        lines += [f"- {r['study']}: {r['notes']} note(s) in `{Path(r['report']).with_name('report.md')}`" for r in noted]
    missing = runs_not_found(result)
    if missing:
        lines += ["", *(f"- {m}" for m in missing)]
    lines += ["", f"![δ by {result['axis'] or 'study'}]({SWEEP_FILES['figure']})", ""]
    return "\n".join(lines)


def runs_not_found(result: dict) -> list[str]:
    """A line for each study whose runs are not where its report says."""
    return [f"{r['study']}: its runs were not found where its report names them (moved away, or named relative to the folder "
            "`arrows compare` ran in): its settings here are its report's data and window only, and whether the report is "
            "up to date was not checked" for r in result["studies"] if not r.get("runs_found", True)]


def _plot(result: dict, path: Path) -> None:
    import numpy as np

    plt = figure()
    rows = result["studies"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 3), 4.2))
    d = np.array([100 * r["delta"] for r in rows])
    # A percentile interval need not hold its estimate: an arm of negative length is drawn as none.
    err = np.clip([[100 * (r["delta"] - r["low"]) for r in rows], [100 * (r["high"] - r["delta"]) for r in rows]], 0, None)
    axis = result["axis"]
    if axis:
        x = np.array([r["x"] for r in rows])
        if x.min() > 0 and x.max() / x.min() >= 8:
            ax.set_xscale("log", base=2 if axis != "parameters" else 10)
        ax.plot(x, d, color="tab:blue", lw=1, alpha=0.6)
        if axis != "parameters":
            ax.set_xticks(x, [_value(int(v) if float(v).is_integer() else v) for v in x])
            ax.minorticks_off()
    else:
        x = np.arange(len(rows))
        ax.set_xticks(x, [r["study"] for r in rows], rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    # Each kind of interval its own marker: one legend entry naming both kinds left the reader to
    # guess which study's interval covered training noise.
    kinds = sorted({r["interval"] for r in rows})
    for kind in kinds:
        mine = np.array([r["interval"] == kind for r in rows])
        ax.errorbar(x[mine], d[mine], yerr=err[:, mine], capsize=5, label=f"95% interval: {kind}", **_INTERVAL_STYLES.get(kind, {"fmt": "o", "color": "black"}))
    ax.axhline(0, color="grey", lw=1)
    # A band above the highest interval for the legend: placed among the points, it hid the ends of
    # long intervals (matplotlib's "best" place does not see error bars).
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.15 * len(kinds) * (high - low))
    ax.legend(loc="upper left", fontsize="small")
    sym, name, _ = _words(result)
    finish_figure(plt, fig, ax, path, axis, f"δ = (L_{sym} − L_fw) / L_fw  (%)\n> 0: {name} worse" + (" (forward arrow)" if sym == "bw" else ""),
                  f"Arrow of time by {axis or 'study'}", legend=False)


_INTERVAL_STYLES = {"evaluation noise only": {"fmt": "o", "color": "black"},
                    "training + evaluation noise": {"fmt": "D", "color": "tab:red"}}


def print_sweep(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    varying = result["varying"]
    sym, name, _ = _words(result)
    table = Table(title="arrow of time across studies", title_justify="left",
                  caption=f"loss in nats/token; δ = (L_{sym} − L_fw) / L_fw, > 0: {name} worse; 95% interval of each study's "
                          "report (with training noise when it has several seeds)", caption_justify="left")
    seeds = any(r["seeds"] > 1 for r in result["studies"])
    columns = ("study", *map(_short, varying), "parameters", *(("seeds",) if seeds else ()), "L_fw", f"L_{sym}", "δ [95% interval]")
    for col in columns:  # headers whole; a long study name folds rather than pushing the figures off
        table.add_column(col, justify="left" if col == "study" else "right", min_width=len(col),
                         overflow="fold" if col == "study" else "ellipsis", no_wrap=col != "study")
    for r in result["studies"]:
        table.add_row(r["study"], *(_value(r["settings"][k]) for k in varying), _value(r["parameters"]),
                      *((str(r["seeds"]),) if seeds else ()), f"{r['loss_fw']:.4f}", f"{r['loss_bw']:.4f}",
                      f"{100 * r['delta']:+.2f}% [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]")
    # Wider than the terminal (several settings vary, long names): rich would squeeze the study
    # column to nothing and cut the figures short ("3.79…"); the table is printed whole instead,
    # as wide as it needs (a terminal wraps its lines, a file or pipe keeps them).
    console = Console(highlight=False)
    needed = Console(width=10_000).measure(table).maximum
    if needed > console.width:
        console = Console(highlight=False, width=needed)
    console.print(table)
    for line in runs_not_found(result):
        console.print(f"note: {line}")

