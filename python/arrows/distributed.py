"""Processes for data-parallel training.

- `--gpus 0,1`: one process per listed GPU, spawned here, NCCL, a free port chosen automatically.
- `--device cpu --nproc N`: the same on CPU with gloo.
- Under torchrun or SLURM (RANK / WORLD_SIZE, or SLURM_PROCID / SLURM_NTASKS, already set) the
  command joins the existing group instead of spawning, so multi-machine runs use the standard
  launchers.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


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


def external_world(gpus: list[int] | None, device: str = "auto") -> World:
    """The world described by torchrun's or SLURM's environment variables; each process takes
    the GPU of its local rank (or from `gpus`), or the CPU with `device="cpu"` or without CUDA."""
    if "RANK" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local = int(os.environ.get("SLURM_LOCALID", rank))
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        if "MASTER_ADDR" not in os.environ:
            raise SystemExit("under SLURM, set MASTER_ADDR and MASTER_PORT in the job script (see cli/launch/slurm.sh)")
    use_cuda = gpus is not None or (device != "cpu" and _cuda())
    return World(rank, world, local, f"cuda:{gpus[local] if gpus else local}" if use_cuda else "cpu")


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


def spawn(fn, nprocs: int, args: tuple):
    """Run `fn(rank, *args)` in `nprocs` fresh processes on this machine and return rank 0's result.
    An arrows error in a process is raised here as it was raised there (a bad batch split, a
    checkpoint of another process count): the user reads its message, not the nested tracebacks
    of torch.multiprocessing."""
    import torch.multiprocessing as mp

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    outcomes = mp.get_context("spawn").SimpleQueue()  # small messages: (kind, rank, value)
    try:
        mp.start_processes(_reporting, args=(fn, args, outcomes), nprocs=nprocs, start_method="spawn", join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        errors = [value for kind, _, value in _drain(outcomes) if kind == "error"]
        if errors:
            raise errors[0] from None
        raise
    return next((value for kind, rank, value in _drain(outcomes) if kind == "result" and rank == 0), None)


def _reporting(rank: int, fn, args: tuple, outcomes) -> None:
    from arrows.errors import ArrowsError

    try:
        result = fn(rank, *args)
    except ArrowsError as e:
        outcomes.put(("error", rank, e))
        raise
    if rank == 0:
        outcomes.put(("result", rank, result))


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
