"""Processes for data-parallel training.

- `--gpus 0,1`: one process per listed GPU, spawned here, NCCL, a free port chosen automatically.
- `--device cpu --nproc N`: the same on CPU with gloo.
- Under torchrun or SLURM (RANK / WORLD_SIZE, or SLURM_PROCID / SLURM_NTASKS, already set) the
  command joins the existing group instead of spawning, so multi-machine runs use the standard
  launchers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from arrows.errors import ArrowsError, CancelledError, InputError


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: str  # "cpu" or "cuda:N"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_externally() -> bool:
    """True inside torchrun (RANK/WORLD_SIZE) or a SLURM job step with several tasks."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def launcher_rank() -> int:
    """This process's rank in the group torchrun or SLURM started (`launched_externally`), else 0."""
    if not launched_externally():
        return 0
    return int(os.environ["RANK"] if "RANK" in os.environ and "WORLD_SIZE" in os.environ else os.environ["SLURM_PROCID"])


def launcher_description() -> str:
    """The environment variables by which `launched_externally` took this process for one of a group."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return f"torchrun (RANK={os.environ['RANK']}, WORLD_SIZE={os.environ['WORLD_SIZE']})"
    return f"SLURM (SLURM_PROCID={os.environ.get('SLURM_PROCID')}, SLURM_NTASKS={os.environ.get('SLURM_NTASKS')})"


def external_world(gpus: list[int] | None, device: str = "auto") -> World:
    """The world described by torchrun's or SLURM's environment variables; each process takes
    the GPU of its local rank (or from `gpus`), or the CPU with `device="cpu"` or without CUDA."""
    launcher = launcher_description()  # before RANK and WORLD_SIZE are set below from SLURM's variables
    if "RANK" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        if "MASTER_ADDR" not in os.environ:  # where the processes meet: SLURM does not say
            raise InputError(f"started by {launcher}, but MASTER_ADDR is not set: set MASTER_ADDR and MASTER_PORT in the job "
                             f"script (see cli/launch/slurm.sh)")
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local = int(os.environ.get("SLURM_LOCALID", rank))
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
    use_cuda = gpus is not None or (device != "cpu" and _cuda())
    return World(rank, world, local, f"cuda:{_gpu_of(local, gpus, launcher, slurm=launcher.startswith('SLURM'))}" if use_cuda else "cpu")


def _gpu_of(local: int, gpus: list[int] | None, launcher: str, slurm: bool) -> int:
    """The CUDA device of the launched process of local rank `local`.

    Usually every GPU of the machine is visible to every process and the local rank picks one. SLURM
    can bind one GPU to each task (--gpus-per-task=1, --gpu-bind), leaving each process a single
    visible GPU, device 0, whatever its local rank: cuda:<local rank> would fail inside torch
    ("invalid device ordinal"). torchrun binds none: there, more processes than GPUs is a mistake."""
    if gpus:
        if local >= len(gpus):
            raise InputError(f"--gpus {','.join(map(str, gpus))}: this process has local rank {local} "
                             f"({launcher}), but only {len(gpus)} GPU(s) are listed; list one per "
                             f"process of the machine, or leave --gpus out to take the GPU of the local rank")
        return gpus[local]
    import torch

    count = torch.cuda.device_count()
    if local < count:
        return local
    if count == 1 and slurm:
        return 0
    raise InputError(f"this process has local rank {local} ({launcher}), but only {count} CUDA "
                     f"device(s) are visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
                     f"start at most {count} processes per machine")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(world: World) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    backend = "nccl" if world.device.startswith("cuda") else "gloo"
    if world.device.startswith("cuda"):
        import torch

        torch.cuda.set_device(world.device)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.world_size)


def close_group(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class ProcessDied(ArrowsError):
    """A spawned process ended without an arrows error of its own: killed by a signal (kill -9, the
    system's out-of-memory killer) or crashed. The other processes were stopped."""


# SIGUSR1 from the spawning process to its processes: "stop after this step, as at a first Ctrl-C".
# Not SIGINT: after a Ctrl-C at a terminal every process of the group has its own SIGINT already, and
# a second one means "stop at once" (see train._StopRequest).
STOP_SIGNAL = signal.SIGUSR1

# Once a process has failed, how long the others get to end by themselves before they are
# terminated: with gloo they see the loss of a peer at their next collective, within moments,
# and end with their own message (a Ctrl-C's "interrupted at step N").
GRACE_S = 10.0


def die_with_parent(parent: int, sig: int):
    """A function that makes the process that calls it get `sig` when `parent` (its parent) ends,
    even killed with SIGKILL, on Linux (prctl PR_SET_PDEATHSIG); elsewhere None. Called in the child:
    as Popen's preexec_fn (libc is loaded here, in the parent), or first thing in a spawned process.
    Without it, `kill -9` of a study left both its runs training on as orphans, and of an `arrows
    train --nproc/--gpus` its processes, writing the run's logs without the folder's lock."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(1, sig)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that: nobody would send it
            os.kill(os.getpid(), sig)

    return arm


def spawn(fn, nprocs: int, args: tuple, after_failure=lambda: ""):
    """Run `fn(rank, *args)` in `nprocs` fresh processes on this machine and return rank 0's result.

    What the user reads when it does not end well:
    - an arrows error in a process is raised here as it was raised there (a bad batch split, a
      checkpoint of another process count, a Ctrl-C's "interrupted at step N"), rank 0's first,
      instead of the nested tracebacks of torch.multiprocessing;
    - a process killed by a signal or crashed: `ProcessDied`, naming it, then `after_failure()`
      (where the run stands, said once the processes have ended); the others are stopped, never left waiting for it;
    - Ctrl-C here (a terminal's reaches every process; `kill -INT` or a notebook's interrupt only
      this one), or SIGTERM under the `arrows` command: the processes are asked to stop after
      their step, with a checkpoint of it, and their `CancelledError` is raised; a second Ctrl-C
      kills them.
    """
    import torch.multiprocessing as mp

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    outcomes = mp.get_context("spawn").SimpleQueue()  # small messages: (kind, rank, value)
    context = mp.start_processes(_reporting, args=(fn, args, outcomes, os.getpid()), nprocs=nprocs, start_method="spawn", join=False)
    interrupted, stopped, reported = _supervise(context.processes, outcomes)
    for path in context.error_files:  # torch's copies of the tracebacks, which _reporting sent already
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    codes = [p.exitcode for p in context.processes]
    done = {rank for kind, rank, _ in reported if kind == "done"}
    if not interrupted and (all(code == 0 for code in codes) or len(done) == nprocs):
        # Every process returned from its work. One that failed after that, in the libraries' clean-up
        # at its exit (seen once: "terminate called without an active exception", SIGABRT), took
        # nothing from the run, which was reported failed.
        for rank, code in enumerate(codes):
            if code != 0:
                print(f"note: process {rank} of {nprocs} ended with {_exit_name(code)} after its work was done, in its clean-up at exit; "
                      f"the run is complete", file=sys.stderr, flush=True)
        return next((value for kind, rank, value in reported if kind == "result" and rank == 0), None)
    hint = after_failure()
    errors = sorted((rank, value) for kind, rank, value in reported if kind == "error")
    if interrupted:
        cancelled = [e for _, e in errors if isinstance(e, CancelledError)]
        raise (cancelled[0] if cancelled else CancelledError(f"interrupted. {hint}")) from None
    if errors:
        raise errors[0][1] from None
    # No arrows error: the cause is a process that died of a signal not sent from here, else the
    # first crash (the others' errors, such as gloo's "connection closed", only follow from it).
    killed = [rank for rank, code in enumerate(codes) if code is not None and code < 0 and rank not in stopped]
    if killed:
        rank, number = killed[0], -codes[killed[0]]
        why = " (kill -9, or the system's out-of-memory killer)" if number == signal.SIGKILL else ""
        raise ProcessDied(f"process {rank} of {nprocs} was killed by {_signal_name(number)}{why}; the others were stopped. {hint}")
    crashes = sorted((failed_at, rank, kind_name, trace) for kind, rank, (failed_at, kind_name, trace) in
                     ((kind, rank, value) for kind, rank, value in reported if kind == "crash"))
    if crashes:
        _, rank, kind_name, trace = crashes[0]
        # The traceback is printed as it is, not put in the message: a bug's report needs all of it.
        print(f"process {rank} of {nprocs}: {trace}", file=sys.stderr, flush=True)
        raise ProcessDied(f"process {rank} of {nprocs} failed with {kind_name} (its traceback is above); the others were stopped. {hint}")
    rank = next(rank for rank, code in enumerate(codes) if code != 0)
    raise ProcessDied(f"process {rank} of {nprocs} ended with exit code {codes[rank]}; the others were stopped. {hint}")


def _supervise(processes, outcomes) -> tuple[bool, set[int], list]:
    """Wait until every process has ended, reading their reports as they come: one larger than the
    pipe holds (a long traceback) blocks its writer until read. When one process fails, the others
    get GRACE_S to end by themselves, then are terminated (and killed GRACE_S later, should one
    ignore that). Returns whether Ctrl-C was pressed here, the ranks this stopped with a signal,
    and the reports."""
    from multiprocessing.connection import wait

    interrupts, stopped, deadline, reported = 0, {}, None, []  # stopped: rank → the signal sent to it

    def stop(rank: int) -> None:
        sig = signal.SIGKILL if stopped.get(rank) == signal.SIGTERM else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(processes[rank].pid, sig)
        stopped[rank] = sig

    while True:
        alive = [rank for rank, p in enumerate(processes) if p.exitcode is None]
        if not alive:
            return interrupts > 0, set(stopped), reported + _drain(outcomes)
        if deadline is None and any(p.exitcode not in (None, 0) for p in processes):
            deadline = time.monotonic() + GRACE_S
        if deadline is not None and time.monotonic() >= deadline:
            for rank in alive:
                stop(rank)
            deadline = time.monotonic() + GRACE_S
        # A report is read with Ctrl-C held back (it lands at the wait below instead): interrupted
        # halfway, the reading would lose its place in the pipe.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            reported += _drain(outcomes)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        try:
            # SimpleQueue's reading end (no public name): woken by a report as by a process's end.
            wait([processes[rank].sentinel for rank in alive] + [outcomes._reader],
                 None if deadline is None else max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under the `arrows` command (errors.terminated)
            interrupts += 1
            for rank in alive:
                # The first: stop after the step, with a checkpoint of it. The second (Ctrl-C again;
                # errors.terminated ignores a repeated SIGTERM): at once, by SIGKILL (SIGTERM is a
                # stop after the step to a process that trains); the last checkpoint written stays
                # intact, a partial one is removed at the next start.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(processes[rank].pid, STOP_SIGNAL if interrupts == 1 else signal.SIGKILL)
                if interrupts > 1:
                    stopped[rank] = signal.SIGKILL


def _reporting(rank: int, fn, args: tuple, outcomes, parent: int) -> None:
    """Runs in a spawned process: sends its result (rank 0), its arrows error, or any other
    exception's traceback with the moment it was raised (`failed_at`, set by `fn`, else now), by
    which the spawning process tells the first failure from the ones that followed from it. Ends
    at once with the spawning process (kill -9): its processes trained on unseen, without the run
    folder's lock that process held, and a new `arrows train` there ran beside them. (Not a stop
    after the step, as SIGTERM would ask: that checkpoint would be written without the lock.)"""
    import traceback

    arm = die_with_parent(parent, signal.SIGKILL)
    if arm is not None:
        arm()

    try:
        result = fn(rank, *args)
    except ArrowsError as e:
        outcomes.put(("error", rank, e))
        raise
    except Exception as e:
        outcomes.put(("crash", rank, (getattr(e, "failed_at", time.monotonic()), type(e).__name__, traceback.format_exc())))
        raise
    if rank == 0:
        outcomes.put(("result", rank, result))
    outcomes.put(("done", rank, None))


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def _exit_name(code: int) -> str:
    return _signal_name(-code) if code < 0 else f"exit code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
