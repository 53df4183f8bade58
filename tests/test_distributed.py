"""Multi-process training on CPU (gloo) when something goes wrong: a process killed, a crash in one
process, Ctrl-C to the whole process group or to the launching process alone. The run must end
(never wait forever for a process that is gone), say what happened and how to continue, and resume
to the losses of the uninterrupted run.

The faults are injected at a chosen step through a `sitecustomize` module on PYTHONPATH, which the
spawned processes import too: the same instant every time, whatever the machine's speed."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ARROWS

pytest.importorskip("torch")

from arrows.metrics import read as read_metrics  # noqa: E402
from test_train import store, write_config  # noqa: E402, F401  (the module's English token store)

STEPS = 16
MODEL = {"n_layers": 1, "n_heads": 2, "embed_dim": 32, "attn_length": 16, "mlp_ratio": 4.0, "dropout": 0.0, "embd_dropout": None}

# At step FAULT_STEP (0-based: before that step runs) of process FAULT_RANK, do FAULT.
FAULT = textwrap.dedent('''
    import os, signal
    from arrows import train

    _step = train.Trainer._train_step

    def _train_step(self, batches):
        if os.environ.get("RANK") == os.environ["FAULT_RANK"] and self.step == int(os.environ["FAULT_STEP"]):
            fault = os.environ["FAULT"]
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault == "crash":
                raise RuntimeError("injected crash")
            elif fault == "crash-long":  # a message larger than a pipe holds (64 KiB), such as a tensor's repr
                raise RuntimeError("injected crash " + "x" * 200_000)
            elif fault == "ctrl-c-group":  # what a terminal's Ctrl-C does: SIGINT to every process
                os.killpg(os.getpgrp(), signal.SIGINT)
            elif fault == "ctrl-c-parent":  # kill -INT of the command, or a notebook's interrupt
                os.kill(os.getppid(), signal.SIGINT)
            elif fault == "ctrl-c-self":  # SIGINT to this process only
                os.kill(os.getpid(), signal.SIGINT)
            elif fault == "kill-command":  # kill -9 of the command (or the system's out-of-memory killer)
                os.kill(os.getppid(), signal.SIGKILL)
            elif fault == "sigterm-group":  # a cluster's preemption, `docker stop`, systemd: every process
                os.killpg(os.getpgrp(), signal.SIGTERM)
            elif fault == "sigterm-parent":  # kill PID of the command
                os.kill(os.getppid(), signal.SIGTERM)
            elif fault == "sigterm-self":  # kill PID of one process (SLURM signals each task of a job step)
                os.kill(os.getpid(), signal.SIGTERM)
            elif fault == "threads":  # not a fault: how many threads the process computes with
                import torch
                with open(os.environ["THREADS_FILE"], "w") as f:
                    f.write(str(torch.get_num_threads()))
        return _step(self, batches)

    train.Trainer._train_step = _train_step
''')


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def config(tmp_path, store, name):  # noqa: F811
    return write_config(tmp_path / f"{name}.json", store, model=MODEL, steps_to_train=STEPS, step_log=1, save_every=3,
                        valid_every=8, run_name=name)


def train_two(cfg, tmp_path, fault=None, rank=1, step=7):
    """`arrows train CFG --device cpu --nproc 2` in a session of its own, with a fault injected."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    if fault:
        hook = tmp_path / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(FAULT)
        env |= {"PYTHONPATH": f"{hook}{os.pathsep}{env.get('PYTHONPATH', '')}", "FAULT": fault, "FAULT_RANK": str(rank), "FAULT_STEP": str(step)}
    proc = subprocess.Popen([str(ARROWS), "train", str(cfg), "--device", "cpu", "--nproc", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)  # a guard: a run that waits forever fails here
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the run did not end: {err[-3000:]}")
    # Nothing of the run is left behind (spawned processes of the same session). multiprocessing's
    # resource tracker ends by itself moments after the command.
    deadline = time.monotonic() + 30
    while (left := subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"
    return proc.returncode, " ".join(err.split())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, store):  # noqa: F811
    """The losses of the uninterrupted two-process run."""
    tmp = tmp_path_factory.mktemp("straight")
    rc, err = train_two(config(tmp, store, "straight"), tmp)
    assert rc == 0, err
    ls = losses(tmp / "runs" / "straight")
    assert len(ls) == STEPS
    return ls


@pytest.mark.parametrize("rank", [0, 1])
def test_a_killed_process_ends_the_run_with_a_message_and_it_resumes(tmp_path, store, straight, rank):  # noqa: F811
    """kill -9 (or the out-of-memory killer) of one process: the others are stopped, the command says
    which process died and how to continue, and the run resumes to the uninterrupted losses."""
    cfg = config(tmp_path, store, "killed")
    rc, err = train_two(cfg, tmp_path, fault="kill", rank=rank, step=7)
    assert rc == 1 and "Traceback" not in err, err
    assert f"process {rank} of 2 was killed by SIGKILL" in err, err
    assert "checkpoints/latest.pt is intact: run the same command to continue" in err, err
    rc, err = train_two(cfg, tmp_path)
    assert rc == 0, err
    assert losses(tmp_path / "runs" / "killed") == straight


def test_the_processes_end_with_the_command_killed(tmp_path, store):  # noqa: F811
    """kill -9 of the command: its processes trained on unseen to the end of the run, writing its
    logs without the run folder's lock, beside any `arrows train` started there again."""
    cfg = write_config(tmp_path / "c.json", store, model=MODEL, steps_to_train=100_000, save_every=3, step_log=1, run_name="orphans")
    started = time.monotonic()
    rc, err = train_two(cfg, tmp_path, fault="kill-command", rank=0, step=4)  # ends when every process has closed its output
    assert rc == -signal.SIGKILL and time.monotonic() - started < 120, err
    assert len(losses(tmp_path / "runs" / "orphans")) < 50, err[-2000:]


def _aborts_at_exit(rank):
    """A process's work, after which process 1 fails in its clean-up at exit."""
    if rank == 1:
        import atexit

        atexit.register(os.abort)
    return f"the result of {rank}"


def test_a_process_that_fails_at_exit_after_its_work_does_not_fail_the_run(monkeypatch, capfd):
    # Seen once at the end of a 2-process run: "terminate called without an active exception" in
    # process 1's clean-up, after the run was complete; the run was reported failed.
    from arrows.distributed import spawn

    monkeypatch.setenv("MASTER_ADDR", "")  # spawn sets them here; restored after the test
    monkeypatch.setenv("MASTER_PORT", "")
    assert spawn(_aborts_at_exit, 2, ()) == "the result of 0"
    assert "note: process 1 of 2 ended with SIGABRT after its work was done, in its clean-up at exit; the run is complete" in \
        " ".join(capfd.readouterr().err.split())


def test_a_crash_in_one_process_names_it_and_stops_the_others(tmp_path, store):  # noqa: F811
    cfg = config(tmp_path, store, "crash")
    rc, err = train_two(cfg, tmp_path, fault="crash", rank=1, step=4)
    assert rc == 1, err
    # The first failure is named with its traceback, not what followed from it in process 0 (gloo's
    # "connection closed"), nor torch.multiprocessing's nested tracebacks.
    assert "process 1 of 2: Traceback" in err and "RuntimeError: injected crash" in err, err
    assert "process 1 of 2 failed with RuntimeError (its traceback is above); the others were stopped." in err, err
    assert "checkpoints/latest.pt is intact: run the same command to continue" in err, err
    assert "process 0 of 2" not in err and "ProcessRaisedException" not in err, err


def test_a_crash_with_a_long_message_does_not_hang_the_run(tmp_path, store):  # noqa: F811
    """The processes report to the launching one through a pipe; a report larger than the pipe holds
    blocked its writer until read, and the launcher read only once every process had ended: both
    processes and the command waited forever."""
    rc, err = train_two(config(tmp_path, store, "long"), tmp_path, fault="crash-long", rank=1, step=4)
    assert rc == 1, err[-3000:]
    assert "RuntimeError: injected crash xxx" in err and "process 1 of 2 failed with RuntimeError" in err, err[-3000:]


# (Ctrl-C to the command alone takes the path of SIGTERM to it: both interrupt its wait.)
@pytest.mark.parametrize("fault", ["ctrl-c-group", "sigterm-group", "sigterm-parent"])
def test_ctrl_c_or_sigterm_stops_every_process_with_a_checkpoint_and_resumes(tmp_path, store, straight, fault):  # noqa: F811
    """Ctrl-C at a terminal reaches every process; `kill -INT` of the command (or a notebook's
    interrupt of `arrows.train.train`) reaches only the launching one, which must stop the others
    rather than leave them training unwatched; SIGTERM (a cluster's preemption, `kill`) the same.
    Either way: exit 130, every process stops after the same step and its checkpoint is saved
    (steps 7 to 9 were trained again: save_every is 3), and the resumed run logs the
    uninterrupted losses."""
    from arrows import checkpoint

    cfg = config(tmp_path, store, "interrupted")
    rc, err = train_two(cfg, tmp_path, fault=fault, rank=0, step=7)
    assert rc == 130 and "Traceback" not in err, err
    saved = checkpoint.saved_step(tmp_path / "runs" / "interrupted" / "checkpoints" / "latest.pt")
    # The request's step (8), or a later one: the command forwards its signal to the processes.
    assert 8 <= saved < STEPS, err
    # "by SIGTERM" where process 0, whose message is shown, was sent SIGTERM itself (not forwarded by the command)
    by = " by SIGTERM" if fault == "sigterm-group" else ""
    assert f"interrupted{by} at step {saved}; its checkpoint is saved in" in err and "run the same command to continue" in err, err
    assert "SIGUSR1" not in err, err  # how the command forwards a request is not the user's business
    logged = losses(tmp_path / "runs" / "interrupted")
    assert len(logged) == saved, "the run went on"
    if fault in ("ctrl-c-group", "sigterm-parent"):  # a resume is a resume, whatever stopped the run: two of them (CI's time)
        rc, err = train_two(cfg, tmp_path)
        assert rc == 0, err
        assert losses(tmp_path / "runs" / "interrupted") == straight


def test_slurm_script_stops_every_task_when_one_fails_and_gives_each_its_cores(tmp_path):
    """cli/launch/slurm.sh as sbatch runs it, with stand-ins for scontrol and srun that record what
    they were given. srun must end the job step when one task fails (else the others wait for it
    in a collective until the timeout), give each task the job's --cpus-per-task (srun does not
    inherit it in every Slurm version), and two jobs must not share a fixed port."""
    from conftest import ROOT

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text('#!/bin/sh\nprintf "node7\\nnode8\\n"\n')
    (bin_ / "srun").write_text('#!/bin/sh\necho "MASTER=$MASTER_ADDR:$MASTER_PORT" > "$SRUN_LOG"\nfor a in "$@"; do echo "$a"; done >> "$SRUN_LOG"\n')
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}

    def submit(job_id):
        log = tmp_path / f"srun_{job_id}.txt"
        subprocess.run(["bash", str(ROOT / "cli" / "launch" / "slurm.sh"), "cfg.json", "--device", "cpu"], check=True, timeout=60,
                       env={**env, "PATH": f"{bin_}{os.pathsep}{env['PATH']}", "SRUN_LOG": str(log), "SLURM_JOB_ID": str(job_id),
                            "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_CPUS_PER_TASK": "8"})
        master, *args = log.read_text().splitlines()
        return master, args

    master, args = submit(4242)
    assert "--kill-on-bad-exit=1" in args and "--cpus-per-task=8" in args, args
    assert args[args.index("arrows"):] == ["arrows", "train", "cfg.json", "--device", "cpu"], args
    other, _ = submit(4243)
    assert master.startswith("MASTER=node7:") and other.startswith("MASTER=node7:") and master != other


