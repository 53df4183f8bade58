"""`arrows sweep`: studies that differ in a setting, side by side (the paper's context and size sweeps)."""

import json
import os
import shutil

import pytest
from conftest import arrows

from arrows.errors import InputError
from arrows.sweep import Study, sweep_axis, varying_settings


def _config(store, runs, attn_length, steps=20):
    return {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": attn_length, "dropout": 0.0},
        "training_params": {"dataset_folder": str(store), "batch_size": 16, "steps_to_train": steps, "valid_fraction": 0.1,
                            "valid_every": steps, "step_log": 10, "save_every": steps, "sample_every": 0, "save_loc": str(runs),
                            "threads": 1},
        "optim_params": {"lr": 3e-3, "warmup_steps": 4},
    }


@pytest.fixture(scope="module")
def context_sweep(tmp_path_factory):
    """Three small studies of one text at context lengths 8, 16 and 32."""
    tmp = tmp_path_factory.mktemp("sweep")
    arrows("synth", "sparse-linear", "--out", tmp / "s.txt", "--lines", "3000", "--bits", "6")
    arrows("tokenize", tmp / "s.txt", "--tokenizer", "bytes", "--out", tmp / "tokens")
    for length in (8, 16, 32):
        (tmp / f"ctx{length}.json").write_text(json.dumps(_config(tmp / "tokens", tmp / "runs", length)))
        arrows("study", tmp / f"ctx{length}.json", "--out", tmp / f"ctx{length}")
    return tmp


