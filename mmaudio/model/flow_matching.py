"""Conditional flow matching (rectified-flow form) as plain functions.

Convention (upstream's): x0 is Gaussian noise at t = 0, x1 is the (normalised) data latent at t = 1.

    x_t      = (1 - (1 - min_sigma) t) x0 + t x1
    target v = x1 - (1 - min_sigma) x0          (= dx_t/dt)
    loss     = mean over non-batch dims of (v_pred - v)^2, one value per sample

min_sigma is 0 in every official config, which reduces to x_t = (1 - t) x0 + t x1 and v = x1 - x0.
Sampling integrates dx/dt = v(t, x) from t = 0 to 1 with fixed-step Euler (default 25 steps) or an
adaptive solver; classifier-free guidance mixes a conditional and an unconditional prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

DEFAULT_NUM_STEPS = 25
DEFAULT_CFG_STRENGTH = 4.5

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (t 0-dim, x (B, ...)) -> v (B, ...)
C = TypeVar("C")  # the network's preprocessed-conditions type
PredictFlow = Callable[[torch.Tensor, torch.Tensor, C], torch.Tensor]  # (latent, t (B,), conditions) -> v


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, *, min_sigma: float = 0.0) -> torch.Tensor:
    """x_t on the straight path from noise x0 (t=0) to data x1 (t=1); t is (B,)."""
    t = _per_sample(t, x0)
    return (1 - (1 - min_sigma) * t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor, *, min_sigma: float = 0.0) -> torch.Tensor:
    return x1 - (1 - min_sigma) * x0


def flow_matching_loss(
    predicted_v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, *, min_sigma: float = 0.0
) -> torch.Tensor:
    """Squared error to the target velocity, averaged over every dim but the batch: (B,)."""
    reduce_dims = list(range(1, predicted_v.dim()))
    return (predicted_v - target_velocity(x0, x1, min_sigma=min_sigma)).pow(2).mean(dim=reduce_dims)


def sample_logit_normal_t(
    batch_size: int,
    *,
    generator: torch.Generator,
    mean: float = 0.0,
    scale: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t = sigmoid(N(mean, scale^2)), shape (B,): concentrates training on mid-path times (SD3).

    Upstream calls this "log-normal sampling"; the distribution is logit-normal. ``device`` must
    match the generator's device.
    """
    z = torch.randn(batch_size, device=device if device is not None else generator.device, generator=generator)
    return torch.sigmoid(z * scale + mean)


def sample_noise_like(x1: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """x0 ~ N(0, I) with the shape, dtype and device of ``x1`` (same draw order as upstream)."""
    return torch.empty_like(x1).normal_(generator=generator)


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, cfg_strength: float) -> torch.Tensor:
    """Classifier-free guidance: cfg * v_cond + (1 - cfg) * v_uncond = v_uncond + cfg (v_cond - v_uncond).

    cfg = 1 is the plain conditional prediction; the default 4.5 extrapolates away from the
    unconditional one.
    """
    return cfg_strength * v_cond + (1 - cfg_strength) * v_uncond


def cfg_velocity_fn(
    predict_flow: PredictFlow[C],
    conditions: C,
    empty_conditions: C,
    cfg_strength: float = DEFAULT_CFG_STRENGTH,
) -> VelocityFn:
    """Bind a network's ``predict_flow(latent, t, conditions)`` into a velocity field v(t, x).

    QUIRK (upstream's ode_wrapper): any cfg_strength < 1 switches guidance off entirely and returns
    the conditional prediction (one network pass per step instead of two); 0.5, say, does *not*
    interpolate towards the unconditional prediction.
    """

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t_batch = t * torch.ones(x.shape[0], device=x.device, dtype=x.dtype)  # (B,)
        v_cond = predict_flow(x, t_batch, conditions)
        if cfg_strength < 1.0:
            return v_cond
        return guided_velocity(v_cond, predict_flow(x, t_batch, empty_conditions), cfg_strength)

    return velocity


def euler_time_grid(
    num_steps: int = DEFAULT_NUM_STEPS, *, t0: float = 0.0, t1: float = 1.0, min_sigma: float = 0.0
) -> torch.Tensor:
    """The num_steps + 1 float32 (CPU) time points Euler visits.

    QUIRK: with min_sigma > 0 the grid stops at t1 - min_sigma (upstream's choice), not at t1.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(t0, t1 - min_sigma, num_steps + 1)


def euler_sample(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    *,
    num_steps: int = DEFAULT_NUM_STEPS,
    t0: float = 0.0,
    t1: float = 1.0,
    min_sigma: float = 0.0,
) -> torch.Tensor:
    """Integrate dx/dt = velocity_fn(t, x) from t0 to t1 with fixed Euler steps; returns x at the end.

    ``t`` is passed as a 0-dim float32 CPU tensor, as upstream does. Swap t0/t1 to go data -> noise.
    """
    steps = euler_time_grid(num_steps, t0=t0, t1=t1, min_sigma=min_sigma)
    x = x0
    for i in range(num_steps):
        t, t_next = steps[i], steps[i + 1]
        x = x + (t_next - t) * velocity_fn(t, x)
    return x


def adaptive_sample(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> torch.Tensor:
    """Integrate with torchdiffeq's adaptive solver (its defaults: dopri5, rtol 1e-7, atol 1e-9).

    Returns the state at t1. (Upstream's adaptive branch returns odeint's whole 2-point trajectory,
    shape (2, *x0.shape); we return its last entry, which is what its callers need.)
    """
    from torchdiffeq import odeint  # optional dependency, only needed for this solver

    times = torch.tensor([t0, t1], device=x0.device, dtype=x0.dtype)
    return odeint(velocity_fn, x0, times, method=method, rtol=rtol, atol=atol)[-1]
