"""What `arrows study`, `compare`, `sweep` and `demo` leave behind when something goes wrong around
them: a second command on the same folder, an interruption, a full disk."""

import json
import os
import shutil

import pytest

from arrows.errors import InputError

from conftest import arrows


# ---- arrows demo --------------------------------------------------------------------------------
def test_a_second_demo_into_a_running_demos_folder_is_refused(tmp_path):
    """The first demo holds its folder's marker locked: the second used to wipe the folder the first
    was training into (the first crashed, and wrote on into the second's runs)."""
    from arrows.demo import MARKER, prepare_folder

    demo = tmp_path / "demo"
    with prepare_folder(demo):  # a demo running in `demo`
        (demo / "reversible").mkdir()
        (demo / "reversible" / "walks.txt").write_text("abc\n")
        proc = arrows("demo", "--out", demo, "--steps", "1", check=False, timeout=60)
        assert proc.returncode == 1 and "another arrows demo is running" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert (demo / "reversible" / "walks.txt").read_text() == "abc\n" and (demo / MARKER).is_file()
    # Once it has ended, the folder is the demo's to make anew.
    with prepare_folder(demo):
        assert sorted(p.name for p in demo.iterdir()) == [MARKER]


def test_a_demo_folder_whose_emptying_was_interrupted_is_still_the_demos(tmp_path, monkeypatch):
    """Ctrl-C while an earlier demo's folder is deleted: the marker is removed last (never), so the
    next demo still knows the folder for its own; a deletion that took the marker first left a
    folder of demo files refused as "a folder that an earlier arrows demo did not make"."""
    from arrows import demo as demo_module

    demo = tmp_path / "demo"
    demo_module.prepare_folder(demo).close()
    (demo / "sparse-linear" / "tokens").mkdir(parents=True)

    def interrupted(path, *args, **kwargs):
        # What a real rmtree may do: take the marker among its first entries, then be stopped.
        (path / demo_module.MARKER).unlink(missing_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_module.prepare_folder(demo)
    monkeypatch.undo()
    with demo_module.prepare_folder(demo):
        assert sorted(p.name for p in demo.iterdir()) == [demo_module.MARKER]



# ---- report and sweep files ---------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_while_the_report_is_written_names_the_file(tmp_path):
    """A full disk while a figure was saved said only "No space left on device" (PIL closes the
    file without naming it), after minutes of evaluation: which disk to free was left to guess."""
    import errno

    from arrows.report import write_aside

    def full_disk(path):
        with open("/dev/full", "wb") as f:
            f.write(b"x")

    out = tmp_path / "report"
    with pytest.raises(OSError) as caught:
        write_aside(out, {"report.json": lambda p: p.write_text("{}"), "curves.png": full_disk})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out / "curves.png")
    assert [p.name for p in out.iterdir()] == []  # nothing half-written, no temporary folder left


def test_a_report_folder_that_cannot_be_written_is_refused_before_the_evaluation(tmp_path, monkeypatch):
    """A read-only study (an archived or shared copy) compared again: refused at once, not after
    the whole evaluation with a temporary folder's name ("report/.report-hqhglhoy: Read-only file
    system"). The same for a new --out under a read-only folder."""
    from arrows import report as report_module

    study = tmp_path / "study"
    (study / "report").mkdir(parents=True)
    for folder in (study / "report", study):
        folder.chmod(0o555)
    try:
        if os.access(study, os.W_OK):  # root writes anywhere: stand in for a read-only mount
            real = os.access
            monkeypatch.setattr(report_module.os, "access", lambda p, mode: False if str(p).startswith(str(study)) else real(p, mode))
        with pytest.raises(InputError, match=r"report: cannot write in .*report \(a read-only file system, or no permission\)"):
            report_module.check_report_folder(study / "report")
        with pytest.raises(InputError, match=r"new/report: cannot write under .*study \("):
            report_module.check_report_folder(study / "new" / "report")
        assert report_module.check_report_folder(tmp_path / "elsewhere") == tmp_path / "elsewhere"
        # Under a file: said as such, not as a folder without permission.
        (tmp_path / "afile").write_text("mine")
        with pytest.raises(InputError, match=r"afile/report: .*afile is a file, not a folder"):
            report_module.check_report_folder(tmp_path / "afile" / "report")
    finally:
        for folder in (study, study / "report"):
            folder.chmod(0o755)


