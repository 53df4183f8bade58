"""`arrows study`, `arrows compare` and their report, on languages the tests generate."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from arrows.compare import compare_runs, field_of_positions, paired_bootstrap
from arrows.errors import InputError
from arrows.report import _plot_delta

from conftest import arrows


# ---- the statistics, on constructed losses with a known answer ----------------------------------
def test_bootstrap_constant_ratio_is_exact():
    fw = np.linspace(1.0, 3.0, 200)
    r = paired_bootstrap(fw, fw * 1.05, resamples=500)
    assert r["delta"] == pytest.approx(0.05)
    assert r["low"] == pytest.approx(0.05) and r["high"] == pytest.approx(0.05)


def test_bootstrap_interval_matches_the_delta_method():
    rng = np.random.default_rng(0)
    n = 4000
    fw = rng.gamma(20.0, 0.1, n)  # mean 2
    bw = fw + rng.normal(0.04, 0.3, n)  # δ ≈ 2%
    r = paired_bootstrap(fw, bw, resamples=4000, seed=1)
    # δ = mean(d)/mean(fw) with d = bw − fw; its standard error by the delta method.
    d = bw - fw
    ratio = d.mean() / fw.mean()
    se = np.sqrt(np.var(d - ratio * fw, ddof=1) / n) / fw.mean()
    assert r["delta"] == pytest.approx(ratio)
    assert r["low"] == pytest.approx(ratio - 1.96 * se, abs=0.15 * 1.96 * se)
    assert r["high"] == pytest.approx(ratio + 1.96 * se, abs=0.15 * 1.96 * se)
    # Paired: the interval is far narrower than if the pairing were ignored.
    unpaired_se = np.sqrt(np.var(fw) / n + np.var(bw) / n) / fw.mean()
    assert (r["high"] - r["low"]) < 0.5 * 2 * 1.96 * unpaired_se


def test_bootstrap_coverage():
    """Over many constructed samples with true δ = 0, the 95% interval holds 0 about 95% of times."""
    rng = np.random.default_rng(5)
    hits = 0
    trials = 200
    for t in range(trials):
        base = rng.gamma(10.0, 0.2, 300)
        fw, bw = base + rng.normal(0, 0.2, 300), base + rng.normal(0, 0.2, 300)
        r = paired_bootstrap(fw, bw, resamples=400, seed=t)
        hits += r["low"] <= 0 <= r["high"]
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_and_compare_refuse_bad_counts():
    """The Python API says what is wrong before any run is read (no IndexError, no reshape error)."""
    fw = np.linspace(1.0, 3.0, 20)
    for bad in (0, 1, -5):
        with pytest.raises(InputError, match="resamples must be an integer of at least 2"):
            paired_bootstrap(fw, fw, resamples=bad)
        with pytest.raises(InputError, match="resamples must be an integer of at least 2"):
            compare_runs([("fw", "bw")], resamples=bad)
    for bad in (0, 1, -1, 2.5):
        with pytest.raises(InputError, match="max_windows must be an integer of at least 2"):
            compare_runs([("fw", "bw")], max_windows=bad)


def test_delta_figure_with_the_estimate_outside_its_interval(tmp_path):
    """With few windows or resamples, the percentile interval can miss δ itself; the figure is still drawn."""
    _plot_delta({"pairs": [{"seed": 0, "delta": 0.05, "low": 0.06, "high": 0.07}]}, tmp_path / "delta.png")
    assert (tmp_path / "delta.png").read_bytes()[:4] == b"\x89PNG"


def _report(seeds=(0,), deltas=None, steps=(100, 100)) -> dict:
    """A compare report as compare_runs makes it, from constructed per-window losses (no runs)."""
    from arrows.compare import seed_interval

    rng = np.random.default_rng(0)
    deltas = deltas or [0.02] * len(seeds)
    pairs, windows = [], []
    for seed, d in zip(seeds, deltas):
        fw = rng.gamma(20.0, 0.1, 50)
        bw = fw * (1 + d) + rng.normal(0, 0.01, 50)
        windows.append((fw, bw))
        curve = {"train": [(10, 3.0), (steps[0], 2.0)], "valid": [(steps[0], 2.1)]}
        pairs.append({"fw": f"s{seed}/fw", "bw": f"s{seed}/bw", "seed": seed, "steps_fw": steps[0], "steps_bw": steps[1],
                      "loss_fw": fw.mean(), "loss_bw": bw.mean(), **paired_bootstrap(fw, bw, resamples=200), "tokens": 50 * 8,
                      "position_loss_fw": [2.5, 2.0, 1.8, 1.7, 1.6, 1.6, 1.5, 1.5], "position_loss_bw": [2.6, 2.1, 1.9, 1.8, 1.7, 1.6, 1.6, 1.5],
                      "curves": {"forward": curve, "backward": curve}})
    mean_fw, mean_bw = (np.mean([w[i] for w in windows], axis=0) for i in (0, 1))
    summary = {"loss_fw": mean_fw.mean(), "loss_bw": mean_bw.mean(), "windows": 50, "tokens": 400,
               "delta_seed_mean": float(np.mean([p["delta"] for p in pairs])),
               "delta_seed_std": float(np.std([p["delta"] for p in pairs], ddof=1)) if len(pairs) > 1 else None, "unigram_entropy": 5.0,
               **{k: v for k, v in paired_bootstrap(mean_fw, mean_bw, resamples=200).items() if k != "windows"}, "seeds": len(pairs)}
    summary["seed_low"], summary["seed_high"] = (seed_interval(np.array([p["delta"] for p in pairs]), summary["delta"], summary["se"])
                                                 if len(pairs) > 1 else (None, None))
    return {"data": "tokens", "attn_length": 8, "summary": summary, "pairs": pairs, "notes": []}


def test_loss_by_position_ticks_are_whole_positions(tmp_path, drawn_figures):
    """A short window's figure had ticks at 0.5, 1.5, 2.5: positions that do not exist."""
    import arrows.report as report_module

    drawn = drawn_figures(report_module)
    report = {"pairs": [{"position_loss_fw": [2.0, 1.5, 1.2, 1.1, 1.0], "position_loss_bw": [2.0, 1.6, 1.3, 1.2, 1.1]}]}
    report_module._plot_positions(report, tmp_path / "p.png")
    ticks = list(drawn["p.png"].ax.get_xticks())
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_report_refuses_a_file_as_its_folder(tmp_path):
    from arrows.report import write_report

    (tmp_path / "report.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not a folder; --out names the folder"):
        write_report(_report(), tmp_path / "report.txt")
    assert (tmp_path / "report.txt").read_text() == "mine"


