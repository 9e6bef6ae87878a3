"""The lr schedule: upstream's warm-up + MultiStepLR semantics, constant, cosine."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mmaudio.config import TrainConfig
from mmaudio.training.schedule import build_scheduler, lr_at, lr_factor


def _upstream_lrs(warmup: int, milestones: list[int], gamma: float, steps: int) -> list[float]:
    """The lr of each step under upstream's construction (runner.py): SequentialLR(LambdaLR warm-up,
    MultiStepLR), switching at the end of warm-up, stepped after every optimizer step."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda s: (s + 1) / (warmup + 1))
    decay = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], [warmup])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR passes an epoch to step(), which torch deprecates
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


@pytest.mark.parametrize("warmup,milestones", [(3, [2, 4]), (10, [5, 6, 20]), (1, [1])])
def test_step_schedule_equals_upstream(warmup, milestones):
    ours = [lr_factor(i, warmup_steps=warmup, schedule="step", milestones=milestones, gamma=0.1) for i in range(40)]
    assert ours == pytest.approx(_upstream_lrs(warmup, milestones, 0.1, 40), rel=1e-12)


def test_milestones_count_after_warmup():
    # warm-up 3: lr = 1/4, 2/4, 3/4; milestones 2 and 4 after warm-up decay at steps 5 and 7
    got = [lr_factor(i, warmup_steps=3, schedule="step", milestones=[2, 4], gamma=0.1) for i in range(9)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_constant_and_cosine():
    assert [lr_factor(i, warmup_steps=2, schedule="constant") for i in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    cos = [lr_factor(i, warmup_steps=10, schedule="cosine", num_iterations=110) for i in (10, 35, 60, 85, 110, 200)]
    assert cos == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="poly"):
        lr_factor(0, warmup_steps=0, schedule="poly")


def test_scheduler_drives_the_optimizer_and_resumes():
    cfg = TrainConfig(learning_rate=2e-3, warmup_steps=4, schedule="step", milestones=[3], gamma=0.5, num_iterations=20)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.learning_rate)
    sched = build_scheduler(opt, cfg)
    seen = []
    for i in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(i, cfg) for i in range(6)])
    assert seen[:5] == pytest.approx([2e-3 * k / 5 for k in range(1, 6)])
    state = sched.state_dict()
    assert state["lr_lambdas"] == [None]  # the schedule itself is not in checkpoints, only counters

    # resume in train()'s order: build both, then load the optimizer (which holds the current lr)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    rest = []
    for i in range(6, 10):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx([lr_at(i, cfg) for i in range(6, 10)])
    assert rest == pytest.approx([2e-3, 1e-3, 1e-3, 1e-3])  # milestone 3 after 4 warm-up steps: halved at step 7
