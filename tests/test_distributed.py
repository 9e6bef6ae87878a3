"""Distributed setup without a launcher: one process, no process group, environment read on call."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mmaudio.distributed import all_reduce_sum, barrier, cleanup_distributed, init_distributed, resolve_device


def test_plain_python_run_is_rank_zero_of_one_without_a_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    rank, world, local_rank, device = init_distributed("cpu")
    assert (rank, world, local_rank, device) == (0, 1, 0, torch.device("cpu"))
    assert not dist.is_initialized()
    barrier()  # no-ops without a group
    assert all_reduce_sum([2, 3.5], device) == [2.0, 3.5]
    cleanup_distributed()


def test_environment_is_read_when_called_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert init_distributed("cpu").local_rank == 3
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