def test_report_interrupted_while_drawing_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """A compare run again over an earlier report, interrupted while drawing its last figure: the
    folder still holds the earlier report, all of it, not new figures beside an old report.md."""
    from arrows import report as report_module

    out = tmp_path / "report"
    report_module.write_report(_report(deltas=[0.02]), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "_plot_delta", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report_module.write_report(_report(deltas=[-0.05], steps=(300, 300)), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new, nothing left over


def test_field_of_positions():
    text = "01|10\n11|00\n"
    ids = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) + 1
    assert field_of_positions(ids, "|", line_start=True).tolist() == [0, 0, -1, 1, 1, -1, 0, 0, -1, 1, 1, -1]
    # A range that may start mid-line: the tokens before its first newline are marked unknown.
    assert field_of_positions(ids[4:], "|").tolist() == [-2, -1, 0, 0, -1, 1, 1, -1]
    assert field_of_positions(ids, "|").tolist()[:6] == [-2, -2, -2, -2, -2, -1]


# ---- runs ---------------------------------------------------------------------------------------
def _config(store, runs, line, steps, **training):
    return {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": 2 * line, "dropout": 0.0},
        "training_params": {"dataset_folder": str(store), "batch_size": 32, "steps_to_train": steps, "stride": line,
                            "valid_fraction": 0.1, "valid_every": steps, "step_log": 10, "save_every": steps, "cooldown_finish": 0.3,
                            "sample_every": 0, "save_loc": str(runs), "threads": 1, **training},
        "optim_params": {"lr": 3e-3, "warmup_steps": min(20, steps // 5), "weight_decay": 0.0},
    }


@pytest.fixture(scope="module")
def reversible_study(tmp_path_factory):
    """A reversible language, trained forward and backward to convergence of its bigrams."""
    tmp = tmp_path_factory.mktemp("reversible")
    arrows("synth", "reversible", "--out", tmp / "walks.txt", "--lines", "20000", "--nodes", "6", "--walk-length", "11")
    arrows("tokenize", tmp / "walks.txt", "--tokenizer", "bytes", "--out", tmp / "tokens")
    (tmp / "cfg.json").write_text(json.dumps(_config(tmp / "tokens", tmp / "runs", 12, 300)))
    out = arrows("study", tmp / "cfg.json", "--out", tmp / "study").stdout
    return tmp, out


def test_reversible_language_shows_no_arrow(reversible_study):
    tmp, out = reversible_study
    report = json.loads((tmp / "study" / "report" / "report.json").read_text())
    s = report["summary"]
    assert abs(s["delta"]) < 0.01, s
    # Both learned the walk (well below the letters' frequencies).
    assert s["loss_fw"] < 0.9 * s["unigram_entropy"] and s["loss_bw"] < 0.9 * s["unigram_entropy"]
    assert "within ±1%" in report["synthetic"]["verdict"]
    assert "δ = (L_bw − L_fw) / L_fw" in out and "validation loss" in out and "report.md" in out


def test_directions_are_scored_on_identical_spans(reversible_study):
    tmp, _ = reversible_study
    report = json.loads((tmp / "study" / "report" / "report.json").read_text())
    pair = report["pairs"][0]
    # The validation split is 10% of 20000 lines of 12 tokens; windows are 24 tokens, disjoint.
    assert pair["windows"] == 24000 // 24 and pair["tokens"] == pair["windows"] * 24
    assert len(pair["position_loss_fw"]) == len(pair["position_loss_bw"]) == 24
    # The mean over positions is the mean over tokens: both directions scored the same tokens.
    assert np.mean(pair["position_loss_fw"]) == pytest.approx(pair["loss_fw"])
    assert np.mean(pair["position_loss_bw"]) == pytest.approx(pair["loss_bw"])
    assert set(pair["fields"]["forward"]) == {"walk", "separators"}


def test_report_files_and_figures(reversible_study):
    tmp, _ = reversible_study
    folder = tmp / "study" / "report"
    md = (folder / "report.md").read_text()
    assert "| validation loss (nats/token) |" in md and "![loss by position" in md
    for name in ("curves.png", "loss_by_position.png", "delta.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    # compare on its own, from the study folder, gives the same numbers.
    arrows("compare", tmp / "study", "--out", tmp / "again")
    a = json.loads((folder / "report.json").read_text())["summary"]
    b = json.loads((tmp / "again" / "report.json").read_text())["summary"]
    assert a == b


def test_compare_refuses_mismatched_runs(reversible_study, tmp_path):
    tmp, _ = reversible_study
    fw, bw = tmp / "study" / "fw", tmp / "study" / "bw"
    proc = arrows("compare", fw, fw, check=False)
    assert proc.returncode == 1 and "must be backward" in proc.stderr and "Traceback" not in proc.stderr
    proc = arrows("compare", bw, fw, check=False)
    assert "must be forward" in proc.stderr
    # A run with another window length.
    other = tmp_path / "other_bw"
    shutil.copytree(bw, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_params"]["attn_length"] = 36
    (other / "config.json").write_text(json.dumps(cfg))
    proc = arrows("compare", fw, other, check=False)
    assert proc.returncode == 1 and "attn_length: 24" in proc.stderr and "36" in proc.stderr
    # A run on other data.
    cfg["model_params"]["attn_length"] = 24
    cfg["training_params"]["dataset_folder"] = str(tmp_path / "elsewhere")
    shutil.copytree(tmp / "tokens", tmp_path / "elsewhere")
    manifest = json.loads((tmp_path / "elsewhere" / "manifest.json").read_text())
    manifest["inputs"][0]["fingerprint"] = "xxh3:0000000000000000"
    (tmp_path / "elsewhere" / "manifest.json").write_text(json.dumps(manifest))
    (other / "config.json").write_text(json.dumps(cfg))
    proc = arrows("compare", fw, other, check=False)
    assert proc.returncode == 1 and "data:" in proc.stderr
    # Said for people: what differs, and each side's figures (no Python dicts).
    tokens = manifest["tokens"]
    assert "data: the input files differ:" in proc.stderr and f"({tokens:,} tokens, tokenizer " in proc.stderr, proc.stderr
    assert "{'" not in proc.stderr and "xxh3:00000000…" in proc.stderr
    proc = arrows("compare", fw, check=False)
    assert proc.returncode == 1 and "not a study folder" in proc.stderr


def test_compare_refuses_one_seed_counted_twice(reversible_study, tmp_path):
    """The same pair given twice, or a pair and its copy (one seed), made a "mean of 2 seeds" with a
    spread of 0 taken for training noise, and an interval "with training noise" narrower than the
    evaluation noise alone."""
    tmp, _ = reversible_study
    fw, bw = tmp / "study" / "fw", tmp / "study" / "bw"
    proc = arrows("compare", fw, bw, fw, bw, "--out", tmp_path / "twice", check=False)
    assert proc.returncode == 1 and "is given twice" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    shutil.copytree(tmp / "study", tmp_path / "copy", ignore=shutil.ignore_patterns("report"))
    proc = arrows("compare", fw, bw, tmp_path / "copy" / "fw", tmp_path / "copy" / "bw", "--out", tmp_path / "copied", check=False)
    assert proc.returncode == 1 and "both trained with seed 0" in proc.stderr and "one pair per seed" in proc.stderr, proc.stderr
    assert not (tmp_path / "twice").exists() and not (tmp_path / "copied").exists()


def test_compare_says_when_the_runs_were_not_trained_alike(reversible_study, tmp_path):
    """Runs that can be compared (same data, windows, split) but were trained differently: the report
    gives each checkpoint's own step, and a note says what differs, since δ measures it too."""
    from arrows import checkpoint

    tmp, _ = reversible_study
    fw, bw = tmp_path / "fw", tmp_path / "bw"
    shutil.copytree(tmp / "study" / "fw", fw)
    shutil.copytree(tmp / "study" / "bw", bw)
    # The backward run as if stopped at step 150, and its metrics logged beyond its checkpoint (a
    # run killed between two saves, or still training): the checkpoint's step is the one reported.
    payload = checkpoint.load(bw / "checkpoints" / "latest.pt")
    payload["step"] = 150
    checkpoint.save(bw / "checkpoints" / "latest.pt", payload)
    with open(fw / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 310, "loss": 1.0}) + "\n")
    cfg = json.loads((bw / "config.json").read_text())
    cfg["optim_params"]["lr"] = 1e-3
    cfg["model_params"]["attention"] = "sdpa"  # a kernel: the same function, not a difference
    (bw / "config.json").write_text(json.dumps(cfg))
    arrows("compare", fw, bw, "--out", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    pair = report["pairs"][0]
    assert (pair["steps_fw"], pair["steps_bw"]) == (300, 150)
    note = next(n for n in report["notes"] if "differ:" in n)
    assert "trained 300 steps forward and 150 backward" in note and "optim_params.lr 0.003 forward, 0.001 backward" in note
    assert "attention" not in note and "--more" in note
    # Runs trained alike: no such note.
    plain = json.loads((tmp / "study" / "report" / "report.json").read_text())
    assert not any("differ:" in n for n in plain["notes"])


def _permuted_run(tmp, out, permutation, name):
    """The study's backward run trained again, in the window order `permutation` instead."""
    cfg = json.loads((tmp / "study" / "bw" / "config.json").read_text())
    cfg["training_params"].update(backwards=False, permutation=permutation, run_name=name, save_loc=str(out))
    (out / f"{name}.json").write_text(json.dumps(cfg))
    arrows("train", out / f"{name}.json")
    return out / name


def test_compare_a_forward_run_with_a_permuted_one(reversible_study, tmp_path):
    """The reference's later experiment: a fixed permutation of the window's positions instead of
    backward. The permutation that reverses the window is the backward run exactly (same examples,
    same training), so comparing it gives the study's own figures; any other is reported as
    permuted, its fields of the line scored at their own positions, without an arrow to expect."""
    tmp, _ = reversible_study
    fw = tmp / "study" / "fw"
    L = 24
    reversed_run = _permuted_run(tmp, tmp_path, list(range(L))[::-1], "reversed")
    arrows("compare", fw, reversed_run, "--out", tmp_path / "reversed_report")
    report = json.loads((tmp_path / "reversed_report" / "report.json").read_text())
    study = json.loads((tmp / "study" / "report" / "report.json").read_text())
    assert report["second"] == {"direction": "permutation", "label": "permuted", "symbol": "perm", "permutation": list(range(L))[::-1]}
    for key in ("loss_fw", "loss_bw", "delta", "low", "high"):
        assert report["summary"][key] == pytest.approx(study["summary"][key], rel=1e-9, abs=1e-12), key
    assert report["pairs"][0]["position_loss_bw"] == pytest.approx(study["pairs"][0]["position_loss_bw"], rel=1e-9)
    assert report["pairs"][0]["fields"]["permuted"] == pytest.approx(study["pairs"][0]["fields"]["backward"], rel=1e-9)

    shuffled = [int(i) for i in np.random.default_rng(0).permutation(L)]
    shuffled_run = _permuted_run(tmp, tmp_path, shuffled, "shuffled")
    proc = arrows("compare", fw, shuffled_run, "--out", tmp_path / "shuffled_report")
    report = json.loads((tmp_path / "shuffled_report" / "report.json").read_text())
    assert report["second"]["permutation"] == shuffled and report["pairs"][0]["tokens"] == study["pairs"][0]["tokens"]
    assert set(report["pairs"][0]["fields"]) == {"forward", "permuted"}
    assert report["synthetic"]["expected_arrow"] is None and "No expected arrow" in report["synthetic"]["verdict"]
    md = (tmp_path / "shuffled_report" / "report.md").read_text()
    assert "# Arrow of time: forward vs permuted" in md and "| | forward | permuted | δ = (L_perm − L_fw) / L_fw" in md
    assert f"{shuffled}" in md and "permuted" in proc.stdout
    # Seeds of one comparison share the second run's order.
    proc = arrows("compare", fw, reversed_run, fw, shuffled_run, "--out", tmp_path / "mixed", check=False)
    assert proc.returncode == 1 and "read their windows in different orders (two different permutations)" in " ".join(proc.stderr.split())


def test_compare_and_study_check_their_options_up_front(reversible_study, tmp_path):
    tmp, _ = reversible_study
    study = tmp / "study"
    for option, value in (("--max-windows", 1), ("--max-windows", -1), ("--resamples", 0), ("--resamples", -5), ("--resamples", 1)):
        proc = arrows("compare", study, option, value, "--out", tmp_path / "report", check=False)
        assert proc.returncode == 2 and f"Invalid value for '{option}'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    # study checks them before it trains anything.
    for option, value in (("--max-windows", 0), ("--seeds", 0), ("--steps", 0)):
        proc = arrows("study", tmp / "cfg.json", option, value, "--out", tmp_path / "study", check=False)
        assert proc.returncode == 2 and f"Invalid value for '{option}'" in proc.stderr, proc.stderr
        assert not (tmp_path / "study").exists()
    assert not (tmp_path / "report").exists()
    # The ranges are in the help.
    helps = {command: arrows(command, "--help", env={"COLUMNS": "250"}).stdout for command in ("compare", "study")}
    assert helps["compare"].count("[x>=2]") == 2  # --max-windows, --resamples
    assert helps["study"].count("[x>=1]") == 2 and helps["study"].count("[x>=2]") == 1  # --seeds, --steps; --max-windows
    # --device is checked as train and study check it.
    proc = arrows("compare", study, "--device", "bogus", check=False)
    assert proc.returncode == 2 and "'bogus': choose auto, cpu or cuda" in proc.stderr and "Traceback" not in proc.stderr
    proc = arrows("compare", study, "--device", "cuda", "--out", tmp_path / "report", env={"CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert proc.returncode == 1 and "--device cuda: no CUDA device is visible" in proc.stderr and "Traceback" not in proc.stderr
    # The smallest values work (one window would give no interval: refused).
    arrows("compare", study, "--max-windows", 2, "--resamples", 2, "--out", tmp_path / "two")
    md = (tmp_path / "two" / "report.md").read_text()
    assert "the same 2 validation windows (48 tokens) per pair" in md
    assert "only 2 windows: below about 20 the bootstrap interval is too narrow" in md
    proc = arrows("compare", study, "--max-windows", 1, "--out", tmp_path / "one", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_study_with_seeds_side_by_side(tmp_path):
    arrows("synth", "sparse-linear", "--out", tmp_path / "s.txt", "--lines", "3000", "--bits", "6")
    arrows("tokenize", tmp_path / "s.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    (tmp_path / "cfg.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 14, 20, seed=4)))
    arrows("study", tmp_path / "cfg.json", "--seeds", "2", "--parallel", "--out", tmp_path / "study")
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert [p["seed"] for p in study["pairs"]] == [4, 5]
    report = json.loads((tmp_path / "study" / "report" / "report.json").read_text())
    assert [p["seed"] for p in report["pairs"]] == [4, 5]
    assert report["summary"]["delta_seed_std"] is not None
    # With seeds, an interval that includes training noise too, at least as wide as the windows' one.
    s = report["summary"]
    assert s["seeds"] == 2 and s["seed_low"] <= s["low"] <= s["high"] <= s["seed_high"]
    # Same seed, same initial weights: the two directions start from one model.
    fw_cfg = json.loads((tmp_path / "study" / "seed5" / "fw" / "config.json").read_text())
    bw_cfg = json.loads((tmp_path / "study" / "seed5" / "bw" / "config.json").read_text())
    assert fw_cfg["training_params"]["seed"] == bw_cfg["training_params"]["seed"] == 5
    assert bw_cfg["training_params"]["backwards"] and not fw_cfg["training_params"]["backwards"]
    assert {k: v for k, v in fw_cfg["training_params"].items() if k not in ("backwards", "run_name")} == {
        k: v for k, v in bw_cfg["training_params"].items() if k not in ("backwards", "run_name")
    }
    md = (tmp_path / "study" / "report" / "report.md").read_text()
    assert "Over 2 seeds" in md and "sparse-linear" in md and "95% interval with training and evaluation noise" in md
    # Running the study again resumes: nothing left to train, same report; each run's log keeps
    # the first attempt's lines after the second's are added.
    first_log = (tmp_path / "study" / "seed4_bw.log").read_text()
    arrows("study", tmp_path / "cfg.json", "--seeds", "2", "--parallel", "--out", tmp_path / "study")
    log = (tmp_path / "study" / "seed4_bw.log").read_text()
    assert log.startswith(first_log) and log.count("── ") == first_log.count("── ") + 1 and len(log) > len(first_log), log
    again = json.loads((tmp_path / "study" / "report" / "report.json").read_text())
    assert again["summary"]["delta"] == report["summary"]["delta"]
    # Without --seeds, the folder's own count: the same two pairs resumed, no new run beside them.
    arrows("study", tmp_path / "cfg.json", "--out", tmp_path / "study")
    assert json.loads((tmp_path / "study" / "study.json").read_text()) == study
    assert not (tmp_path / "study" / "fw").exists() and not (tmp_path / "study" / "bw").exists()
    again = json.loads((tmp_path / "study" / "report" / "report.json").read_text())
    assert [p["seed"] for p in again["pairs"]] == [4, 5] and again["summary"]["delta"] == report["summary"]["delta"]
    # Another count is refused, saying where, both counts and what to do.
    proc = arrows("study", tmp_path / "cfg.json", "--seeds", "1", "--out", tmp_path / "study", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())  # as one line, whatever the terminal's width
    assert str(tmp_path / "study") in message and "has 2 seed(s)" in message and "not the 1 asked for" in message, message
    assert "another --out" in message
    assert json.loads((tmp_path / "study" / "study.json").read_text()) == study and not (tmp_path / "study" / "fw").exists()


def test_study_refuses_gpus_without_cuda_before_it_writes_anything(tmp_path):
    arrows("synth", "primes", "--out", tmp_path / "p.txt", "--lines", "500")
    arrows("tokenize", tmp_path / "p.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    (tmp_path / "cfg.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 12, 5)))
    for options in (["--gpus", "0,1", "--seeds", "3"], ["--gpus", "0"], ["--device", "cuda"]):
        proc = arrows("study", tmp_path / "cfg.json", *options, "--out", tmp_path / "study", env={"CUDA_VISIBLE_DEVICES": ""}, check=False)
        assert proc.returncode == 1 and "no CUDA device is visible" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "study").exists()  # no study.json: another --seeds is still free


def test_study_refuses_a_study_record_it_cannot_read_before_it_trains(tmp_path):
    """study.json is read once, checked whole: a record whose pairs name no second run (edited by
    hand, or cut) passed the seed count's check and then ended in a KeyError traceback."""
    arrows("synth", "primes", "--out", tmp_path / "p.txt", "--lines", "500")
    arrows("tokenize", tmp_path / "p.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    (tmp_path / "cfg.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 12, 5)))
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps({"seeds": 1, "pairs": [{"fw": "fw", "seed": 0}]}))
    proc = arrows("study", tmp_path / "cfg.json", "--out", tmp_path / "study", check=False)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tmp_path / 'study' / 'study.json'}: not a study record arrows can read" in message, message
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["study.json"]  # nothing trained
    # compare and sweep read it the same way (a cut file ended in a JSONDecodeError traceback).
    (tmp_path / "study" / "study.json").write_text("{")
    for command in (["compare", tmp_path / "study"], ["sweep", tmp_path / "study", tmp_path / "study", "--out", tmp_path / "sweep"]):
        proc = arrows(*command, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and "not a study record arrows can read" in proc.stderr, proc.stderr


def test_study_refuses_a_folder_that_holds_something_else(tmp_path):
    """A non-empty --out without study.json (a folder of runs, a token store) was written into,
    and a run already there named fw/ would have been resumed as the study's forward run."""
    arrows("synth", "primes", "--out", tmp_path / "p.txt", "--lines", "500")
    arrows("tokenize", tmp_path / "p.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    (tmp_path / "cfg.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 12, 5)))
    (tmp_path / "runs" / "fw").mkdir(parents=True)
    (tmp_path / "runs" / "fw" / "config.json").write_text("{}")
    for folder in (tmp_path / "runs", tmp_path / "tokens"):
        before = sorted(p.name for p in folder.iterdir())
        proc = arrows("study", tmp_path / "cfg.json", "--out", folder, check=False)
        message = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{folder}: not a study folder (no study.json) and not empty (it holds {', '.join(before[:5])})" in message, message
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    # compare of a folder that is not there says so, not "not a run folder".
    proc = arrows("compare", tmp_path / "gone_fw", tmp_path / "runs" / "fw", check=False)
    assert proc.returncode == 1 and f"{tmp_path / 'gone_fw'}: no such folder" in " ".join(proc.stderr.split()), proc.stderr