def test_sweep_sets_studies_along_the_setting_that_varies(context_sweep, tmp_path):
    tmp = context_sweep
    proc = arrows("sweep", tmp / "ctx32", tmp / "ctx8", tmp / "ctx16", "--out", tmp_path / "sweep")
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert result["varying"] == ["model_params.attn_length"] and result["axis"] == "attn_length"
    rows = result["studies"]
    assert [r["study"] for r in rows] == ["ctx8", "ctx16", "ctx32"] and [r["x"] for r in rows] == [8, 16, 32]
    for r in rows:  # each study's own figures, one seed: its windows' interval
        summary = json.loads((tmp / r["study"] / "report" / "report.json").read_text())["summary"]
        assert (r["delta"], r["low"], r["high"], r["loss_fw"]) == (summary["delta"], summary["low"], summary["high"], summary["loss_fw"])
        assert r["interval"] == "evaluation noise only" and r["seeds"] == 1 and r["settings"] == {"model_params.attn_length": r["x"]}
    assert rows[0]["parameters"] < rows[2]["parameters"]  # the longer window's position table
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| study | attn_length | parameters |" in md and f"| ctx16 | 16 | {rows[1]['parameters']:,} |" in md
    png = (tmp_path / "sweep" / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "ctx8" in proc.stdout and f"{100 * rows[0]['delta']:+.2f}%" in proc.stdout and "sweep.md" in proc.stdout
    assert not [p for p in (tmp_path / "sweep").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_sweep_refuses_what_it_cannot_read_naming_the_way_out(context_sweep, tmp_path):
    tmp = context_sweep
    one_study = arrows("sweep", tmp / "ctx8", "--out", tmp_path / "a", check=False)
    assert one_study.returncode == 1 and "two or more" in one_study.stderr
    twice = arrows("sweep", tmp / "ctx8", tmp / "ctx8", "--out", tmp_path / "b", check=False)
    assert twice.returncode == 1 and "give each study once" in twice.stderr
    neither = arrows("sweep", tmp / "ctx8", tmp / "tokens", "--out", tmp_path / "c", check=False)
    assert neither.returncode == 1 and "neither a study folder" in " ".join(neither.stderr.split())
    # Trained further since its report: the report no longer describes the runs. (A copy of the
    # folders, which gives every file a new time, is not taken for that.)
    copy = tmp_path / "copy"
    for name in ("ctx8", "ctx16"):
        shutil.copytree(tmp / name, copy / name, copy_function=shutil.copy)  # times not kept
    os.utime(copy / "ctx16" / "report" / "report.json", (1, 1))  # older than every checkpoint
    arrows("sweep", copy / "ctx8", copy / "ctx16", "--out", tmp_path / "copied")
    report = copy / "ctx16" / "report" / "report.json"
    stale_report = json.loads(report.read_text())
    stale_report["pairs"][0]["steps_bw"] = 10
    report.write_text(json.dumps(stale_report))
    stale = arrows("sweep", copy / "ctx8", copy / "ctx16", "--out", tmp_path / "d", check=False)
    message = " ".join(stale.stderr.split())
    assert stale.returncode == 1 and f"evaluated {copy / 'ctx16' / 'bw'} at step 10, and its checkpoint is now at step 20" in message, message
    assert f"arrows compare {copy / 'ctx16'}" in message and not (tmp_path / "d" / "sweep.json").exists()
    # A report folder that compare --out wrote is read as a study's own.
    arrows("compare", tmp / "ctx32" / "fw", tmp / "ctx32" / "bw", "--out", tmp_path / "ctx32_report")
    arrows("sweep", tmp / "ctx8", tmp_path / "ctx32_report", "--out", tmp_path / "e")
    mixed = json.loads((tmp_path / "e" / "sweep.json").read_text())
    assert [(r["study"], r["x"]) for r in mixed["studies"]] == [("ctx8", 8), ("ctx32_report", 32)]


def test_a_study_of_a_permuted_order_is_told_from_a_backward_one(context_sweep, tmp_path):
    """A sweep over a backward study and one whose second run read a permutation showed the
    permuted loss under L_bw and "backward worse", the order nowhere (not a setting that varied);
    and a table wider than the terminal squeezed the study names to nothing and cut the figures
    short ("3.79…")."""
    tmp = context_sweep
    second = {"direction": "permutation", "label": "permuted", "symbol": "perm", "permutation": [1, 0, *range(2, 16)]}
    for name, permutation in (("perm_a", second["permutation"]), ("perm_b", second["permutation"]), ("perm_c", [*range(15), 15][::-1])):
        shutil.copytree(tmp / "ctx16", tmp_path / name)  # the report alone tells a permuted study (sweep reads no run's order)
        report = json.loads((tmp_path / name / "report" / "report.json").read_text())
        report["second"] = {**second, "permutation": permutation}
        (tmp_path / name / "report" / "report.json").write_text(json.dumps(report))
    mixed = arrows("sweep", tmp / "ctx8", tmp / "ctx16", tmp_path / "perm_a", "--out", tmp_path / "mixed", env={"COLUMNS": "80"})
    result = json.loads((tmp_path / "mixed" / "sweep.json").read_text())
    assert result["varying"] == ["study.second_run", "model_params.attn_length"] and result["axis"] is None and result["second"] is None
    assert [(r["study"], r["settings"]["study.second_run"]) for r in result["studies"]] == [("ctx8", "backward"), ("ctx16", "backward"), ("perm_a", "permuted")]
    md = (tmp_path / "mixed" / "sweep.md").read_text()
    assert "| study | second_run | attn_length |" in md and "| L_fw | L_2nd |" in md and "backward model is worse" not in md
    for r in result["studies"]:  # every study and figure whole, though wider than 80 columns
        assert r["study"] in mixed.stdout and f"{r['loss_bw']:.4f}" in mixed.stdout and f"{100 * r['high']:+.2f}]" in mixed.stdout, mixed.stdout
    # Permuted studies only: no column for the order; the loss and δ say permuted.
    arrows("sweep", tmp_path / "perm_a", tmp_path / "perm_b", "--out", tmp_path / "perm")
    result = json.loads((tmp_path / "perm" / "sweep.json").read_text())
    assert result["varying"] == [] and result["second"] == "permuted"
    md = (tmp_path / "perm" / "sweep.md").read_text()
    assert "δ = (L_perm − L_fw) / L_fw; > 0: the permuted model is worse." in md and "| L_fw | L_perm |" in md
    # Two permutations of one window length: the order varies, numbered (sweep.json has each).
    from arrows.sweep import sweep

    result = sweep([tmp_path / "perm_a", tmp_path / "perm_c"])
    assert result["varying"] == ["study.second_run"] and [r["settings"]["study.second_run"] for r in result["studies"]] == ["permuted #1", "permuted #2"]
    assert result["studies"][1]["permutation"] == list(range(16))[::-1]


def test_a_compare_report_finds_its_runs_from_any_folder(context_sweep, tmp_path):
    """compare given its runs relatively (ctx32/fw, run in the runs' folder) recorded them so, relative
    to that folder: a sweep run from anywhere else could find them only by guessing (the same path
    under a folder above the report), and a report written elsewhere (--out in another tree) not
    at all: taken for one whose runs had moved away, its step unchecked. Runs are now recorded by
    their absolute paths and relative to the report, which also finds them when both moved."""
    from pathlib import Path

    from arrows.sweep import _locate

    tmp = context_sweep
    arrows("compare", "ctx32/fw", "ctx32/bw", "--out", tmp_path / "rel", cwd=tmp)
    pair = json.loads((tmp_path / "rel" / "report.json").read_text())["pairs"][0]
    assert pair["fw"] == str(tmp / "ctx32" / "fw") and pair["bw"] == str(tmp / "ctx32" / "bw")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = arrows("sweep", tmp / "ctx8", tmp_path / "rel", "--out", tmp_path / "s", cwd=elsewhere)
    result = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert result["varying"] == ["model_params.attn_length"] and result["axis"] == "attn_length"
    assert result["studies"][1]["parameters"] > 0 and result["studies"][1]["runs_found"] and "not found" not in proc.stdout
    # sweep names the reports it read so too, given relatively (they were recorded as given).
    arrows("sweep", "ctx8", tmp_path / "rel", "--out", tmp_path / "s2", cwd=tmp)
    result = json.loads((tmp_path / "s2" / "sweep.json").read_text())
    assert [r["report"] for r in result["studies"]] == [str(tmp / "ctx8" / "report" / "report.json"), str(tmp_path / "rel" / "report.json")]
    assert f"`{tmp / 'ctx8' / 'report' / 'report.md'}`" in (tmp_path / "s2" / "sweep.md").read_text() or not result["studies"][0]["notes"]
    # A report and its runs moved together (a project folder renamed): found beside the report.
    tree = tmp_path / "project"
    shutil.copytree(tmp / "ctx32", tree / "runs" / "ctx32")
    arrows("compare", "runs/ctx32/fw", "runs/ctx32/bw", "--out", "reports/r", cwd=tree)
    tree.rename(tmp_path / "moved")
    assert _locate(tmp_path / "moved" / "reports" / "r")[1] == [tmp_path / "moved" / "runs" / "ctx32" / d for d in ("fw", "bw")]


def test_an_older_compare_report_naming_its_runs_relatively_is_read_from_another_folder(context_sweep, tmp_path):
    """Reports written before runs were recorded absolutely name them as compare was given them
    (ctx32/fw): from another folder they are looked for under the folders above the report."""
    tmp = context_sweep
    arrows("compare", "ctx32/fw", "ctx32/bw", "--out", tmp / "reports" / "rel", cwd=tmp)
    report = json.loads((tmp / "reports" / "rel" / "report.json").read_text())
    for pair in report["pairs"]:  # as an older compare wrote it
        pair["fw"], pair["bw"] = "ctx32/fw", "ctx32/bw"
        del pair["fw_from_report"], pair["bw_from_report"]
    (tmp / "reports" / "rel" / "report.json").write_text(json.dumps(report))
    shutil.copytree(tmp / "reports" / "rel", tmp_path / "rel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = arrows("sweep", tmp / "ctx8", tmp / "reports" / "rel", "--out", tmp_path / "s", cwd=elsewhere)
    result = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert result["varying"] == ["model_params.attn_length"] and result["axis"] == "attn_length"
    assert result["studies"][1]["parameters"] > 0 and "not found" not in proc.stdout
    # Runs that are nowhere to be found: said, and only the settings the report records compared.
    report["pairs"][0]["fw"], report["pairs"][0]["bw"] = "gone/fw", "gone/bw"
    (tmp_path / "rel" / "report.json").write_text(json.dumps(report))
    proc = arrows("sweep", tmp / "ctx8", tmp_path / "rel", "--out", tmp_path / "t", cwd=elsewhere)
    result = json.loads((tmp_path / "t" / "sweep.json").read_text())
    assert result["varying"] == ["model_params.attn_length"] and result["studies"][1]["runs_found"] is False
    assert "rel: its runs were not found" in " ".join(proc.stdout.split())
    assert "rel: its runs were not found" in (tmp_path / "t" / "sweep.md").read_text()


def test_the_commands_a_refusal_gives_run_as_they_are_for_folders_with_spaces(context_sweep, tmp_path):
    """The command to update a stale report, or to finish a study without one, is copied into a
    shell: a folder with a space in its name must be quoted (it was not). A study without a report
    is pointed to `arrows study` too, which finishes its runs (compare alone compares them as they are)."""
    import shlex

    tmp = context_sweep
    study = tmp_path / "my runs" / "ctx8"
    shutil.copytree(tmp / "ctx8", study)
    report = json.loads((study / "report" / "report.json").read_text())
    report["pairs"][0]["steps_fw"] = 10
    (study / "report" / "report.json").write_text(json.dumps(report))
    stale = arrows("sweep", study, tmp / "ctx16", "--out", tmp_path / "a", check=False)
    assert stale.returncode == 1 and f"`arrows compare {shlex.quote(str(study))}`" in " ".join(stale.stderr.split()), stale.stderr
    shutil.rmtree(study / "report")
    unfinished = arrows("sweep", study, tmp / "ctx16", "--out", tmp_path / "b", check=False)
    message = " ".join(unfinished.stderr.split())
    assert f"`arrows study {tmp / 'ctx8.json'} --out {shlex.quote(str(study))}` to finish it" in message, message


def _study(name, **settings):
    return Study(name=name, report_path=None, report={}, settings={f"model_params.{k}" if k != "dataset_folder" else
                                                                   "training_params.dataset_folder": v for k, v in settings.items()})


def test_the_axis_of_a_size_sweep_is_the_parameter_count_and_a_language_sweep_has_none():
    small, large = _study("small", n_layers=2, embed_dim=64), _study("large", n_layers=4, embed_dim=128)
    small.parameters, large.parameters = 1_000, 9_000
    small.settings["training_params.batch_size"], large.settings["training_params.batch_size"] = 250, 90  # as the paper's sizes
    varying = varying_settings([small, large])
    assert varying == ["model_params.n_layers", "model_params.embed_dim", "training_params.batch_size"]
    assert sweep_axis([small, large], varying) == ("parameters", [1000.0, 9000.0])
    # A GPT beside a GRU: two architectures, not a size sweep (they were set along the parameter count).
    small.settings["model_params.model_type"], large.settings["model_params.model_type"] = "gpt", "gru"
    assert sweep_axis([small, large], varying_settings([small, large])) is None
    del small.settings["model_params.model_type"], large.settings["model_params.model_type"]
    # Sizes on other windows too: no single axis.
    small.settings["model_params.attn_length"], large.settings["model_params.attn_length"] = 64, 256
    assert sweep_axis([small, large], varying_settings([small, large])) is None
    en, fr = _study("en", dataset_folder="data/en", attn_length=256), _study("fr", dataset_folder="data/fr", attn_length=256)
    assert varying_settings([en, fr]) == ["training_params.dataset_folder"] and sweep_axis([en, fr], ["training_params.dataset_folder"]) is None
    # Two things at once (a language and a context): no single axis.
    fr64 = _study("fr64", dataset_folder="data/fr", attn_length=64)
    both = varying_settings([en, fr64])
    assert len(both) == 2 and sweep_axis([en, fr64], both) is None


def test_sweep_api_refuses_fewer_than_two(tmp_path):
    from arrows.sweep import sweep

    with pytest.raises(InputError, match="two or more"):
        sweep([tmp_path])


def test_studies_named_alike_are_told_apart_by_their_parents(tmp_path):
    """Two studies of one config for two languages (runs/en/medium, runs/fr/medium), read from
    their reports alone (the runs were moved away: what the reports record)."""
    from arrows.sweep import sweep

    summary = {"windows": 100, "seeds": 1, "loss_fw": 3.0, "loss_bw": 3.03, "delta": 0.01, "low": 0.005, "high": 0.015}
    for language in ("en", "fr"):
        study = tmp_path / language / "medium"
        (study / "report").mkdir(parents=True)
        (study / "study.json").write_text(json.dumps({"pairs": [{"fw": "fw", "bw": "bw", "seed": 0}]}))
        (study / "report" / "report.json").write_text(json.dumps({"data": f"data/{language}", "attn_length": 256, "summary": summary}))
    result = sweep([tmp_path / "fr" / "medium", tmp_path / "en" / "medium"])
    assert [r["study"] for r in result["studies"]] == ["fr/medium", "en/medium"]  # no axis: the order given
    assert result["varying"] == ["training_params.dataset_folder"] and result["axis"] is None


def test_the_figure_tells_the_kinds_of_interval_apart_and_hides_none(tmp_path, drawn_figures):
    """A study with one seed beside one with two: one legend entry named both kinds of interval
    ("evaluation noise only; training + evaluation noise") on one marker, and the legend, placed
    among the points, hid the top of the long interval."""
    from arrows import sweep as sweep_module

    drawn = drawn_figures(sweep_module)
    rows = [{"study": "s32", "x": 32.0, "delta": -0.0007, "low": -0.0011, "high": -0.0002, "interval": "evaluation noise only"},
            {"study": "st", "x": 64.0, "delta": -0.0004, "low": -0.0095, "high": 0.0088, "interval": "training + evaluation noise"}]
    sweep_module._plot({"studies": rows, "axis": "attn_length", "second": "backward"}, tmp_path / "sweep.png")
    fig, ax = drawn["sweep.png"].fig, drawn["sweep.png"].ax
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["95% interval: evaluation noise only", "95% interval: training + evaluation noise"]
    fig.canvas.draw()
    box = legend.get_window_extent()
    for r in rows:  # no interval's arm passes under the legend
        (x, low), (_, high) = ax.transData.transform([(r["x"], 100 * r["low"]), (r["x"], 100 * r["high"])])
        assert not (box.x0 <= x <= box.x1 and max(low, box.y0) <= min(high, box.y1)), (r["study"], box, low, high)


def test_slanted_study_names_end_at_their_own_point(tmp_path, drawn_figures):
    """Five or more studies along no axis get slanted names; centred on the tick, each name's end
    stood under the next study's point."""
    from arrows import sweep as sweep_module

    drawn = drawn_figures(sweep_module)
    rows = [{"study": f"corpus_{i}/medium", "x": None, "delta": 0.01 * i, "low": 0.0, "high": 0.02 * i + 0.01, "interval": "evaluation noise only"}
            for i in range(5)]
    sweep_module._plot({"studies": rows, "axis": None, "second": "backward"}, tmp_path / "sweep.png")
    fig, ax = drawn["sweep.png"].fig, drawn["sweep.png"].ax
    fig.canvas.draw()
    for i, label in enumerate(ax.get_xticklabels()):
        box, tick_x = label.get_window_extent(), ax.transData.transform((i, 0))[0]
        assert abs(box.x1 - tick_x) < 0.2 * box.width, (label.get_text(), box, tick_x)


def test_the_command_to_redo_a_study_named_like_an_option_can_be_pasted(tmp_path, monkeypatch):
    # `arrows compare -s`, as the hint said for a study folder named -s, is an unknown option.
    from pathlib import Path

    from arrows.sweep import _locate

    monkeypatch.chdir(tmp_path)
    study = tmp_path / "-s"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"config": "c.json", "seeds": 1, "pairs": [{"fw": "fw", "bw": "bw", "seed": 0}]}))
    assert _locate(Path("-s"))[2] == "arrows compare ./-s"
    shutil.copytree(study, tmp_path / "my study")
    assert _locate(Path("my study"))[2] == "arrows compare 'my study'"
