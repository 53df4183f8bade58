"""The exact-resume promise of `arrows train`, under a grid of settings: a CPU run resumed from any
of its checkpoints logs what the uninterrupted run logged (metrics.jsonl but its wall-clock
figures, samples.jsonl, TensorBoard's scalars, summary.json) and ends with the same weights and
optimizer state.

Each case trains a tiny run uninterrupted, keeping a checkpoint at every step (backup_every 1,
but in one case), then resumes a copy of it from each kept checkpoint: the copy's latest.pt replaced by the backup of that
step, the later backups and summary.json removed (what a kill just after that step's save leaves),
and the command that was interrupted given again, then those that came after it. The resume points
fall between two logged records, inside an epoch and across one, at the end of the run and of a
`--more` segment. Runs are in-process (a few seconds per case)."""

import json
import shutil

import pytest
from conftest import arrows, random_text

torch = pytest.importorskip("torch")

MODEL = {"n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16, "mlp_ratio": 2.0, "dropout": 0.1, "embd_dropout": None}
RNN = {"n_layers": 2, "embed_dim": 16, "attn_length": 16, "dropout": 0.2}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of about a thousand tokens: batches of 24 windows make 6 batches an epoch (the last
    partial batch dropped), so that epochs end inside a run of a few steps. Its .h5 copy too."""
    tmp = tmp_path_factory.mktemp("data")
    text = tmp / "t.txt"
    text.write_text(random_text(3, 2500, specials=False), encoding="utf-8")
    arrows("tokenize", text, "--out", tmp / "store", "--vocab-size", "300", "--h5")
    return tmp / "store"


def write_config(path, store, run_name, model=None, optim=None, **training):
    cfg = {
        "model_params": {**(model or MODEL), "vocab_size": 300},
        "training_params": {"dataset_folder": str(store), "batch_size": 24, "aggregate": 1, "steps_to_train": 8, "save_every": 1000,
                            "backup_every": 1, "step_log": 1, "valid_every": 1000, "valid_batches": 1, "valid_fraction": 0.1,
                            "sample_every": 0, "sample_tokens": 4, "threads": 1, "save_loc": str(path.parent / "runs"),
                            "run_name": run_name, **training},
        "optim_params": {"lr": 3e-3, "warmup_steps": 2, "oscil_steps": 3, "lr_shrink": 0.85, "lr_init": 1e-7, "lr_min": 1e-6, **(optim or {})},
    }
    path.write_text(json.dumps(cfg))
    return path


def train(config_path, more=None):
    from arrows.config import load_config
    from arrows.train import TrainOptions
    from arrows.train import train as run

    return run(load_config(config_path), TrainOptions(device="cpu", more=more))


def outcome(run_dir):
    """What a run leaves that must not depend on interruptions."""
    from arrows.metrics import read

    # A resume under changed settings logs them at its step: said on purpose, not a divergence.
    metrics = [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in read(run_dir) if "changed_settings" not in r]
    samples = run_dir / "samples.jsonl"
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["run_dir"]
    ckpt = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    return {"metrics": metrics, "samples": samples.read_text() if samples.exists() else None, "summary": summary,
            "tensorboard": tensorboard_scalars(run_dir), "model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"],
            "loader": [r["loader"] for r in ckpt["per_rank"]]}


def tensorboard_scalars(run_dir) -> dict | None:
    """Each TensorBoard tag's {step: value}, as TensorBoard shows them: the event files in the order
    they were written, a resumed run's purge (a START at step s) dropping what earlier files hold
    from step s on. Read here, not by TensorBoard's EventAccumulator, which orders the files by
    name: in-process runs started within one second differ only by a counter (….9 sorts after ….10)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:
        return None
    from tensorboard.compat.proto.event_pb2 import SessionLog

    def written(path):  # events.out.tfevents.<seconds>.<host>.<pid>.<counter>
        parts = path.name.split(".")
        return int(parts[3]), int(parts[-1])

    scalars = {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=written):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {tag: {s: v for s, v in steps.items() if s < event.step} for tag, steps in scalars.items()}
            for value in event.summary.value:
                if value.tag not in ("tokens_per_s", "time"):  # wall-clock figures
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
    return scalars


def assert_same(whole, resumed, at):
    for key in ("metrics", "samples", "summary", "tensorboard", "loader"):
        assert resumed[key] == whole[key], f"resumed at step {at}: {key} differs"
    for name, tensor in whole["model"].items():
        assert torch.equal(resumed["model"][name], tensor), f"resumed at step {at}: weight {name} differs"
    for index, state in whole["optimizer"].items():
        for name, tensor in state.items():
            assert torch.equal(resumed["optimizer"][index][name], tensor), f"resumed at step {at}: optimizer {index}.{name} differs"


# name: (training settings, model, optim, commands (the `--more` of each), settings changed on resume)
CASES = {
    # Records every 3 steps, validation every 4, samples every 5: resumed at 4 or 5, between two
    # records (the loss of step 6 averages steps 4-6, some of them before the checkpoint).
    "cadences_apart": (dict(steps_to_train=10, step_log=3, valid_every=4, sample_every=5), MODEL, None, [None], None),
    # 6 batches an epoch, 4 a step: step 2 takes the last two batches of epoch 0 and the first two of epoch 1.
    "aggregate_across_epochs": (dict(steps_to_train=5, aggregate=4, step_log=2, sample_every=3), MODEL, None, [None], None),
    "gru_backward_dropout": (dict(steps_to_train=6, step_log=4, backwards=True, sample_every=2), {**RNN, "model_type": "gru"}, None,
                             [None], None),
    "lstm_permutation": (dict(steps_to_train=6, step_log=2, permutation=[15, *range(1, 15), 0]), {**RNN, "model_type": "lstm"}, None,
                         [None], None),
    # A cooldown laid over each new total; resumed inside a --more run and at the end of each command.
    "more_twice_cooldown": (dict(steps_to_train=4, step_log=3, cooldown_finish=0.5), MODEL, {"warmup_steps": 1}, [None, 3, 3], None),
    # Checkpoints every 2 steps only: the records of the steps between are logged late (after the
    # next step), as they are in most runs; --more twice, under the reference's cosine restarts.
    "sparse_saves_more_twice": (dict(steps_to_train=5, step_log=2, save_every=2, backup_every=2, valid_every=3, sample_every=4), MODEL, None,
                                [None, 4, 4], None),
    # The .h5 copy, the whole validation split in batches of 5, and the loader's threads changed on resume.
    "h5_whole_validation_threads": (dict(steps_to_train=7, valid_every=3, valid_batches=None, val_batch_size=5, step_log=2),
                                    MODEL, None, [None], {"threads": 3}),
}


@pytest.mark.parametrize("name", CASES)
def test_a_run_resumed_from_any_checkpoint_ends_as_the_uninterrupted_one(tmp_path, store, name):
    training, model, optim, commands, changed = CASES[name]
    if name.startswith("h5"):
        training = {**training, "dataset_folder": str(store / "tokens.h5"), "tokenizer_path": str(store / "tokenizer.json")}
    cfg = write_config(tmp_path / "whole.json", store, "whole", model, optim, **training)
    ends = []
    for more in commands:
        ends.append(train(cfg, more)["steps"])
    whole_dir = tmp_path / "runs" / "whole"
    whole = outcome(whole_dir)
    for at in sorted(int(p.stem[5:]) for p in (whole_dir / "checkpoints").glob("step_*.pt")):
        run_dir = tmp_path / "runs" / f"at{at}"
        shutil.copytree(whole_dir, run_dir)
        ckpts = run_dir / "checkpoints"
        shutil.copy(ckpts / f"step_{at:08d}.pt", ckpts / "latest.pt")
        for later in ckpts.glob("step_*.pt"):
            if int(later.stem[5:]) > at:
                later.unlink()
        (run_dir / "summary.json").unlink()
        resumed_cfg = write_config(tmp_path / f"at{at}.json", store, f"at{at}", model, optim, **{**training, **(changed or {})})
        for more, end in zip(commands, ends):
            if end >= at:  # the command that was interrupted, then those that came after it
                train(resumed_cfg, more)
        assert_same(whole, outcome(run_dir), at)


def test_each_record_says_the_epoch_of_its_own_step(tmp_path, store):
    # A step not followed by validation or a save is logged once the next step has drawn its
    # batches: the record of an epoch's last step said the next epoch (6 batches an epoch: step 6
    # said epoch 1), unless a checkpoint followed it. The epochs logged then depended on save_every
    # and backup_every, which a resume may change (the grid above, saving at every step, saw none).
    from arrows.metrics import read

    cfg = write_config(tmp_path / "c.json", store, "epochs", steps_to_train=14, backup_every=None)
    train(cfg)
    records = [r for r in read(tmp_path / "runs" / "epochs") if "loss" in r]
    assert [r["epoch"] for r in records] == [0] * 6 + [1] * 6 + [2] * 2


def test_a_run_killed_after_its_last_checkpoint_gets_its_summary_and_last_backup(tmp_path, store):
    # Killed after the last step's latest.pt, while it wrote that step's backup or before its
    # summary.json: the same command found nothing to train ("nothing to do") and the run stayed
    # without both for good.
    from arrows import checkpoint

    cfg = write_config(tmp_path / "c.json", store, "end", steps_to_train=4, backup_every=2, valid_every=2)
    train(cfg)
    run_dir = tmp_path / "runs" / "end"
    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoints" / "step_00000004.pt").unlink()
    proc = arrows("train", cfg, "--device", "cpu")
    assert "finished: the run had trained to step 4 when it was stopped, before its summary.json" in proc.stdout, proc.stdout
    assert (run_dir / "summary.json").read_text() == summary  # its validation loss too
    assert checkpoint.load(run_dir / "checkpoints" / "step_00000004.pt")["step"] == 4
    assert "nothing to do: the run is already at step 4" in arrows("train", cfg, "--device", "cpu").stdout


def test_a_more_run_killed_after_its_last_checkpoint_is_finished_not_trained_further(tmp_path, store):
    # `--more 3` killed after its last checkpoint, before its summary.json (the earlier end's still
    # there): the same command trained 3 steps beyond the end the uninterrupted run had.
    cfg = write_config(tmp_path / "c.json", store, "more", steps_to_train=4, backup_every=None)
    run_dir = tmp_path / "runs" / "more"
    train(cfg)
    earlier_end = (run_dir / "summary.json").read_text()
    assert train(cfg, more=3)["steps"] == 7
    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(earlier_end)
    again = train(cfg, more=3)
    assert again["steps"] == 7 and again.get("nothing_to_do")
    assert (run_dir / "summary.json").read_text() == summary
    assert train(cfg, more=3)["steps"] == 10  # a run that ended: --more 3 trains 3 more, as before


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_run_stopped_by_a_signal_saves_its_step_and_resumes_as_the_uninterrupted_one(tmp_path, store, monkeypatch, signum):
    # SIGTERM (a cluster's preemption, `kill`) or Ctrl-C at step 5 of 9, records every 3 steps, no
    # checkpoint due before the end: the run saves the step it reached, whose checkpoint carries
    # the two steps not yet logged, and the resumed run ends as the uninterrupted one. (Before, a
    # Ctrl-C kept only the last checkpoint due, and SIGTERM killed the run without one.)
    import os
    import signal

    from arrows import checkpoint
    from arrows.errors import CancelledError
    from arrows.train import Trainer

    settings = dict(steps_to_train=9, step_log=3, valid_every=4, sample_every=4, backup_every=None)
    cfg = write_config(tmp_path / "whole.json", store, "whole", **settings)
    train(cfg)
    whole = outcome(tmp_path / "runs" / "whole")

    cfg = write_config(tmp_path / "stopped.json", store, "stopped", **settings)
    step = Trainer._train_step

    def signal_in_step_5(self, batches):
        if self.step == 4:
            os.kill(os.getpid(), getattr(signal, signum))
        return step(self, batches)

    monkeypatch.setattr(Trainer, "_train_step", signal_in_step_5)
    by = " by SIGTERM" if signum == "SIGTERM" else ""
    with pytest.raises(CancelledError, match=f"interrupted{by} at step 5; its checkpoint is saved in .*latest.pt"):
        train(cfg)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run_dir = tmp_path / "runs" / "stopped"
    assert checkpoint.saved_step(run_dir / "checkpoints" / "latest.pt") == 5
    assert [r["step"] for r in json_lines(run_dir / "metrics.jsonl") if "loss" in r] == [3]  # steps 4 and 5 are in the checkpoint
    monkeypatch.undo()
    train(cfg)
    assert_same(whole, outcome(run_dir), 5)


def json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]