def test_compare_of_an_unfinished_study_says_how_to_finish_it(tmp_path):
    """A study stopped before a run's first checkpoint: compare named that run "not a run folder
    ... give folders written by arrows train or arrows study" (it is one), or said "train it first"."""
    study = tmp_path / "my study"
    (study / "fw" / "checkpoints").mkdir(parents=True)
    (study / "fw" / "checkpoints" / "latest.pt").write_bytes(b"")
    (study / "study.json").write_text(json.dumps({"config": str(tmp_path / "cfg.json"), "seeds": 1, "pairs": [{"fw": "fw", "bw": "bw", "seed": 0}]}))
    proc = arrows("compare", study, check=False)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the study is unfinished: {study / 'bw'} has no checkpoint yet" in message, message
    assert f"finish it with `arrows study {tmp_path / 'cfg.json'} --out '{study}'`" in message, message


def test_the_study_run_configs_name_their_folders_from_anywhere(tmp_path, monkeypatch):
    """A study given --out relatively wrote save_loc relative to the folder it ran in into its run
    configs: `arrows train STUDY/configs/bw.json --more N` from anywhere else started a new run
    there instead of continuing the study's."""
    from arrows.config import config_from_dict
    from arrows.study import plan_study

    arrows("synth", "primes", "--out", tmp_path / "p.txt", "--lines", "500")
    arrows("tokenize", tmp_path / "p.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    config = config_from_dict(_config(tmp_path / "tokens", tmp_path / "runs", 12, 5), source_path=tmp_path / "cfg.json")
    monkeypatch.chdir(tmp_path)
    runs = plan_study(config, Path("my/study"), 2)
    assert [(r.name, r.config.training.save_loc) for r in runs] == [
        (f"seed{s}/{d}", str(tmp_path / "my" / "study" / f"seed{s}")) for s in (0, 1) for d in ("fw", "bw")]


def test_study_refuses_a_directed_config(tmp_path):
    arrows("synth", "primes", "--out", tmp_path / "p.txt", "--lines", "500")
    arrows("tokenize", tmp_path / "p.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    (tmp_path / "cfg.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 12, 5, backwards=True)))
    proc = arrows("study", tmp_path / "cfg.json", check=False)
    assert proc.returncode == 1 and "trains both directions itself" in proc.stderr


