"""metrics.jsonl and the optional loggers of a run: what wandb is given (through a stand-in module
that records the calls: the real package is not a dependency), and resumption."""

import sys
import types

import pytest

from arrows.metrics import Metrics, read


class FakeWandb(types.ModuleType):
    """Records init/log/finish as wandb's module-level API is called."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kw):
        self.calls.append(("init", kw))
        return self

    def log(self, data, step):
        self.calls.append(("log", data, step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    module = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_gets_every_record_and_one_id_per_run(tmp_path, fake_wandb):
    run = tmp_path / "study_en" / "fw"
    run.mkdir(parents=True)
    m = Metrics(run, resume_step=None, config={"lr": 1e-3}, wandb_project="arrows")
    m.log({"step": 1, "loss": 5.0, "lr": 1e-3})
    m.log({"step": 2, "loss": 4.5, "lr": 1e-3})
    m.close()
    (_, init), *logs, finish = fake_wandb.calls
    assert init["project"] == "arrows" and init["name"] == "study_en/fw" and init["config"] == {"lr": 1e-3} and init["resume"] == "allow"
    assert logs == [("log", {"loss": 5.0, "lr": 1e-3}, 1), ("log", {"loss": 4.5, "lr": 1e-3}, 2)] and finish == ("finish",)
    assert [r["step"] for r in read(run)] == [1, 2]

    # Resumed from step 1: the same wandb run continues; the file drops what came after step 1.
    fake_wandb.calls.clear()
    Metrics(run, resume_step=1, config={}, wandb_project="arrows").close()
    assert fake_wandb.calls[0][1]["id"] == init["id"]
    assert [r["step"] for r in read(run)] == [1]

    # Another study's fw run, or this folder started afresh: a run of its own.
    other = tmp_path / "study_fr" / "fw"
    other.mkdir(parents=True)
    fake_wandb.calls.clear()
    Metrics(other, resume_step=None, config={}, wandb_project="arrows").close()
    Metrics(run, resume_step=None, config={}, wandb_project="arrows").close()
    ids = {call[1]["id"] for call in fake_wandb.calls if call[0] == "init"}
    assert len(ids) == 2 and init["id"] not in ids


def test_no_wandb_unless_asked(tmp_path, fake_wandb):
    m = Metrics(tmp_path, resume_step=None, config={}, wandb_project=None)
    m.log({"step": 1, "loss": 1.0})
    m.close()
    assert fake_wandb.calls == []


def test_a_run_started_over_drops_the_earlier_runs_records(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    m = Metrics(tmp_path, resume_step=None, config={}, wandb_project=None)
    for step in (1, 2, 3):
        m.log({"step": step, "loss": 1.0 / step})
    m.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # Resumed at step 2: the records after it go, the earlier ones stay.
    m = Metrics(tmp_path, resume_step=2, config={}, wandb_project=None)
    m.close()
    assert [r["step"] for r in read(tmp_path)] == [1, 2]
    # Started over (--resume never): nothing of the earlier run is left to mix with the new curves.
    m = Metrics(tmp_path, resume_step=None, config={}, wandb_project=None)
    m.log({"step": 1, "loss": 0.5})
    m.close()
    assert [r["step"] for r in read(tmp_path)] == [1]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_events_carry_the_records_time_as_their_wall_time(tmp_path):
    # The record's unix time was logged as a scalar curve, which TensorBoard stores in float32:
    # 1.8e9 seconds to the nearest 128 s. It is the events' wall time instead, to the microsecond.
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    when = 1_795_000_000.123456
    m = Metrics(tmp_path, resume_step=None, config={}, wandb_project=None)
    m.log({"step": 1, "loss": 2.5, "time": when})
    m.close()
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    scalars = [(e.wall_time, v.tag) for e in EventFileLoader(str(events)).Load() for v in e.summary.value]
    assert scalars == [(pytest.approx(when, abs=1e-6), "loss")]


def test_progress_shows_a_phase_complete_when_the_next_one_starts():
    import io

    from arrows.progress import Reporter

    # A log: the phase ended between two plain lines; its last line said 57%.
    log = io.StringIO()
    with Reporter(stream=log, every=1000, force_plain=True) as r:
        r.update("sampling", 0, 100)
        r.update("sampling", 57, 100)
        r.update("encoding", 0, 10)
        r.update("encoding", 10, 10, final=True)
        r.update("writing", 0, 10)  # after a final line: nothing more for "encoding"
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("sampling:   0.0%")
    assert lines[1].startswith("sampling: 100.0%  done in")
    assert lines[2:] == ["encoding: 100.0%  10 B / 10 B"], lines  # shown complete once, by its final update

    # A terminal: the earlier phase's bar is filled.
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with Reporter(stream=Terminal()) as r:
        r.update("sampling", 57, 100)
        r.update("encoding", 1, 10)
        tasks = {t.description: t for t in r._bar.tasks}
    assert tasks["sampling"].completed == 100 and tasks["encoding"].completed == 1


def test_a_second_resume_from_one_step_keeps_one_note_of_its_changed_settings(tmp_path):
    """Resumed with a new lr, interrupted before its next save, resumed again from the same
    checkpoint: the file says once what changed at that step, and keeps the step's own record."""
    m = Metrics(tmp_path, resume_step=None, config={}, wandb_project=None)
    for step in (1, 2):
        m.log({"step": step, "loss": 5.0 - step})
    m.close()
    for _ in range(2):
        m = Metrics(tmp_path, resume_step=2, config={}, wandb_project=None)
        m.log({"step": 2, "changed_settings": "optim_params.lr: 0.003 → 0.001"})
        m.log({"step": 2, "attention": "attention: sdpa"})
        m.log({"step": 3, "loss": 1.5})  # then interrupted
        m.close()
    records = read(tmp_path)
    assert records == [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.0},
                       {"step": 2, "changed_settings": "optim_params.lr: 0.003 → 0.001"}, {"step": 2, "attention": "attention: sdpa"},
                       {"step": 3, "loss": 1.5}], records


def test_wandb_without_the_package_says_how_to_install_it_before_the_run_folder_is_made(tmp_path, monkeypatch):
    """From Python (the command checks its --wandb itself): the run folder was made, then the
    loggers' start raised SystemExit, which ends a program or a notebook's cell as no error does."""
    import json

    from arrows.config import load_config
    from arrows.errors import InputError
    from arrows.train import TrainOptions, train

    monkeypatch.setitem(sys.modules, "wandb", None)  # as without the package
    run = tmp_path / "runs" / "r"
    cfg = {"model_params": {"n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16, "vocab_size": 300},
           "training_params": {"dataset_folder": str(tmp_path / "store"), "batch_size": 4, "save_loc": str(run.parent), "run_name": "r"},
           "optim_params": {}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="wandb project 'proj': logging to wandb needs the wandb package: pip install wandb"):
        train(load_config(tmp_path / "c.json"), TrainOptions(device="cpu", wandb="proj"))
    assert not run.parent.exists()
    run.mkdir(parents=True)
    with pytest.raises(InputError, match="wandb project 'proj': logging to wandb needs the wandb package"):
        Metrics(run, resume_step=None, config={}, wandb_project="proj")
