"""Reliability: each promise of `arrows tokenize`, the loaders and `arrows train`, attacked.

- crashes: kill -9 (and Ctrl-C) at seeded random instants spread over a whole run, resumed each
  time: the tokenized folder ends byte-identical, the training metrics identical, to an
  uninterrupted run, and every intermediate state is consistent;
- a full disk: a small tmpfs when this process may mount one, and a file-size limit;
- damaged and mixed-up files: flipped bytes, cut shards, files from another run, damaged checkpoints;
- bad inputs, configs and flags: one clear message, a non-zero exit, never a traceback;
- two processes on one folder: the second refuses, the first is unharmed.

Every random choice comes from a fixed seed. The Rust readers are fuzzed in
crates/arrows-core/tests/fuzz_readers.rs. README.md's "Reliability" table reports these tests.
"""

import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
from conftest import ARROWS, arrows, random_text

from arrows.data import TokenStore

SEED = 20261128


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by name, its lock file aside."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def user_error(proc, *needles, code=None):
    """A user mistake: a non-zero exit, one message naming the problem, no traceback."""
    assert proc.returncode != 0 if code is None else proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", proc.stderr).split())  # typer's box, unwrapped
    for n in needles:
        assert n in text, (n, proc.stderr)


class Child:
    """A running `arrows` command; its stderr is read as it comes (training reports "step N/M")."""

    def __init__(self, *args):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([str(ARROWS), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.step = None
        self.step_times: list[float] = []  # when each step was reported
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            m = re.match(r"step (\d+)/\d+ ", line)
            if m:
                self.step = int(m.group(1))
                self.step_times.append(time.monotonic())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_until(self, condition, timeout=120.0) -> bool:
        """Poll `condition` until it holds (True) or the process ends (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if not self.alive():
                return False
            time.sleep(0.002)
        raise AssertionError("timed out waiting for the child")

    def stop(self, sig=signal.SIGKILL) -> bool:
        """Send `sig`; True if it reached a running process. Waits for the end."""
        hit = self.alive()
        if hit:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return hit

    @property
    def stderr(self) -> str:
        return "".join(self.err)


# ------------------------------------------------------------------------------------------------
# tokenize: kill -9 and Ctrl-C at random instants, then resume


def manifest_progress(out: Path) -> int:
    """Input bytes covered by the complete shards of a store being written; -1 before its manifest."""
    try:
        m = json.loads((out / "manifest.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return -1
    return m["shards"][-1]["input_end"] if m["shards"] else 0


# Small shards (and so chunks) make many resume points; one thread leaves a core to this test.
TOK_SHARD = 250_000
TOK_ARGS = ["--vocab-size", "1000", "--sample-bytes", "3MB", "--shard-bytes", str(TOK_SHARD), "--threads", "1"]


@pytest.fixture(scope="module")
def tok_reference(tmp_path_factory):
    """A 64 MB corpus, and its store written without interruption, with the time line of that run:
    when the manifest first appeared (end of start-up and BPE training) and how long it took."""
    tmp = tmp_path_factory.mktemp("tok")
    corpus = tmp / "corpus.txt"
    block = random_text(SEED, 1_000_000, specials=False)
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(64):
            f.write(f"copy {i}\n{block}")
    out = tmp / "reference"
    child = Child("tokenize", corpus, "--out", out, *TOK_ARGS)
    child.wait_until(lambda: manifest_progress(out) >= 0)
    first_manifest = time.monotonic() - child.t0
    assert child.proc.wait(timeout=300) == 0, child.stderr
    duration = time.monotonic() - child.t0
    shards = len(json.loads((out / "manifest.json").read_text())["shards"])
    return {"corpus": corpus, "out": out, "files": files_of(out), "startup": first_manifest, "duration": duration, "shards": shards,
            "total": corpus.stat().st_size}


def test_tokenize_survives_kill_9_and_ctrl_c_at_random_instants(tmp_path, tok_reference):
    ref = tok_reference
    rng = random.Random(SEED)
    shard_seconds = (ref["duration"] - ref["startup"]) / ref["shards"]
    # 4 instants in the fresh run's start-up and BPE training, 28 over the encoding, 5 of those Ctrl-C.
    plan = [("startup", rng.uniform(0.05, 1.0) * ref["startup"]) for _ in range(4)]
    plan += [("encoding", f) for f in sorted(rng.uniform(0.0, 0.98) for _ in range(28))]
    sigint_at = set(rng.sample(range(4, len(plan)), 5))  # Ctrl-C only once the job is under way
    out = tmp_path / "out"
    kills, interrupts, leftovers, consistent_states = 0, 0, 0, 0
    outcomes = []
    for k, (phase, x) in enumerate(plan):
        start = manifest_progress(out)
        child = Child("tokenize", ref["corpus"], "--out", out, *TOK_ARGS, "--resume")
        if phase == "startup":
            time.sleep(x)
        else:
            # The shard holding the instant (or, if this attempt resumes past it, the attempt's
            # first new shard), then a random point of the shards after it.
            target = max(x * ref["total"] - TOK_SHARD, start + 1)
            if child.wait_until(lambda: manifest_progress(out) >= target):
                time.sleep(rng.uniform(0.0, 2.0) * shard_seconds)
        sig = signal.SIGINT if k in sigint_at else signal.SIGKILL
        t_sent = time.monotonic()
        hit = child.stop(sig)
        outcomes.append((phase, round(x, 3), start, manifest_progress(out), sig.name, hit, round(t_sent - child.t0, 3), child.proc.returncode))
        if not hit:
            continue  # finished first: no instant to count
        if sig == signal.SIGINT and child.proc.returncode == 0 and manifest_progress(out) == ref["total"]:
            continue  # its work done, the process was exiting: the Ctrl-C is ignored (cli.main); none counted
        if sig == signal.SIGINT:
            # Stopped, not finished: exit 130 and the message (no bound on the seconds it took: tests
            # assert no wall-clock time; a job that ignored Ctrl-C would finish and exit 0).
            assert child.proc.returncode == 130, child.stderr
            assert "--resume" in child.stderr and "Traceback" not in child.stderr, child.stderr
            assert not list(out.glob("*.tmp")), list(out.glob("*.tmp"))
            interrupts += 1
        else:
            kills += 1
        # Whatever instant it was, what the folder lists is intact; anything else is a temporary
        # or unlisted file that the next --resume removes.
        if (out / "manifest.json").exists():
            store = TokenStore(out, allow_incomplete=True)
            assert store.verify() == []
            listed = {s["file"] for s in store.manifest["shards"]} | {"manifest.json", "tokenizer.json"}
            extra = [p.name for p in out.iterdir() if p.name not in listed and not p.name.startswith(".")]
            assert all(n.endswith(".tmp") or re.fullmatch(r"shard_\d{6}\.bin", n) for n in extra), extra
            leftovers += len(extra)
            consistent_states += 1
    assert kills >= 20 and interrupts >= 3, (kills, interrupts, outcomes)
    arrows("tokenize", ref["corpus"], "--out", out, *TOK_ARGS, "--resume")
    assert files_of(out) == ref["files"]  # byte-identical, and nothing else left behind
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".arrows.lock"]
    print(f"\nRELIABILITY tokenize: {kills} kill -9 + {interrupts} Ctrl-C over {ref['shards']} shards, "
          f"{consistent_states} states checked, {leftovers} partial files cleaned by resume")


def test_second_tokenize_into_the_same_folder_is_refused(tmp_path, tok_reference):
    ref = tok_reference
    out = tmp_path / "out"
    first = Child("tokenize", ref["corpus"], "--out", out, *TOK_ARGS)
    first.wait_until(lambda: (out / "manifest.json").exists())
    # Held still (with its lock) while the others try: on a loaded machine it could finish before
    # they had even started, and the plain one was then told the folder is not empty.
    first.proc.send_signal(signal.SIGSTOP)
    try:
        # Three at once: plain, --resume and --force (which would delete the first one's files).
        seconds = [subprocess.Popen([str(ARROWS), "tokenize", str(ref["corpus"]), "--out", str(out), *TOK_ARGS, *extra],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra in ([], ["--resume"], ["--force"])]
        for p in seconds:
            _, err = p.communicate(timeout=120)
            user_error(subprocess.CompletedProcess(p.args, p.returncode, "", err), "another arrows process", code=1)
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert first.proc.wait(timeout=300) == 0, first.stderr
    assert files_of(out) == ref["files"]


# ------------------------------------------------------------------------------------------------
# a full disk


@contextmanager
def small_filesystem(path: Path, size: int):
    """A tmpfs of `size` bytes mounted at `path`, or None where this process may not mount one."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of `folder` but `leave` bytes; returns the ballast file."""
    ballast = folder / "ballast"
    st = os.statvfs(folder)
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return ballast


def test_tokenize_on_a_full_disk_fails_clearly_and_resumes(tmp_path, tok_reference):
    ref = tok_reference
    size = sum(len(b) for b in ref["files"].values())
    with small_filesystem(tmp_path / "fs", size + (4 << 20)) as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here (the file-size-limit variant is in test_tokenize_cli.py)")
        ballast = fill(fs, size // 2)
        out = fs / "out"
        proc = arrows("tokenize", ref["corpus"], "--out", out, *TOK_ARGS, check=False)
        user_error(proc, "No space left on device", code=1)
        assert re.search(r"(shard_\d+\.bin|manifest\.json|tokenizer\.json)(\.tmp)?: No space", proc.stderr), proc.stderr
        assert not list(out.glob("*.tmp"))
        assert TokenStore(out, allow_incomplete=True).verify() == []
        ballast.unlink()  # space is freed
        arrows("tokenize", ref["corpus"], "--out", out, *TOK_ARGS, "--resume")
        assert files_of(out) == ref["files"]


# ------------------------------------------------------------------------------------------------
# train: a tiny CPU run, and what it logs


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    text = tmp / "en.txt"
    text.write_text(random_text(SEED, 200_000), encoding="utf-8")
    arrows("tokenize", text, "--out", tmp / "store", "--vocab-size", "512", "--shard-bytes", "40KB")
    return tmp / "store"


def train_config(path: Path, store: Path, run_name: str, save_loc: Path, **training) -> Path:
    cfg = {
        "model_params": {"n_layers": 1, "n_heads": 2, "embed_dim": 16, "attn_length": 16, "mlp_ratio": 2.0, "dropout": 0.1,
                         "embd_dropout": None, "vocab_size": 512},
        "training_params": {"dataset_folder": str(store), "batch_size": 4, "aggregate": 1, "backwards": False, "steps_to_train": 40,
                            "save_every": 3, "backup_every": 20, "step_log": 1, "valid_every": 10, "valid_batches": 2, "sample_every": 10,
                            "sample_tokens": 8, "threads": 1, "state_save_loc": str(save_loc), "run_name": run_name, **training},
        "optim_params": {"lr": 3e-3, "warmup_steps": 5, "oscil_steps": 1000, "lr_shrink": 0.85, "lr_init": 1e-7, "lr_min": 1e-6},
    }
    path.write_text(json.dumps(cfg))
    return path


def logged(run: Path) -> list[dict]:
    """What a run logged, but wall-clock measurements: these must not depend on crashes."""
    from arrows.metrics import read

    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in read(run)]


def samples(run: Path) -> list[str]:
    return (run / "samples.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory, train_store):
    """The uninterrupted run, and how long its start-up took (until the first step)."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = train_config(tmp / "c.json", train_store, "reference", tmp / "runs")
    child = Child("train", cfg, "--device", "cpu")
    child.wait_until(lambda: child.step is not None)
    startup = time.monotonic() - child.t0
    assert child.proc.wait(timeout=300) == 0, child.stderr
    child.reader.join(timeout=10)
    run = tmp / "runs" / "reference"
    return {"run": run, "logged": logged(run), "samples": samples(run), "startup": startup,
            "ckpt_bytes": (run / "checkpoints" / "latest.pt").stat().st_size}


def no_partial_files(run: Path):
    assert not [p for p in run.rglob("*.tmp")], list(run.rglob("*.tmp"))


def test_train_survives_kill_9_and_ctrl_c_at_random_instants(tmp_path, train_store, train_reference):
    from arrows import checkpoint

    ref = train_reference
    rng = random.Random(SEED + 1)
    # 2 instants in the start-up (imports, model, checkpoint loading), 10 kill -9 and 2 Ctrl-C
    # over steps 0-34 of 40, one in each twelfth of that span (spread over the run, whatever the
    # seed), each at a random point within its step (logging, validation, sampling, checkpoint
    # writing, the next step's computation). Every attempt starts a process (seconds of imports):
    # 24 attempts made this the slowest test of CI (100 s).
    plan = [("startup", rng.uniform(0.3, 1.0) * ref["startup"], signal.SIGKILL) for _ in range(2)]
    span = 34 / 12  # the run ends at 40: leave it time to be killed
    steps = [rng.uniform(i * span, (i + 1) * span) for i in range(12)]
    # Ctrl-C in the first two thirds: on a loaded machine this test may read the step lines late,
    # and a run that reached step 40 first had ended before its Ctrl-C (1 interrupt of 2 counted).
    # One Ctrl-C and one SIGTERM: each stops the run after its step, with a checkpoint of it.
    sigint_at, sigterm_at = rng.sample(range(8), 2)
    plan += [("step", s, {sigint_at: signal.SIGINT, sigterm_at: signal.SIGTERM}.get(i, signal.SIGKILL)) for i, s in enumerate(steps)]
    cfg = train_config(tmp_path / "c.json", train_store, "killed", tmp_path / "runs")
    run = tmp_path / "runs" / "killed"
    kills, interrupts, resumed_from, outcomes = 0, 0, [], []
    for phase, x, sig in plan:
        child = Child("train", cfg, "--device", "cpu")
        if phase == "startup":  # at x seconds, or at the first step if the start-up was quicker
            child.wait_until(lambda: child.step is not None or time.monotonic() - child.t0 >= x)
        elif child.wait_until(lambda: child.step is not None and child.step >= int(x) and len(child.step_times) >= 2):
            # a fraction of a step (as long as this attempt's last one took) after the report
            time.sleep((x - int(x)) * (child.step_times[-1] - child.step_times[-2]))
        hit = child.stop(sig)
        outcomes.append((phase, round(x, 2), sig.name, hit, child.step, child.proc.returncode))
        if not hit:  # the process had ended: say how, should the counts below fall short
            outcomes.append(child.stderr[-300:])
            continue
        latest = run / "checkpoints" / "latest.pt"
        if sig != signal.SIGKILL:
            assert child.proc.returncode == 130, child.stderr  # stopped, not finished (no bound on the seconds)
            said = " ".join(child.stderr.split())
            # The step it reached is saved: at a start-up instant, or inside a checkpoint's writing,
            # that may be the last checkpoint's step.
            step = checkpoint.load(latest)["step"]
            by = " by SIGTERM" if sig == signal.SIGTERM else ""
            assert f"interrupted{by} at step {step}; its checkpoint is saved in {latest}: run the same command" in said, said
            assert "Traceback" not in child.stderr, child.stderr
            no_partial_files(run)
            interrupts += 1
        else:
            kills += 1
        if latest.exists():
            resumed_from.append(checkpoint.load(latest)["step"])  # never torn
    assert kills >= 10 and interrupts == 2, (kills, interrupts, outcomes)
    killed_at = [o[4] for o in outcomes if isinstance(o, tuple) and o[0] == "step" and o[3]]
    assert len(set(killed_at)) >= 8 and min(killed_at) <= 5 and max(killed_at) >= 30, killed_at  # spread over the run
    arrows("train", cfg, "--device", "cpu")
    assert logged(run) == ref["logged"]  # losses, learning rates, gradient norms, validation: exact
    assert samples(run) == ref["samples"]
    no_partial_files(run)
    print(f"\nRELIABILITY train: {kills} kill -9 + {interrupts} Ctrl-C, during steps {sorted(set(killed_at))}, "
          f"checkpoints found at steps {sorted(set(resumed_from))}")


def copy_run_stopped_at_step_20(reference: Path, to: Path) -> Path:
    """The reference run as it was at step 20: its backup of step 20 as the latest checkpoint (the
    later metrics are dropped on resume)."""
    shutil.copytree(reference, to)
    shutil.copy(to / "checkpoints" / "step_00000020.pt", to / "checkpoints" / "latest.pt")
    (to / "checkpoints" / "step_00000040.pt").unlink()
    (to / "summary.json").unlink()
    return to


@pytest.mark.parametrize("how", ["file-size limit", "tmpfs"])
def test_train_on_a_full_disk_fails_clearly_and_resumes(tmp_path, train_store, train_reference, how):
    import resource

    from arrows import checkpoint

    ref = train_reference

    def run_it(cfg, limit=None):
        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.run([str(ARROWS), "train", str(cfg), "--device", "cpu"], capture_output=True, text=True,
                              preexec_fn=preexec if limit else None, timeout=300)

    with small_filesystem(tmp_path / "fs", 4 << 20) if how == "tmpfs" else nullcontext() as fs:
        if how == "tmpfs" and fs is None:
            pytest.skip("cannot mount a tmpfs here")
        save_loc = fs if fs is not None else tmp_path / "runs"
        run = copy_run_stopped_at_step_20(ref["run"], save_loc / "full")
        cfg = train_config(tmp_path / "c.json", train_store, "full", save_loc)
        if how == "tmpfs":
            ballast = fill(fs, ref["ckpt_bytes"] // 2)  # the next checkpoint does not fit
            proc = run_it(cfg)
            user_error(proc, "No space left on device", code=1)
        else:
            proc = run_it(cfg, limit=ref["ckpt_bytes"] // 2)  # every file may grow to half a checkpoint
            user_error(proc, "File too large", code=1)
        assert "latest.pt" in proc.stderr and "intact" in proc.stderr, proc.stderr
        no_partial_files(run)
        assert checkpoint.load(run / "checkpoints" / "latest.pt")["step"] == 20  # the last checkpoint is whole
        if how == "tmpfs":
            ballast.unlink()  # space is freed
        proc = run_it(cfg)
        assert proc.returncode == 0, proc.stderr
        assert logged(run) == ref["logged"] and samples(run) == ref["samples"]
        no_partial_files(run)


def test_a_finished_run_on_a_read_only_disk_is_left_as_it_is(tmp_path, train_store, train_reference):
    # A finished run folder on a read-only mount (copied off a cluster, a colleague's results):
    # training it again failed with ".lock: Read-only file system" instead of "nothing to do".
    with small_filesystem(tmp_path / "fs", 4 << 20) as fs:
        if fs is None:
            pytest.skip("cannot mount a tmpfs here")
        shutil.copytree(train_reference["run"], fs / "reference")
        (fs / "reference" / ".lock").unlink()  # as a copy without the hidden file
        cfg = train_config(tmp_path / "c.json", train_store, "reference", fs)
        assert subprocess.run(["mount", "-o", "remount,ro", str(fs)]).returncode == 0
        proc = arrows("train", cfg, "--device", "cpu", check=False, timeout=300)
        assert proc.returncode == 0 and "nothing to do: the run is already at step 40" in proc.stdout, proc.stderr
        proc = arrows("train", cfg, "--device", "cpu", "--more", "2", check=False, timeout=300)
        user_error(proc, "config.json", "Read-only file system", code=1)  # anything it would write is named


def test_second_train_into_the_same_run_is_refused(tmp_path, train_store, train_reference):
    # A longer run than the reference's (the same schedule, data and seeds): its first 40 steps
    # are the reference's. Far longer than the test waits: on a loaded machine this process may
    # read the run's "step N" lines seconds late, and a run of 400 steps had ended by then.
    cfg = train_config(tmp_path / "c.json", train_store, "busy", tmp_path / "runs", steps_to_train=100_000)
    first = Child("train", cfg, "--device", "cpu")
    first.wait_until(lambda: first.step is not None)
    for extra in ([], ["--resume", "never"]):
        proc = arrows("train", cfg, "--device", "cpu", *extra, check=False)
        user_error(proc, "another arrows train is running", code=1)
        assert first.alive(), "the first run ended before the second was refused"
    first.wait_until(lambda: first.step >= 41)
    assert first.stop(signal.SIGINT) and first.proc.returncode == 130, first.stderr
    run = tmp_path / "runs" / "busy"
    assert [r for r in logged(run) if r["step"] <= 40] == train_reference["logged"]


# SIGTERM at step 5 (0-based step 4), then SIGTERM again at REPEAT_AT: once training has stopped, or
# while the command prints its message.
REPEATED_SIGTERM = """
import os, signal
from arrows import cli, train

_step, _restore, _err = train.Trainer._train_step, train._StopRequest.restore, cli._err

def _train_step(self, batches):
    if self.step == 4:
        os.kill(os.getpid(), signal.SIGTERM)
    return _step(self, batches)

def restore(self):
    _restore(self)
    if os.environ["REPEAT_AT"] == "stopped":
        os.kill(os.getpid(), signal.SIGTERM)

def _say(message):
    if os.environ["REPEAT_AT"] == "message":
        os.kill(os.getpid(), signal.SIGTERM)
    _err(message)

train.Trainer._train_step, train._StopRequest.restore, cli._err = _train_step, restore, _say
"""


@pytest.mark.parametrize("repeat_at", ["stopped", "message"])
def test_sigterm_repeated_while_the_run_stops_changes_nothing(tmp_path, train_store, repeat_at):
    # Repeated SIGTERMs are common: the kernel sends the parent-death signal once per thread of the
    # dying parent (torchrun killed with -9 sent its processes 1 to 3 over 100 ms), a user types
    # `kill` twice. A repeat that came after training had stopped interrupted the end of the
    # command: typer made that interrupt a silent exit 130, and the message saying where the run
    # stands was lost (or, before the message, replaced by a bare "interrupted").
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(REPEATED_SIGTERM)
    cfg = train_config(tmp_path / "c.json", train_store, "r", tmp_path / "runs", save_every=50, backup_every=None)
    proc = arrows("train", cfg, "--device", "cpu", check=False, timeout=300,
                  env={"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "REPEAT_AT": repeat_at})
    assert proc.returncode == 130, proc.stderr
    said = " ".join(proc.stderr.split())
    assert said.count("SIGTERM: stopping after this step, with a checkpoint of it") == 1, proc.stderr
    assert said.count("interrupted by SIGTERM at step 5; its checkpoint is saved in") == 1 and "Traceback" not in said, proc.stderr
    from arrows import checkpoint

    assert checkpoint.saved_step(tmp_path / "runs" / "r" / "checkpoints" / "latest.pt") == 5


# ------------------------------------------------------------------------------------------------
# damaged or mixed-up data and checkpoints


@pytest.fixture(scope="module")
def small_stores(tmp_path_factory):
    """Two stores of different texts and tokenizers, 6+ shards each."""
    tmp = tmp_path_factory.mktemp("stores")
    for name, seed in (("a", 1), ("b", 2)):
        text = tmp / f"{name}.txt"
        text.write_text(random_text(SEED + seed, 120_000), encoding="utf-8")
        arrows("tokenize", text, "--out", tmp / name, "--vocab-size", "300" if name == "a" else "400", "--shard-bytes", "20KB")
    return tmp


DAMAGES = ["flipped token byte", "flipped header byte", "truncated shard", "shard from another run", "manifest from another run",
           "cut manifest", "tokenizer from another run", "missing shard"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_store_is_named_and_never_trained_on(tmp_path, small_stores, damage):
    from arrows.errors import ArrowsError

    store = tmp_path / "store"
    shutil.copytree(small_stores / "a", store)
    other = small_stores / "b"
    shard = store / "shard_000003.bin"
    named = shard.name
    data = bytearray(shard.read_bytes())
    if damage == "flipped token byte":
        data[64 + 101] ^= 0x10
        shard.write_bytes(data)
    elif damage == "flipped header byte":
        data[20] ^= 0x01
        shard.write_bytes(data)
    elif damage == "truncated shard":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "shard from another run":
        shutil.copy(other / shard.name, shard)
    elif damage == "manifest from another run":
        shutil.copy(other / "manifest.json", store / "manifest.json")
        named = "shard_000000.bin"
    elif damage == "cut manifest":
        m = (store / "manifest.json").read_bytes()
        (store / "manifest.json").write_bytes(m[: len(m) // 2])
        named = "manifest.json"
    elif damage == "tokenizer from another run":
        shutil.copy(other / "tokenizer.json", store / "tokenizer.json")
        named = "tokenizer.json"
    else:
        shard.unlink()

    # inspect --verify names the file (exit 1)
    proc = arrows("inspect", store, "--verify", check=False)
    user_error(proc, named, code=1)
    # the Python loader: header, size and manifest problems on opening; a flipped token byte and
    # a foreign tokenizer pass the opening checks (they need the checksums: TokenStore.verify)
    light = damage in ("flipped token byte", "tokenizer from another run")
    if light:
        assert TokenStore(store).verify()
    else:
        with pytest.raises((ArrowsError, OSError), match=re.escape(named)):
            TokenStore(store)
    # arrows train verifies every checksum first, and trains on nothing
    cfg = train_config(tmp_path / "c.json", store, "r", tmp_path / "runs", steps_to_train=5)
    proc = arrows("train", cfg, "--device", "cpu", check=False)
    user_error(proc, named, code=1)
    assert not (tmp_path / "runs" / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_damaged_checkpoint_is_named_with_its_backup(tmp_path, train_store, train_reference, damage):
    run = copy_run_stopped_at_step_20(train_reference["run"], tmp_path / "runs" / "damaged")
    latest = run / "checkpoints" / "latest.pt"
    data = bytearray(latest.read_bytes())
    if damage == "truncated":
        latest.write_bytes(data[: len(data) * 2 // 3])
    else:
        data[len(data) // 3] ^= 0x04  # inside a tensor: torch.load alone would not notice
        latest.write_bytes(data)
    cfg = train_config(tmp_path / "c.json", train_store, "damaged", tmp_path / "runs")
    proc = arrows("train", cfg, "--device", "cpu", check=False)
    backup = run / "checkpoints" / "step_00000020.pt"
    user_error(proc, "latest.pt", "damaged checkpoint", f"--resume {backup}", code=1)
    if damage == "flipped byte":  # the advice works: the backup resumes to the uninterrupted run
        arrows("train", cfg, "--device", "cpu", "--resume", backup)
        assert logged(run) == train_reference["logged"]


# ------------------------------------------------------------------------------------------------
# bad inputs to tokenize


def tokenize_bytes(tmp_path, *inputs, extra=(), **kw):
    return arrows("tokenize", *inputs, "--out", tmp_path / "out", "--tokenizer", "bytes", *extra, **kw)


def stream_is(out: Path, raw: bytes):
    assert np.array_equal(TokenStore(out)[:], np.frombuffer(raw, dtype=np.uint8).astype(np.int64) + 1)


def test_binary_input_is_flagged_and_refused_when_strict(tmp_path):
    binary = tmp_path / "photo.txt"
    binary.write_bytes(random.Random(SEED).randbytes(200_000))
    proc = tokenize_bytes(tmp_path, binary)
    assert "binary file" in proc.stderr and "--strict-utf8" in proc.stderr
    proc = tokenize_bytes(tmp_path, binary, extra=["--strict-utf8", "--force"], check=False)
    user_error(proc, "photo.txt", "byte offset", code=1)


def test_nul_bytes_and_invalid_utf8_are_data(tmp_path):
    raw = b"a\x00b\x00\x00 c" * 1000 + b"\x00" * 10_000
    (tmp_path / "nul.txt").write_bytes(raw)
    tokenize_bytes(tmp_path, tmp_path / "nul.txt")
    stream_is(tmp_path / "out", raw)  # NUL is valid UTF-8: kept as it is


def test_a_1gb_line_without_newline(tmp_path):
    big = tmp_path / "line.txt"
    block = random_text(SEED, 1_000_000, specials=False).replace("\n", " ").replace("\r", " ").encode()
    with open(big, "wb") as f:
        for _ in range(1000):
            f.write(block)
    tokenize_bytes(tmp_path, big, extra=["--shard-bytes", "256MB"])
    store = TokenStore(tmp_path / "out")
    assert len(store) == 1000 * len(block) and "\n" not in block.decode()
    for at in (0, 123_456_789, len(store) - 1000):
        k = at % len(block)
        want = (block + block)[k : k + 1000]
        assert np.array_equal(store[at : at + 1000], np.frombuffer(want, dtype=np.uint8) + 1)
    del store
    big.unlink()  # 3 GB: not left for pytest's kept temporary folders
    shutil.rmtree(tmp_path / "out")


def test_a_64mb_word_without_any_whitespace(tmp_path):
    (tmp_path / "word.txt").write_bytes(b"ab" * 32_000_000)
    tokenize_bytes(tmp_path, tmp_path / "word.txt")
    store = TokenStore(tmp_path / "out")
    assert len(store) == 64_000_000 and store[0] == ord("a") + 1 and store[-1] == ord("b") + 1


def test_100k_tiny_files(tmp_path):
    """More files than the system's limit on memory maps (vm.max_map_count, often 65,530)."""
    corpus = tmp_path / "many"
    corpus.mkdir()
    raw = []
    for i in range(100_000):
        data = b"" if i % 7 == 0 else b"w%d " % i
        raw.append(data)
        (corpus / f"{i:06d}.txt").write_bytes(data)
    tokenize_bytes(tmp_path, corpus)
    stream_is(tmp_path / "out", b"".join(raw))
    assert len(TokenStore(tmp_path / "out").manifest["inputs"]) == 100_000


def _drop_dac_capabilities():
    """As root, give up the capabilities that let root read any file (for this process and what it
    executes), so that permissions apply as they do to a user."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


def test_unreadable_file_and_folder_are_named(tmp_path):
    (tmp_path / "ok.txt").write_text("fine text")
    secret = tmp_path / "secret.txt"
    secret.write_text("no access")
    secret.chmod(0)
    folder = tmp_path / "folder"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.txt").write_text("x")
    (folder / "locked").chmod(0)
    preexec = _drop_dac_capabilities if os.geteuid() == 0 else None
    try:
        for inputs, name, why in (([tmp_path / "ok.txt", secret], "secret.txt", "is not readable"), ([folder], "locked", "Permission denied")):
            proc = subprocess.run([str(ARROWS), "tokenize", *map(str, inputs), "--out", str(tmp_path / "out"), "--tokenizer", "bytes", "--force"],
                                  capture_output=True, text=True, preexec_fn=preexec, timeout=120,
                                  env={**os.environ, "COLUMNS": "1000"})  # typer's box would cut a long path in two
            if proc.returncode == 97:
                pytest.skip("running as root without the right to drop capabilities: files cannot be made unreadable")
            user_error(proc, name, why)
    finally:
        (folder / "locked").chmod(0o755)


def test_symlink_loops(tmp_path):
    (tmp_path / "loop_a.txt").symlink_to(tmp_path / "loop_b.txt")
    (tmp_path / "loop_b.txt").symlink_to(tmp_path / "loop_a.txt")
    proc = tokenize_bytes(tmp_path, tmp_path / "loop_a.txt", check=False)
    user_error(proc, "loop_a.txt", "symbolic links", code=1)
    # a folder that contains a link back to itself: each file is read once
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first ")
    (folder / "sub" / "b.txt").write_text("second")
    (folder / "sub" / "back").symlink_to(folder)
    tokenize_bytes(tmp_path, folder)
    stream_is(tmp_path / "out", b"first second")


def test_paths_with_spaces_and_non_ascii_names(tmp_path):
    folder = tmp_path / "mes données" / "été 2026"
    folder.mkdir(parents=True)
    (folder / "naïve café 日本.txt").write_text("text café ", encoding="utf-8")
    (folder / "second file.txt").write_text("more", encoding="utf-8")
    out = tmp_path / "sortie ü"
    arrows("tokenize", folder.parent, "--out", out, "--tokenizer", "bytes")
    arrows("tokenize", folder.parent, "--out", out, "--tokenizer", "bytes", "--resume")
    assert "verified" in arrows("inspect", out, "--verify").stdout
    stream_is(out, "text café more".encode())
    assert Path(TokenStore(out).manifest["inputs"][0]["path"]).name == "naïve café 日本.txt"


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--resume", "--force"], ["contradict"]),
        (["--tokenizer", "bytes", "--vocab-size", "50257"], ["--vocab-size", "--tokenizer"]),
        (["--vocab-size", "-5"], ["--vocab-size"]),
        (["--vocab-size", "99999999999999999999"], ["--vocab-size"]),
        (["--threads", "-1"], ["--threads"]),
        (["--threads", "100000"], ["--threads"]),
        (["--seed", "-1"], ["--seed"]),
        (["--shard-bytes", "0"], ["--shard-bytes", "positive"]),
        (["--shard-bytes", "-3MB"], ["--shard-bytes", "not a size"]),
        (["--shard-bytes", "18446744073709551615"], ["--shard-bytes", "too large"]),
        (["--sample-bytes", "99999999999999999999999GB"], ["--sample-bytes", "too large"]),
        (["--sample-bytes", "lots"], ["--sample-bytes"]),
        (["--out-is-a-file"], ["File exists"]),
        (["--empty-folder"], ["no .txt file"]),
    ],
)
def test_bad_tokenize_flags(tmp_path, extra, needles):
    text = tmp_path / "t.txt"
    text.write_text("some words " * 100)
    out = tmp_path / "out"
    inputs = [text]
    if extra == ["--out-is-a-file"]:
        out.write_text("I am a file")
        extra = ["--tokenizer", "bytes"]
    if extra == ["--empty-folder"]:
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.md").write_text("not text")
        inputs, extra = [tmp_path / "empty"], ["--tokenizer", "bytes"]
    proc = arrows("tokenize", *inputs, "--out", out, *extra, check=False, timeout=60)
    user_error(proc, *needles)


# ------------------------------------------------------------------------------------------------
# bad configs and flags to train (and generate)


@pytest.mark.parametrize(
    "edit, needles",
    [
        (lambda c: c["training_params"].update(batch_size="16"), ["training_params.batch_size"]),
        (lambda c: c["training_params"].update(batch_size=-4), ["training_params.batch_size"]),
        (lambda c: c["model_params"].update(attn_length=-1), ["model_params.attn_length"]),
        (lambda c: c["model_params"].update(embed_dim=0), ["model_params.embed_dim"]),
        (lambda c: c["optim_params"].update(lr=-1e-3), ["optim_params.lr"]),
        (lambda c: c["training_params"].update(bacth_size=4), ["bacth_size", "batch_size"]),
        (lambda c: c.update(extra_section={}), ["extra_section"]),
        (lambda c: c["model_params"].update(vocab_size=100), ["vocab_size", "512"]),
        (lambda c: c["training_params"].update(dataset_folder="/no/such/store"), ["/no/such/store"]),
        (lambda c: c.clear(), ["model_params"]),
        ("[1, 2]", ["JSON object"]),
        ("{ not json", ["not valid JSON"]),
    ],
)
def test_bad_train_configs(tmp_path, train_store, edit, needles):
    cfg = train_config(tmp_path / "c.json", train_store, "x", tmp_path / "runs")
    if isinstance(edit, str):
        cfg.write_text(edit)
    else:
        data = json.loads(cfg.read_text())
        edit(data)
        cfg.write_text(json.dumps(data))
    proc = arrows("train", cfg, "--device", "cpu", check=False, timeout=120)
    user_error(proc, *needles, code=1)


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--gpus", "0,1", "--nproc", "2"], ["--gpus", "--nproc"]),
        (["--gpus", "0", "--device", "cpu"], ["--gpus", "--device cpu"]),
        (["--gpus", "a,b"], ["--gpus", "a,b"]),
        (["--gpus", "0,0"], ["--gpus"]),
        (["--device", "tpu"], ["--device", "tpu"]),
        (["--nproc", "0"], ["--nproc"]),
        (["--more", "-5"], ["--more"]),
        (["--more", "5", "--steps", "10"], ["--more", "--steps"]),
        (["--steps", "-3"], ["steps_to_train"]),
        (["--resume", "nope.pt"], ["nope.pt", "no such checkpoint"]),
        (["--resume", "Never"], ["Never", "no such checkpoint", "auto, never or a checkpoint file"]),
        (["--resume", "."], ["--resume .: a folder; give a checkpoint file"]),  # was "no such checkpoint"
        (["--model", "rnn"], ["model_type", "rnn"]),
    ],
)
def test_bad_train_flags(tmp_path, train_store, flags, needles):
    cfg = train_config(tmp_path / "c.json", train_store, "x", tmp_path / "runs")
    proc = arrows("train", cfg, *flags, check=False, timeout=120)
    user_error(proc, *needles)


def test_a_file_where_the_run_folder_goes_is_named(tmp_path, train_store):
    # Making the folder failed with a bare "File exists", and --dry-run passed.
    cfg = train_config(tmp_path / "c.json", train_store, "x", tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    for blocker in (tmp_path / "runs" / "x", tmp_path / "runs"):  # the run folder, then save_loc
        if blocker.is_dir():
            blocker.rmdir()
        blocker.write_text("a file")
        for dry in ([], ["--dry-run"]):
            proc = arrows("train", cfg, "--device", "cpu", *dry, check=False, timeout=120)
            user_error(proc, f"{blocker}: a file, where the run folder", "save_loc or run_name", code=1)
        blocker.unlink()


@pytest.mark.parametrize("inside", ["checkpoints", "tensorboard"])
def test_a_file_where_the_run_keeps_a_folder_is_named_before_training(tmp_path, train_store, inside):
    # A file named `checkpoints` in the run folder was found at the first save (after save_every
    # steps), `tensorboard` at the first record; --dry-run passed.
    cfg = train_config(tmp_path / "c.json", train_store, "x", tmp_path / "runs")
    blocker = tmp_path / "runs" / "x" / inside
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file")
    dry = ["--dry-run"] if inside == "tensorboard" else []  # the same check_run_folder, at the start of both
    proc = arrows("train", cfg, "--device", "cpu", *dry, check=False, timeout=120)
    user_error(proc, f"{blocker}: a file, where the run keeps its {inside} (a folder); move the file away", code=1)
    assert not (blocker.parent / "metrics.jsonl").exists()


def test_a_link_to_nothing_where_the_run_folder_goes_is_named(tmp_path, train_store):
    # save_loc a link to a scratch disk not mounted (or a folder since removed): making the run
    # folder failed with a bare "File exists", and --dry-run passed.
    cfg = train_config(tmp_path / "c.json", train_store, "x", tmp_path / "runs")
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted" / "runs")
    for dry in ([], ["--dry-run"]):
        proc = arrows("train", cfg, "--device", "cpu", *dry, check=False, timeout=120)
        user_error(proc, f"{tmp_path / 'runs'}: a symbolic link to {tmp_path / 'unmounted' / 'runs'}, which does not exist", "save_loc", code=1)
    assert not (tmp_path / "unmounted").exists()


def test_a_run_folder_that_is_the_token_store_is_refused(tmp_path, train_store):
    # save_loc/run_name the store itself: the run wrote its copy of the tokenizer over the store's,
    # re-serialized with another hash, and the store was refused as damaged from then on.
    store = tmp_path / "data" / "en"
    shutil.copytree(train_store, store)
    before = files_of(store)
    (tmp_path / "link").symlink_to(tmp_path / "data")  # the same folder by another path
    cfg = train_config(tmp_path / "c.json", store, "en", tmp_path / "link")
    for dry in (["--dry-run"], []):
        proc = arrows("train", cfg, "--device", "cpu", *dry, check=False, timeout=120)
        user_error(proc, "is the token store it trains on", "save_loc or run_name", code=1)
    assert files_of(store) == before


def test_gpus_without_cuda_is_a_clear_error(tmp_path, train_store):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = train_config(tmp_path / "c.json", train_store, "x", tmp_path / "runs")
    for flags in (["--gpus", "0"], ["--device", "cuda"]):
        proc = arrows("train", cfg, *flags, check=False, timeout=120)
        user_error(proc, "no CUDA device", code=1)


@pytest.mark.parametrize("flags, needle", [(["--top-k", "0"], "--top-k"), (["--temperature", "nan"], "--temperature"),
                                           (["--temperature", "-1"], "--temperature"), (["--tokens", "-3"], "--tokens")])
def test_bad_generate_flags(train_reference, flags, needle):
    proc = arrows("generate", train_reference["run"], *flags, check=False, timeout=120)
    user_error(proc, needle)


def test_generate_at_temperature_0_takes_the_most_likely_token(train_reference):
    # As the library does (and as the convention goes): 0 is greedy, whatever the seed.
    greedy = [arrows("generate", train_reference["run"], "-n", "30", "--temperature", "0", "--seed", s, timeout=120).stdout for s in ("1", "2")]
    top_1 = arrows("generate", train_reference["run"], "-n", "30", "--top-k", "1", timeout=120).stdout
    assert greedy[0] == greedy[1] == top_1


def test_an_error_naming_markup_like_text_is_printed_as_text(tmp_path):
    # Messages are text, not rich markup: a "[/...]" in one (gloo's errors name their source file
    # so, a path may hold it) made the error printer itself raise, with its traceback.
    cfg = train_config(tmp_path / "c.json", tmp_path / "no[/such]" / "store", "x", tmp_path / "runs")
    proc = arrows("train", cfg, "--dry-run", check=False, timeout=120)
    user_error(proc, "no[/such]")
