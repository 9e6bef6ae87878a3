"""Learning-rate schedule: linear warm-up, then constant, step decay or cosine decay.

Step ``i`` is the number of optimizer steps already taken (the lr of the first update is lr(0)); the
scheduler is stepped once after every optimizer step. With W = ``warmup_steps`` and base lr ``b``:

    i <  W             b * (i + 1) / (W + 1)      linear, never 0, b * W / (W + 1) at i = W - 1
    i >= W, constant   b
    i >= W, step       b * gamma ** #{m in milestones : m <= i - W}
    i >= W, cosine     b * (1 + cos(pi * min(1, (i - W) / (num_iterations - W)))) / 2

Milestones count steps **after the end of warm-up**: this is what upstream's ``SequentialLR`` of a
``LambdaLR`` warm-up and a ``MultiStepLR`` does (the second scheduler is restarted at 0 when it takes
over), so upstream's milestones [240000, 270000] with 1000 warm-up steps decay at steps 241000 and
271000. The cosine schedule reaches 0 at ``num_iterations``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mmaudio.choices import Schedule, check_choice
from mmaudio.config import TrainConfig



def lr_factor(
    step: int,
    *,
    warmup_steps: int,
    schedule: str,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    num_iterations: int = 1,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    schedule = check_choice(Schedule, schedule, "schedule")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    after = step - warmup_steps
    if schedule is Schedule.CONSTANT:
        return 1.0
    if schedule is Schedule.STEP:
        return gamma ** bisect.bisect_right(list(milestones), after)
    span = max(1, num_iterations - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, after / span)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` under ``cfg``."""
    return cfg.learning_rate * _factor_fn(cfg)(step)


def _factor_fn(cfg: TrainConfig):
    warmup, schedule, milestones = cfg.warmup_steps, cfg.schedule, tuple(cfg.milestones)
    gamma, total = cfg.gamma, cfg.num_iterations

    # a plain function (not a callable object): LambdaLR then keeps it out of its state_dict, so a
    # checkpoint holds only counters and the schedule always comes from the config
    def factor(step: int) -> float:
        return lr_factor(
            step, warmup_steps=warmup, schedule=schedule, milestones=milestones, gamma=gamma, num_iterations=total
        )

    return factor


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig) -> LambdaLR:
    """A LambdaLR over ``optimizer`` whose base lr is the optimizer's (``cfg.learning_rate``)."""
    return LambdaLR(optimizer, lr_lambda=_factor_fn(cfg))
