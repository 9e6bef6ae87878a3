"""The training loop's state and the checkpoint schema, in one place (lingua's ``TrainState``).

:class:`TrainState` holds what changes as the loop runs (step, metric history, the current metric
window) and the objects whose state a resume must restore (network, EMA, optimizer, scheduler, loader
position, the step generator). :meth:`TrainState.state_dict` is the checkpoint: the keys below,
nothing else writes them; :meth:`TrainState.load_state_dict` restores it on every rank.

    step          optimizer steps done
    model         the unwrapped, uncompiled network's state dict (CPU)
    ema           the post-hoc EMA averages (rank 0's)
    optimizer     AdamW state
    scheduler     lr schedule state
    loader        epoch and position in it
    ranks         per process: RNG states and the metric window (sums since the last logged row)
    history       [step, loss, val_loss] rows
    config        the resolved params of the run
    run_key       the run's identity (see mmaudio.training.train.run_key)

No MLflow run id: identical runs write identical bytes (one DVC hash); the run that wrote a
checkpoint is found by its ``train.run_key`` param.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmaudio.training.checkpoint import restore_rng_states, rng_states
from mmaudio.training.ema import PowerEMA
from mmaudio.training.loader import TrainLoader
from mmaudio.weights import load_state_dict_strict

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("step", "model", "ema", "optimizer", "scheduler", "loader", "ranks", "history", "config",
                   "run_key")
# the keys without which a checkpoint cannot be resumed (run_key is a record only)
REQUIRED_CHECKPOINT_KEYS = CHECKPOINT_KEYS[:9]


@dataclass
class MetricWindow:
    """This rank's sums since the last logged metrics row: float32 on the device (no host sync per step),
    exact through a checkpoint (stored as Python floats)."""

    loss: torch.Tensor
    grad: torch.Tensor
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "MetricWindow":
        return cls(torch.tensor(state["loss"], dtype=torch.float32, device=device),
                   torch.tensor(state["grad"], dtype=torch.float32, device=device), int(state["steps"]))

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.loss += loss
        self.grad += grad_norm
        self.steps += 1

    def reset(self) -> None:
        self.loss.zero_()
        self.grad.zero_()
        self.steps, self.start = 0, time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": float(self.loss), "grad": float(self.grad), "steps": self.steps}


@dataclass
class TrainState:
    net: nn.Module  # unwrapped, uncompiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: TrainLoader
    gen: torch.Generator  # the step's randomness, the same stream on every rank
    ema: PowerEMA | None  # rank 0 only
    window: MetricWindow
    step: int = 0
    history: list[list[float]] = field(default_factory=list)  # [step, loss, val_loss]; nan where not measured

    def rank_state_dict(self) -> dict[str, Any]:
        """What every rank contributes to a checkpoint (gathered into ``ranks``)."""
        return {"rng": rng_states({"step": self.gen}), "window": self.window.state_dict()}

    def state_dict(self, ranks: list[dict[str, Any]], *, config: dict[str, Any], run_key: str) -> dict[str, Any]:
        """The checkpoint (rank 0): every key of :data:`CHECKPOINT_KEYS`."""
        return {
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
            "ranks": ranks,
            "history": self.history,
            "config": config,
            "run_key": run_key,
        }

    def load_state_dict(self, ckpt: dict[str, Any], *, rank: int, world_size: int, source: str) -> None:
        """Restore a checkpoint on this rank. Written by another number of processes, the per-process
        RNG states and metric windows restart (rank 0's RNG state is used)."""
        load_state_dict_strict(self.net, ckpt["model"], source=source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.loader.load_state_dict(ckpt["loader"], source=source)
        ranks = ckpt["ranks"]
        if len(ranks) != world_size:
            log.warning("%s was written by %d processes, resuming with %d: per-process RNG states and "
                        "metric windows restart", source, len(ranks), world_size)
        mine = ranks[rank] if rank < len(ranks) else ranks[0]
        restore_rng_states(mine["rng"], {"step": self.gen}, source)
        if len(ranks) == world_size:
            self.window = MetricWindow.from_state(mine["window"], self.window.loss.device)
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"], source=source)
        self.step = int(ckpt["step"])
        self.history = [list(map(float, row)) for row in ckpt["history"]]


def fresh_window(device: torch.device) -> MetricWindow:
    return MetricWindow.from_state({"loss": 0.0, "grad": 0.0, "steps": 0}, device)


