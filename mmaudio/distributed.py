"""Distributed setup shared by every multi-process entry point: one init/cleanup pair.

The same script runs under ``python`` (one process, no process group) and under ``torchrun``
(``--standalone --nproc_per_node=G`` on one machine, ``--nnodes=N --rdzv-backend=c10d`` on many).
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) is read when
:func:`init_distributed` is called, never at import time. NCCL drives GPUs, gloo drives CPUs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist

from mmaudio.choices import Device, check_choice



class DistContext(NamedTuple):
    """Who this process is; unpacks as ``rank, world_size, local_rank, device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the local GPU if there is one, else CPU; 'cuda' -> this process's GPU."""
    device = check_choice(Device, device, "device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_min: float = 60.0) -> DistContext:
    """Join the process group torchrun set up (if any) and pick this process's device.

    With WORLD_SIZE unset or 1 no process group is created, so a plain ``python`` run needs no
    rendezvous. ``timeout_min`` bounds collectives such as the barrier before a merge, where a fast
    rank may wait for slower ones.
    """
    die_with_launcher()
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=timedelta(minutes=timeout_min),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistContext(rank, world_size, local_rank, dev)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher() -> None:
    """Under torchrun on Linux: have the kernel SIGKILL this worker when its launcher dies.

    torchrun starts each worker in a session of its own, so killing the launcher's process group
    (what happens to a killed ``dvc repro``) would leave the worker training on and racing the rerun
    in the same checkpoint folder. Checkpoints are written aside and renamed, so a SIGKILL loses at
    most the steps since the last one. Elsewhere (plain ``python``, other systems) this does nothing.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != launcher:  # it died before the call took effect
        os.kill(os.getpid(), signal.SIGKILL)


def barrier() -> None:
    """Wait for every rank; a no-op in a one-process run."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over every rank (the values themselves in a one-process run)."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def cleanup_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