# ---- arrows study -------------------------------------------------------------------------------
def _tiny_study_config(tmp_path, steps=20):
    arrows("synth", "reversible", "--out", tmp_path / "walks.txt", "--lines", "2000", "--nodes", "6", "--walk-length", "11")
    arrows("tokenize", tmp_path / "walks.txt", "--tokenizer", "bytes", "--out", tmp_path / "tokens")
    config = {
        "model_params": {"vocab_size": 257, "n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 24, "dropout": 0.0},
        "training_params": {"dataset_folder": str(tmp_path / "tokens"), "batch_size": 8, "steps_to_train": steps, "stride": 12,
                            "valid_fraction": 0.1, "valid_every": steps, "step_log": 10, "save_every": steps, "sample_every": 0,
                            "save_loc": str(tmp_path / "runs"), "threads": 1},
        "optim_params": {"lr": 3e-3, "warmup_steps": 2},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    return tmp_path / "cfg.json"


def test_study_checks_its_folder_and_report_folder_before_it_trains(tmp_path):
    """A file as --out said only "File exists"; a file where the study's report goes was found
    only once both runs had trained."""
    cfg = _tiny_study_config(tmp_path)
    (tmp_path / "afile").write_text("mine")
    proc = arrows("study", cfg, "--out", tmp_path / "afile", check=False)
    assert proc.returncode == 1 and "afile: exists and is not a folder; give a new or empty folder with --out" in proc.stderr, proc.stderr
    assert (tmp_path / "afile").read_text() == "mine"
    # The config's notes are said once by the study (it printed none: only `arrows train` did).
    config = json.loads(cfg.read_text())
    config["training_params"]["fast_scrambling"] = True
    cfg.write_text(json.dumps(config))
    proc = arrows("study", cfg, "--out", tmp_path / "afile", check=False)
    assert proc.returncode == 1 and proc.stderr.count("note: training_params.fast_scrambling has no effect") == 1, proc.stderr

    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"config": str(cfg), "seeds": 1, "pairs": [{"fw": "fw", "bw": "bw", "seed": 0}]}))
    (study / "report").write_text("mine")
    proc = arrows("study", cfg, "--out", study, check=False)
    assert proc.returncode == 1 and "report: exists and is not a folder; the study writes its report there" in proc.stderr, proc.stderr
    assert not (study / "fw").exists() and (study / "report").read_text() == "mine"


# ---- arrows compare -----------------------------------------------------------------------------
def test_compare_of_runs_whose_data_moved_names_the_run_and_the_setting(tmp_path):
    """Run folders are found wherever they are moved; their data is named by its path. Gone from
    there, compare said only "/x/tokens: No such file or directory"."""
    for name, backwards in (("fw", False), ("bw", True)):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "latest.pt").write_bytes(b"")
        (run / "config.json").write_text(json.dumps({
            "model_params": {"model_type": "gpt", "vocab_size": 257, "attn_length": 8},
            "training_params": {"dataset_folder": str(tmp_path / "moved-away"), "backwards": backwards, "valid_fraction": 0.1, "stride": 8},
        }))
    proc = arrows("compare", tmp_path / "fw", tmp_path / "bw", "--out", tmp_path / "report", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    said = " ".join(proc.stderr.split())
    assert f"fw: its data {tmp_path / 'moved-away'} (training_params.dataset_folder in {tmp_path / 'fw' / 'config.json'}) is not there" in said, said


def test_a_study_stopped_while_it_rewrites_its_record_keeps_it(tmp_path, monkeypatch):
    """study.json is rewritten at every run of a study: written in place, a study killed (or a full
    disk) between the truncation and the write left it empty, and the study, runs and all, was
    "damaged: start the study over" for study, compare and sweep alike."""
    from pathlib import Path

    from arrows.config import config_from_dict
    from arrows.study import read_study_record, run_study

    cfg_file = _tiny_study_config(tmp_path)
    config = config_from_dict(json.loads(cfg_file.read_text()), source_path=cfg_file)
    study = tmp_path / "study"
    study.mkdir()
    record = {"config": str(cfg_file), "seeds": 1, "pairs": [{"fw": "fw", "bw": "bw", "seed": 0}]}
    (study / "study.json").write_text(json.dumps(record))

    def killed_while_writing(self, *args, **kwargs):
        open(self, "w").close()  # truncated, then stopped before a byte is written
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, study, device="cpu")
    monkeypatch.undo()
    assert read_study_record(study)["pairs"] == [("fw", "bw")]
    assert sorted(p.name for p in study.iterdir()) == [".study.lock", "study.json"]  # no temporary file left either