def test_slurm_tasks_keep_the_threads_they_were_given(tmp_path, store):  # noqa: F811
    """Each task of a SLURM job step (or torchrun) computes with the threads its launcher gave it:
    arrows divided them by the world size, which counts the tasks of every machine (16 tasks of 8
    cores each computed on one thread), as if it had spawned them all on this machine itself."""
    from arrows.distributed import free_port

    cfg = write_config(tmp_path / "c.json", store, model=MODEL, steps_to_train=2, run_name="slurm")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"PYTHONPATH": f"{hook}{os.pathsep}{env.get('PYTHONPATH', '')}", "FAULT": "threads", "FAULT_STEP": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "SLURM_NTASKS": "2", "OMP_NUM_THREADS": "2"}
    tasks = [subprocess.Popen([str(ARROWS), "train", str(cfg), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "FAULT_RANK": str(i),
                                   "THREADS_FILE": str(tmp_path / f"threads_{i}")})
             for i in range(2)]
    for task in tasks:
        _, err = task.communicate(timeout=300)
        assert task.returncode == 0, err[-3000:]
    assert [(tmp_path / f"threads_{i}").read_text() for i in range(2)] == ["2", "2"]
    # Processes spawned by --nproc share this machine's threads (here OMP_NUM_THREADS) between them.
    env |= {"FAULT_RANK": "1", "THREADS_FILE": str(tmp_path / "threads_spawned")}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([str(ARROWS), "train", str(cfg), "--device", "cpu", "--nproc", "2", "--run-name", "spawned"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "threads_spawned").read_text() == "1"


@pytest.mark.parametrize("launcher", ["slurm", "leftover-torchrun"])
def test_nproc_inside_a_launchers_group_is_refused(tmp_path, store, launcher):  # noqa: F811
    """--nproc where the environment says a launcher started this process as one of a group. In a
    SLURM allocation's own shell (salloc, or the job script outside srun) SLURM_NTASKS and
    SLURM_PROCID are set: the command took itself for task 0 of 4 and waited for three tasks that
    never start; with RANK/WORLD_SIZE=1 left in the environment it trained one process, silently."""
    from arrows.distributed import free_port

    cfg = write_config(tmp_path / "c.json", store, model=MODEL, steps_to_train=2, run_name="x")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and not k.startswith("SLURM_")}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env |= {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"} if launcher == "slurm" else {"RANK": "0", "WORLD_SIZE": "1"}
    for dry in ([], ["--dry-run"]):
        try:
            proc = subprocess.run([str(ARROWS), "train", str(cfg), "--device", "cpu", "--nproc", "2", *dry], capture_output=True,
                                  text=True, env=env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("waited for processes that never start")
        message = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "Traceback" not in message, message
        assert "--nproc 2: this process was started as one of a group by" in message, message
        assert ("SLURM_NTASKS=4" if launcher == "slurm" else "WORLD_SIZE=1") in message, message
    assert not (tmp_path / "runs" / "x" / "checkpoints").exists()


def test_two_torchrun_scripts_on_one_machine_at_once(tmp_path, store):  # noqa: F811
    """cli/launch/torchrun.sh started twice on one machine (two experiments side by side): the
    second failed at once, both claiming port 29500 (EADDRINUSE)."""
    import time

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"GPUS_PER_NODE": "1", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"}
    script = str(ROOT / "cli" / "launch" / "torchrun.sh")
    runs = {}
    for name in ("a", "b"):
        cfg = write_config(tmp_path / f"{name}.json", store, model=MODEL, steps_to_train=60, run_name=name)
        runs[name] = subprocess.Popen(["bash", script, str(cfg), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env)
        deadline = time.monotonic() + 120
        while name == "a" and not (tmp_path / "runs" / "a" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the first one is training, its port taken, when the second starts
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_sigterm_or_kill_9_to_torchrun_stops_its_processes_with_a_checkpoint_said_once(tmp_path, store, sig):  # noqa: F811
    """torchrun passes a SIGTERM on to its processes (a cluster's preemption of the job): they stop
    after the same step and save it, and the message says so once (each process printed it).
    torchrun killed with SIGKILL cannot pass anything on: its processes trained on, unseen, to the
    end of the run (100,000 steps here); its death now reaches them as SIGTERM."""
    import time

    from arrows import checkpoint
    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"GPUS_PER_NODE": "2", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"}
    cfg = write_config(tmp_path / "c.json", store, model=MODEL, steps_to_train=100_000, save_every=50_000, step_log=5, run_name="r")
    proc = subprocess.Popen(["bash", str(ROOT / "cli" / "launch" / "torchrun.sh"), str(cfg), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)  # to torchrun (the script exec's it)
    _, err = proc.communicate(timeout=120)  # ends when the processes, which share its stderr, have ended
    step = checkpoint.saved_step(tmp_path / "runs" / "r" / "checkpoints" / "latest.pt")
    assert step is not None and step >= 10, err[-3000:]
    said = " ".join(err.split())
    assert said.count(f"interrupted by SIGTERM at step {step}; its checkpoint is saved in") == 1, err[-3000:]


@pytest.mark.parametrize("visible, procs", [(None, "8"), ("2,3", "2"), ("", None)])
def test_torchrun_script_starts_one_process_per_gpu_the_job_may_use(tmp_path, visible, procs):
    """cli/launch/torchrun.sh with stand-ins for nvidia-smi (8 GPUs, one split into MIG instances)
    and torchrun. nvidia-smi ignores CUDA_VISIBLE_DEVICES: on a machine shared with
    CUDA_VISIBLE_DEVICES=2,3 the script started 8 processes, 6 of them without a GPU, and a MIG
    instance's line counted as one more GPU."""
    from conftest import ROOT

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    gpus = "".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i})\\n" for i in range(8))
    (bin_ / "nvidia-smi").write_text(f'#!/bin/sh\nprintf "{gpus}  MIG 3g.71gb Device 0: (UUID: MIG-0)\\n"\n')
    (bin_ / "torchrun").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("GPUS_PER_NODE", "NNODES", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
    env |= {"PATH": f"{bin_}{os.pathsep}{env['PATH']}"} | ({} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
    proc = subprocess.run(["bash", str(ROOT / "cli" / "launch" / "torchrun.sh"), "cfg.json"], capture_output=True, text=True,
                          env=env, timeout=60)
    if procs is None:
        assert proc.returncode == 2 and "no GPU found (CUDA_VISIBLE_DEVICES='' names none)" in proc.stderr, proc.stderr
    else:
        args = proc.stdout.splitlines()
        assert proc.returncode == 0, proc.stderr
        assert args[args.index("--nproc_per_node") + 1] == procs, args


def test_resuming_under_another_process_count_says_why_and_how(tmp_path, store):  # noqa: F811
    """A two-process run resumed with one process (or the reverse) is refused, saying the flags that
    resume it and why the count must stay: the checkpoint holds each process's loader position and
    random state."""
    cfg = write_config(tmp_path / "c.json", store, model=MODEL, steps_to_train=3, run_name="two")
    rc, err = train_two(cfg, tmp_path)
    assert rc == 0, err
    for flags in (["--more", "2"], ["--more", "2", "--dry-run"]):
        proc = subprocess.run([str(ARROWS), "train", str(cfg), "--device", "cpu", *flags], capture_output=True, text=True, timeout=300)
        message = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "Traceback" not in message, message
        assert "written by 2 process(es); resume with the same number (now 1): --nproc 2 on the CPU" in message, message
        assert "each process's place in the data and random state" in message, message
    # Finished, it is left as it is under any count (it was refused: a study trained on several GPUs
    # could not be given again on one machine to compare again).
    for flags, says in (([], "nothing to do: the run is already at step 3"), (["--dry-run"], "from step 3 (")):
        proc = subprocess.run([str(ARROWS), "train", str(cfg), "--device", "cpu", *flags], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and says in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_a_stop_asked_of_one_process_stops_all_after_the_same_step(tmp_path, store, straight):  # noqa: F811
    """A signal to one process alone (`kill -INT`/`kill PID` of a process, SLURM signalling its
    tasks one by one): the request travels with that step's loss, and every process stops after the
    same step with its checkpoint saved. (Stopped each at its own step, a process inside the next
    step waited for the other in its collective, and nothing could be saved together.)"""
    from arrows import checkpoint

    cfg = config(tmp_path, store, "one")
    rc, err = train_two(cfg, tmp_path, fault="sigterm-self", rank=1, step=7)  # (SIGINT's handler is the same)
    assert rc == 130 and "Traceback" not in err, err
    # Asked during step 8, whose loss carried the request to process 0; step 8 is validated
    # (valid_every 8), so the loss of step 8 is read at once.
    assert "interrupted at step 8; its checkpoint is saved in" in err, err
    assert checkpoint.saved_step(tmp_path / "runs" / "one" / "checkpoints" / "latest.pt") == 8
    rc, err = train_two(cfg, tmp_path)
    assert rc == 0, err
    assert losses(tmp_path / "runs" / "one") == straight


@pytest.mark.parametrize("launcher, visible, gpus, expect", [
    ("slurm", 8, None, "cuda:3"),     # every GPU of the machine visible: the local rank picks one
    ("slurm", 1, None, "cuda:0"),     # SLURM's --gpus-per-task=1 / --gpu-bind: the task's own GPU is device 0
    ("slurm", 2, None, "only 2 CUDA device(s) are visible"),
    ("slurm", 8, [4, 5], "only 2 GPU(s) are listed"),
    ("torchrun", 1, None, "only 1 CUDA device(s) are visible"),  # torchrun binds no GPU: 4 processes, 1 GPU
])
def test_a_launched_process_takes_a_gpu_it_can_see(monkeypatch, launcher, visible, gpus, expect):
    """Under SLURM with one GPU bound to each task, SLURM_LOCALID 3 sees a single GPU: cuda:3 failed
    inside torch ("invalid device ordinal"), and so did a --gpus list shorter than the machine's tasks
    (an IndexError)."""
    import re

    import torch

    from arrows import distributed
    from arrows.errors import InputError

    # A private copy of the environment: under SLURM external_world sets RANK and WORLD_SIZE itself
    # (for torch's rendezvous), which left in this process made every later `arrows train` of the
    # test session take itself for a launched process of 4.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    if launcher == "slurm":
        monkeypatch.setenv("SLURM_PROCID", "3")
        monkeypatch.setenv("SLURM_NTASKS", "4")
        monkeypatch.setenv("SLURM_LOCALID", "3")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    else:
        monkeypatch.setenv("RANK", "3")
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(distributed, "_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    if expect.startswith("cuda:"):
        assert distributed.external_world(gpus, "auto").device == expect
    else:
        with pytest.raises(InputError, match=r"local rank 3 \((SLURM \(SLURM_PROCID|torchrun \(RANK)=3.*" + re.escape(expect)):
            distributed.external_world(gpus, "auto")