def test_study_with_a_permutation_trains_forward_and_permuted(tmp_path):
    arrows("synth", "primes", "--out", tmp_path / "p.txt", "--lines", "500")
    arrows("tokenize", tmp_path / "p.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    permutation = [int(i) for i in np.random.default_rng(1).permutation(24)]
    config = _config(tmp_path / "tokens", tmp_path / "runs", 12, 5, permutation=permutation)
    config["training_params"]["run_name"] = "mine"  # a study names its runs itself, and says so
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    proc = arrows("study", tmp_path / "cfg.json", "--out", tmp_path / "study")
    assert "perm: training in the permuted order" in proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"note: training_params.run_name ('mine') is not used by a study: its runs are fw/ and perm/ in the study folder {tmp_path / 'study'}" in message, message
    assert not (tmp_path / "runs").exists()
    assert json.loads((tmp_path / "study" / "study.json").read_text())["pairs"] == [{"fw": "fw", "bw": "perm", "seed": 0}]
    fw = json.loads((tmp_path / "study" / "fw" / "config.json").read_text())["training_params"]
    perm = json.loads((tmp_path / "study" / "perm" / "config.json").read_text())["training_params"]
    assert fw["permutation"] is None and perm["permutation"] == permutation and not fw["backwards"] and not perm["backwards"]
    report = json.loads((tmp_path / "study" / "report" / "report.json").read_text())
    assert report["second"]["permutation"] == permutation and "permuted" in proc.stdout
    # The study keeps its second runs' order: a config without the permutation given for it (or
    # one with a permutation for a backward study) trained new runs beside the old ones and
    # replaced its report; it is refused before anything trains.
    (tmp_path / "plain.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 12, 5)))
    refused = arrows("study", tmp_path / "plain.json", "--out", tmp_path / "study", check=False)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "second runs read in a permuted order (perm/)" in message and "give another --out" in message, message
    assert "run_name" not in message  # a config without one is not told about it
    assert not (tmp_path / "study" / "bw").exists()
    assert json.loads((tmp_path / "study" / "study.json").read_text())["pairs"] == [{"fw": "fw", "bw": "perm", "seed": 0}]


def test_demo_runs_end_to_end(tmp_path):
    out = arrows("demo", "--out", tmp_path / "demo", "--steps", "20", env={"ARROWS_PROGRESS_SECONDS": "60"}).stdout
    for kind in ("sparse-linear", "sparse-linear-reversed", "reversible"):
        assert (tmp_path / "demo" / kind / "study" / "report" / "report.md").is_file()
        assert kind in out
    assert "summary" in out


def test_study_on_a_reference_h5_file(tmp_path):
    # dataset_folder may be a reference .h5 instead of a token store: the study trains on it and
    # compares, and scores the same windows as on the store it was written from.
    arrows("synth", "reversible", "--out", tmp_path / "w.txt", "--lines", "3000", "--nodes", "5", "--walk-length", "11")
    arrows("tokenize", tmp_path / "w.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens", "--h5")
    for name, data in (("h5", tmp_path / "tokens" / "tokens.h5"), ("store", tmp_path / "tokens")):
        (tmp_path / f"{name}.json").write_text(json.dumps(_config(data, tmp_path / "runs", 12, 10)))
        arrows("study", tmp_path / f"{name}.json", "--device", "cpu", "--out", tmp_path / name)
    h5, store = (json.loads((tmp_path / name / "report" / "report.json").read_text()) for name in ("h5", "store"))
    assert h5["summary"]["windows"] == store["summary"]["windows"] > 0
    assert h5["summary"]["delta"] == pytest.approx(store["summary"]["delta"], abs=1e-6)


def test_curves_tell_the_seeds_apart(tmp_path, drawn_figures):
    from arrows import report as report_module

    drawn = drawn_figures(report_module)
    curve = {"train": [(1, 3.0), (2, 2.5)], "valid": [(2, 2.6)]}
    pairs = [{"seed": s, "curves": {"forward": curve, "backward": curve}} for s in (4, 5)]
    report_module._plot_curves({"pairs": pairs}, tmp_path / "two.png")
    report_module._plot_curves({"pairs": pairs[:1]}, tmp_path / "one.png")
    labels = {name: figure.ax.get_legend_handles_labels()[1] for name, figure in drawn.items()}
    assert "forward, seed 5 (validation)" in labels["two.png"] and "backward, seed 4 (training)" in labels["two.png"]
    assert labels["one.png"] == ["forward (training)", "forward (validation)", "backward (training)", "backward (validation)"]
    assert (tmp_path / "two.png").stat().st_size > 0


def test_curves_legend_of_several_seeds_stays_whole_and_off_the_curves(tmp_path, drawn_figures):
    """An entry per curve (4 per seed) covered the curves, and from 4 seeds on ran off the figure's
    bottom (seed 4's entries were cut off): the legend names directions, kinds and seeds once each,
    beside the axes."""
    from arrows import report as report_module

    drawn = drawn_figures(report_module)
    curve = {"train": [(1, 3.0), (2, 2.5)], "valid": [(2, 2.6)]}
    pairs = [{"seed": s, "curves": {"forward": curve, "backward": curve}} for s in range(5)]
    report_module._plot_curves({"pairs": pairs}, tmp_path / "five.png")
    fig, ax = drawn["five.png"].fig, drawn["five.png"].ax
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["forward", "backward", "training", "validation", *(f"seed {s}" for s in range(5))]
    fig.canvas.draw()
    box, axes, whole = legend.get_window_extent(), ax.get_window_extent(), fig.bbox
    assert box.x0 >= axes.x1 and whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1


# ---- a study that trains its runs side by side, stopped from outside ---------------------------
def _locked(run_dir) -> bool:
    """Whether a process holds the run folder's lock (an `arrows train` still in it)."""
    import fcntl

    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _start_long_parallel_study(tmp_path, parallel=True):
    """`arrows study --parallel` on runs long enough to train for minutes, once both are training
    (or the study without --parallel, once its first run is training)."""
    import os
    import subprocess
    import time

    from conftest import ARROWS

    arrows("synth", "sparse-linear", "--out", tmp_path / "s.txt", "--lines", "3000", "--bits", "6")
    arrows("tokenize", tmp_path / "s.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    (tmp_path / "cfg.json").write_text(json.dumps(_config(tmp_path / "tokens", tmp_path / "runs", 14, 100_000, save_every=10)))
    proc = subprocess.Popen([str(ARROWS), "study", str(tmp_path / "cfg.json"), *(["--parallel"] if parallel else []), "--out", str(tmp_path / "study")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if parallel:
        training = [tmp_path / "study" / f"{name}.log" for name in ("fw", "bw")]
    else:
        training = [tmp_path / "study" / "fw" / "metrics.jsonl"]
    deadline = time.monotonic() + 300
    while not all(f.is_file() and '"step": 10' in f.read_text().replace("step 10/", '"step": 10') for f in training):  # they hold their folders
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no step 10"
        time.sleep(0.2)
    return proc


def _end_stray_runs(tmp_path):
    """Kill any `arrows train` still running on this test's configs (what the fix prevents)."""
    import os
    import signal

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path / "study" / "configs") in cmdline:
            os.kill(int(pid), signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the runs end with the study through Linux's PR_SET_PDEATHSIG")
def test_parallel_study_killed_takes_its_runs_with_it(tmp_path):
    """kill -9 of a study: its two runs, each in a process of its own, end too, instead of training
    on unseen and holding their folders (the study run again was refused: "another arrows train")."""
    import signal
    import time

    proc = _start_long_parallel_study(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 60  # SIGTERM from the kernel, then Python's exit
        while any(_locked(tmp_path / "study" / name) for name in ("fw", "bw")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_locked(tmp_path / "study" / name) for name in ("fw", "bw"))
    finally:
        _end_stray_runs(tmp_path)


def test_parallel_study_interrupted_stops_its_runs_first(tmp_path):
    """SIGTERM to the study (`kill`, a cluster's preemption), or SIGINT to it alone (`kill -INT`,
    a notebook's interrupt: the same path, errors.terminated raises its KeyboardInterrupt): it stops
    both runs after a step, with a checkpoint of it, waits for them, and says how to continue;
    nothing is left training when it returns. (SIGTERM ended the study at once, its runs then
    ended by the kernel's PR_SET_PDEATHSIG without a word.)"""
    import signal

    from arrows import checkpoint

    proc = _start_long_parallel_study(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        err = " ".join(err.split())
        assert "each run stopped after a step and saved its checkpoint (its log says which): run the same command to continue" in err, err
        assert "Traceback" not in err, err
        for name in ("fw", "bw"):
            assert not _locked(tmp_path / "study" / name)
            log = " ".join((tmp_path / "study" / f"{name}.log").read_text().split())
            step = checkpoint.saved_step(tmp_path / "study" / name / "checkpoints" / "latest.pt")
            assert f"interrupted at step {step}; its checkpoint is saved in" in log and step > 10, log[-2000:]
    finally:
        _end_stray_runs(tmp_path)


def test_study_stopped_by_sigterm_saves_the_step_its_run_reached(tmp_path):
    """SIGTERM to a study that trains its runs one after the other: the run stops after its step
    with a checkpoint of it, and the study says so (SIGTERM ended it at once, without a word, and
    the steps since the last checkpoint were lost)."""
    import signal

    from arrows import checkpoint

    proc = _start_long_parallel_study(tmp_path, parallel=False)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        err = " ".join(err.split())
        step = checkpoint.saved_step(tmp_path / "study" / "fw" / "checkpoints" / "latest.pt")
        assert f"interrupted by SIGTERM at step {step}; its checkpoint is saved in" in err and step >= 10, err[-2000:]
        assert "SIGTERM: stopping after this step, with a checkpoint of it" in err and "Traceback" not in err, err[-2000:]
        assert not _locked(tmp_path / "study" / "fw") and not (tmp_path / "study" / "bw" / "checkpoints").exists()
    finally:
        _end_stray_runs(tmp_path)


def test_delta_figure_shows_the_seeds_mean_with_training_noise(tmp_path, drawn_figures):
    """With several seeds the headline is their mean with the interval that includes training noise;
    the figure draws it beside the seeds (their narrow intervals alone read as a settled arrow)."""
    from arrows import report as report_module

    drawn = drawn_figures(report_module)
    report = _report(seeds=(4, 5), deltas=[0.01, 0.05])
    s = report["summary"]
    report_module._plot_delta(report, tmp_path / "two.png")
    ax, ylabel = drawn["two.png"].ax, drawn["two.png"].ylabel
    ticks, lines, legend = [t.get_text() for t in ax.get_xticklabels()], [line.get_ydata() for line in ax.get_lines()], ax.get_legend_handles_labels()[1]
    assert ticks == ["seed 4", "seed 5", "mean of 2 seeds"] and "> 0: backward worse" in ylabel
    assert any("training noise" in label for label in legend)
    # The mean's error bar runs from seed_low to seed_high (in %).
    ends = sorted(float(y) for ys in lines for y in np.atleast_1d(ys))
    assert any(abs(e - 100 * s["seed_low"]) < 1e-9 for e in ends) and any(abs(e - 100 * s["seed_high"]) < 1e-9 for e in ends)
    report_module._plot_delta(_report(), tmp_path / "one.png")
    assert [t.get_text() for t in drawn["one.png"].ax.get_xticklabels()] == ["seed 0"]


def test_compare_notes_runs_trained_with_different_seeds(tmp_path):
    """Two runs trained apart (not by one study) with different seeds: δ includes the noise of the
    seed (other initial weights, another window order); the report gave the forward seed alone."""
    from arrows.compare import Run, training_differences

    def run(seed, backwards):
        config = {"model_params": {"n_layers": 1}, "optim_params": {"lr": 1e-3},
                  "training_params": {"batch_size": 8, "aggregate": 1, "seed": seed, "backwards": backwards}}
        return Run(tmp_path / f"s{seed}", config, tmp_path / "latest.pt")

    assert training_differences(run(0, False), run(0, True), 10, 10) == []
    notes = training_differences(run(0, False), run(1, True), 10, 10)
    assert len(notes) == 1 and "training_params.seed 0 forward, 1 backward" in notes[0], notes


def test_synthetic_verdict_is_not_conclusive_when_the_easy_direction_learned_nothing():
    """sparse-linear: the forward arrow comes from the forward model computing y. A δ > 0 measured
    while it has not learned y (both models guess it) is not the language's arrow: not "as expected"."""
    from arrows.compare import _synthetic_verdict

    sidecar = {"fields": ["x", "y"], "expected_arrow": "forward"}
    chance = {"x": 0.693, "y": 0.693}
    summary = {"delta": 0.0006, "low": 0.0004, "high": 0.0007}
    guessing = [{"fields": {"forward": {"x": 0.694, "y": 0.694}, "backward": {"x": 0.695, "y": 0.695}}}]
    verdict, notes = _synthetic_verdict(sidecar, guessing, chance, summary)
    assert "not conclusive" in verdict and "forward model has NOT learned `y`" in verdict and "as expected" not in verdict
    learned = [{"fields": {"forward": {"x": 0.694, "y": 0.01}, "backward": {"x": 0.695, "y": 0.694}}}]
    verdict, _ = _synthetic_verdict(sidecar, learned, chance, summary)
    assert verdict == "Measured: a forward arrow, as expected."
    # The other sign, or none, from models that learned nothing (`arrows demo --steps 50`) is not
    # conclusive either, where it was called "NOT the expected one" as if the language were wrong.
    for low, high, measured in ((-0.0094, -0.0092, "a backward arrow"), (-0.001, 0.001, "no arrow")):
        verdict, _ = _synthetic_verdict(sidecar, guessing, chance, {"delta": (low + high) / 2, "low": low, "high": high})
        assert verdict.startswith(f"Measured: {measured}, not the expected forward one, but not conclusive: the forward model has NOT learned `y`"), verdict
        assert "NOT the expected" not in verdict
    verdict, _ = _synthetic_verdict(sidecar, learned, chance, {"delta": -0.0093, "low": -0.0094, "high": -0.0092})
    assert verdict.startswith("Measured: a backward arrow, NOT the expected one")  # the easy direction learned: a real surprise
    # A reversible language: no arrow is what untrained models show too (`arrows demo --steps 1`).
    walks = {"fields": ["walk"], "expected_arrow": "none"}
    pairs = [{"fields": {"forward": {"walk": 5.5}, "backward": {"walk": 5.5}}}]
    summary = {"delta": 0.0002, "low": -0.0001, "high": 0.0005}
    verdict, _ = _synthetic_verdict(walks, pairs, {"walk": 1.9}, summary, frequencies_only=True)
    assert "within ±1%, but not conclusive: a run has not learned beyond token frequencies" in verdict and "should be" not in verdict
    verdict, _ = _synthetic_verdict(walks, pairs, {"walk": 1.9}, summary, frequencies_only=False)
    assert verdict == "Measured δ = +0.02%: within ±1%, as a reversible language should be."