def test_compare_reads_the_curves_of_a_run_killed_while_logging(tmp_path):
    """A run killed while writing a line of metrics.jsonl (or still writing it): the torn last line
    is left out, as a resume drops it; compare ended with a JSONDecodeError traceback."""
    from arrows.errors import CorruptDataError
    from arrows.metrics import read

    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 2.5}\n{"step": 20, "loss": 2.1}\n{"step": 30, "lo')
    assert read(tmp_path) == [{"step": 10, "loss": 2.5}, {"step": 20, "loss": 2.1}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 2.5}\n{"step": 20, "lo\n{"step": 30, "loss": 2.0}\n')
    with pytest.raises(CorruptDataError, match="metrics.jsonl: line 2 is not a JSON record"):
        read(tmp_path)


def test_the_hint_to_finish_a_study_keeps_its_steps(tmp_path):
    """A study run with --steps and stopped: compare and sweep said to finish it with its config
    alone, which trained it on to the config's own steps (5,000 here, not 20)."""
    cfg = _tiny_study_config(tmp_path, steps=5000)
    study = tmp_path / "study"
    arrows("study", cfg, "--out", study, "--steps", "20", "--device", "cpu")
    shutil.rmtree(study / "bw" / "checkpoints")  # stopped before bw's first checkpoint
    finish = f"arrows study {cfg} --out {study} --steps 20"  # not --model: the config gives the same
    proc = arrows("compare", study, check=False)
    assert proc.returncode == 1 and f"finish it with `{finish}`" in " ".join(proc.stderr.split()), proc.stderr
    shutil.rmtree(study / "report")
    proc = arrows("sweep", study, study, "--out", tmp_path / "sweep", check=False)
    assert proc.returncode == 1 and f"run `{finish}` to finish it" in " ".join(proc.stderr.split()), proc.stderr


def test_an_interrupted_demo_says_it_starts_over(tmp_path, monkeypatch):
    """The demo's folder is made anew each time: Ctrl-C during a run said that run's "run the same
    command to continue", and the same command started over from the first language."""
    from arrows import demo as demo_module
    from arrows.errors import CancelledError

    def interrupted(*args, **kwargs):
        raise CancelledError("interrupted at step 2; no checkpoint was written yet: run the same command to continue")

    monkeypatch.setattr(demo_module, "run_language", interrupted)
    with pytest.raises(CancelledError) as caught:
        demo_module.run_demo(tmp_path / "demo", steps=5)
    assert "starts over" in str(caught.value) and "continue" not in str(caught.value)


def test_compare_and_sweep_say_when_a_run_is_still_training(tmp_path):
    """compare on runs still training (a --parallel study, or one trained on) wrote a report that
    looked final; sweep then said to compare again, which only gave another provisional report."""
    import fcntl

    cfg = _tiny_study_config(tmp_path)
    study = tmp_path / "study"
    arrows("study", cfg, "--out", study, "--device", "cpu")
    with open(study / "fw" / ".lock", "w") as lock:  # what `arrows train` holds while it trains
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        arrows("compare", study, "--device", "cpu")
        notes = json.loads((study / "report" / "report.json").read_text())["notes"]
        assert any(f"{study / 'fw'} was still training" in n and "evaluated at its checkpoint of step 20" in n for n in notes), notes
        report = json.loads((study / "report" / "report.json").read_text())
        report["pairs"][0]["steps_fw"] = 10  # evaluated before its latest checkpoint
        (study / "report" / "report.json").write_text(json.dumps(report))
        proc = arrows("sweep", study, study, "--out", tmp_path / "sweep", check=False)
        said = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and f"evaluated {study / 'fw'} at step 10, and it is training now (at step 20): wait for it to end" in said, said


def test_compare_and_sweep_of_a_study_still_training_say_to_wait(tmp_path):
    """A study whose second run has not reached its first checkpoint, training now: compare and
    sweep said to finish it with `arrows study ...`, which was then refused ("another arrows train
    is running in this folder")."""
    import fcntl

    study = tmp_path / "study"
    (study / "fw" / "checkpoints").mkdir(parents=True)
    (study / "fw" / "checkpoints" / "latest.pt").write_bytes(b"")
    (study / "bw").mkdir()
    (study / "study.json").write_text(json.dumps({"config": str(tmp_path / "cfg.json"), "seeds": 1, "pairs": [{"fw": "fw", "bw": "bw", "seed": 0}]}))
    with open(study / "bw" / ".lock", "w") as lock:  # what `arrows train` holds while it trains
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = arrows("compare", study, check=False)
        said = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "the study is unfinished and training now" in said and "wait for the study to end" in said, said
        proc = arrows("sweep", study, study, "--out", tmp_path / "sweep", check=False)
        said = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "no report yet: the study is training now; wait for it to end" in said, said


def test_a_second_study_in_a_folder_is_refused_before_it_rewrites_the_record(tmp_path):
    """Two `arrows study` on one folder: the second rewrote the study's record and run configs (its
    own config, its own --steps) under the first, and was refused only at its first run, by that
    run's lock, or trained a run the first had not reached yet."""
    import fcntl

    cfg = _tiny_study_config(tmp_path)
    study = tmp_path / "study"
    study.mkdir()
    record = json.dumps({"config": str(cfg), "seeds": 1, "pairs": [{"fw": "fw", "bw": "bw", "seed": 0}], "steps": 20, "model": "gpt"})
    (study / "study.json").write_text(record)
    with open(study / ".study.lock", "w") as lock:  # the first study, running
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = arrows("study", cfg, "--out", study, "--steps", "7", check=False)
    assert proc.returncode == 1 and "another arrows study is running in this folder" in proc.stderr, proc.stderr
    assert (study / "study.json").read_text() == record and sorted(p.name for p in study.iterdir()) == [".study.lock", "study.json"]


def test_a_study_interrupted_while_comparing_says_its_runs_are_trained(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a study's comparison (minutes on a large validation split) said "interrupted"
    alone, as if the training had been stopped."""
    import typer

    from arrows import cli
    from arrows import study as study_module

    cfg = _tiny_study_config(tmp_path)
    monkeypatch.setattr(study_module, "run_study", lambda *args, **kwargs: [(tmp_path / "study" / "fw", tmp_path / "study" / "bw")])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_compare_and_print", interrupted)
    with pytest.raises(typer.Exit) as caught:
        cli.study(config=cfg, seeds=None, out=tmp_path / "study", steps=None, model=None, device="cpu", gpus=None, parallel=False,
                  no_compile=False, attention=None, head_loss=None, max_windows=None)
    said = " ".join(capsys.readouterr().err.split())
    assert caught.value.exit_code == 130 and "interrupted while comparing; the runs are trained: run the same command" in said, said


def test_a_study_killed_before_its_record_was_in_place_starts_again(tmp_path, monkeypatch):
    """Killed between its record's temporary write and its rename, a new study left
    `.study.json.PID.tmp` (and its lock file): the folder was then refused as "not a study folder
    and not empty"."""
    from arrows import study as study_module
    from arrows.config import load_config

    cfg = _tiny_study_config(tmp_path)
    study = tmp_path / "study"
    study.mkdir()
    (study / ".study.lock").write_text("")
    (study / ".study.json.4242.tmp").write_text('{"config": ')
    trained = []
    monkeypatch.setattr("arrows.train.train", lambda config, opts: trained.append(config.training.backwards))
    study_module.run_study(load_config(cfg), study, device="cpu")
    assert trained == [False, True] and json.loads((study / "study.json").read_text())["seeds"] == 1
    (study / "notes.txt").write_text("mine")  # anything else in a folder without a record is still refused
    (study / "study.json").unlink()
    with pytest.raises(InputError, match="not a study folder"):
        study_module.run_study(load_config(cfg), study, device="cpu")


def test_a_report_left_half_written_by_a_killed_process_is_cleaned_up(tmp_path):
    """kill -9 while a report was written left its hidden temporary folder for ever."""
    from arrows.report import write_aside

    out = tmp_path / "report"
    (out / ".report-999999999-dead").mkdir(parents=True)  # no such process
    (out / f".report-{os.getpid()}-alive").mkdir()  # a report being written now, by this process
    write_aside(out, {"report.md": lambda path: path.write_text("# δ\n")})
    assert sorted(p.name for p in out.iterdir()) == [f".report-{os.getpid()}-alive", "report.md"]
