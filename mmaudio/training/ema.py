"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", sec. 3): track power-function averages of the weights at a few widths, snapshot them every
N steps, and after training combine the snapshots into the average of any width.

Power-function average at step t with exponent gamma: the trajectory theta(s), s in [0, t], weighted by

    p_{t,gamma}(s) = (gamma + 1) s^gamma / t^(gamma + 1)          (integrates to 1 over [0, t])

whose relative width (standard deviation / t) is sigma_rel = sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))).
Upstream tracks sigma_rel 0.05 and 0.1 and exports 0.05.

Discrete update after optimizer step t = 1, 2, ...: beta_t = (1 - 1/t)^(gamma + 1),
avg_t = beta_t avg_{t-1} + (1 - beta_t) theta_t. Unrolled, theta_tau gets the weight
(tau/t)^(gamma+1) - ((tau-1)/t)^(gamma+1), which is the integral of p_{t,gamma} over (tau-1, tau]: the
discrete average *is* the continuous profile applied to the step-wise constant trajectory, so the
closed-form inner products below hold exactly. (Upstream's nitrous-ema uses the geometric mean of
the betas at n+1 and n+2 at its n-th update, which is about the same profile shifted by 1.5 steps:
invisible after a few thousand steps, but not the profile the synthesis assumes.)

Synthesis (the paper's Algorithm 3): snapshots i hold averages with profiles p_i = p_{t_i,gamma_i}; the
weights w minimising || sum_i w_i p_i - p_r ||^2 in L2([0, inf)) for the target profile p_r solve
the Gram system A w = b with A_ij = <p_i, p_j>, b_i = <p_i, p_r>, and the synthesised weights are
sum_i w_i snapshot_i.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmaudio.training.checkpoint import CheckpointError, load_plain_file, sidecar_path, verify_sidecar, write_sidecar
from mmaudio.weights import save_weight_file

SNAPSHOT_RE = re.compile(r"^ema-(\d{9})\.pt$")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of relative width ``sigma_rel``: the largest real root of
    (gamma+2)^2 (gamma+3) - sigma_rel^-2 (gamma+1) = gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + 12 - s^-2."""
    if not 0.0 < sigma_rel < 0.3:
        raise ValueError(f"sigma_rel must be in (0, 0.3), got {sigma_rel}")
    inv = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_ema_beta(step: int, gamma: float) -> float:
    """Decay applied at optimizer step ``step`` (1-based): 0 at step 1, so the first average is the weights."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def profile_inner_product(
    t_a: torch.Tensor, gamma_a: torch.Tensor, t_b: torch.Tensor, gamma_b: torch.Tensor
) -> torch.Tensor:
    """<p_{t_a,gamma_a}, p_{t_b,gamma_b}> in L2, broadcasting over the inputs (use float64).

    With (lo, hi) the earlier and the later of the two profiles, the integral over [0, t_lo] of
    (g_lo+1)(g_hi+1) s^(g_lo+g_hi) / (t_lo^(g_lo+1) t_hi^(g_hi+1)) is
    (g_lo+1)(g_hi+1) / (g_lo+g_hi+1) * (t_lo / t_hi)^g_hi / t_hi.
    """
    a_first = t_a <= t_b
    t_lo, t_hi = torch.where(a_first, t_a, t_b), torch.where(a_first, t_b, t_a)
    g_hi = torch.where(a_first, gamma_b, gamma_a)
    coef = (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)
    return coef * (t_lo / t_hi) ** g_hi / t_hi


@dataclass(frozen=True)
class SynthesisWeights:
    weights: torch.Tensor  # (n,) float64, one per snapshot average
    relative_error: float  # || sum w_i p_i - p_r || / || p_r ||: how well the snapshots span the target


def solve_synthesis_weights(
    steps: Sequence[float], gammas: Sequence[float], target_step: float, target_gamma: float
) -> SynthesisWeights:
    """Least-squares weights of snapshot profiles (steps[i], gammas[i]) for the target profile."""
    if len(steps) != len(gammas) or not steps:
        raise ValueError(f"need as many steps as gammas (>= 1), got {len(steps)} and {len(gammas)}")
    # times relative to the target: the weights do not depend on the unit of time, the conditioning does
    t = torch.tensor(steps, dtype=torch.float64) / target_step
    g = torch.tensor(gammas, dtype=torch.float64)
    t_r = torch.ones(1, dtype=torch.float64)
    g_r = torch.tensor([target_gamma], dtype=torch.float64)
    A = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])  # (n, n)
    b = profile_inner_product(t[:, None], g[:, None], t_r[None, :], g_r[None, :])  # (n, 1)
    # SVD-based least squares: snapshot profiles can be nearly collinear (close times, close widths)
    w = torch.linalg.lstsq(A, b, driver="gelsd").solution  # (n, 1)
    rr = profile_inner_product(t_r, g_r, t_r, g_r)  # (1,)
    err2 = (w.T @ A @ w - 2 * w.T @ b + rr).clamp_min(0.0)
    return SynthesisWeights(weights=w[:, 0], relative_error=float((err2.sqrt() / rr.sqrt()).item()))


class PowerEMA:
    """Power-function averages of a set of named tensors (the trainable parameters) at several widths.

    The averages live on the parameters' device in float32 and are updated in place after every
    optimizer step by :meth:`update`.
    """

    def __init__(self, named_tensors: Iterable[tuple[str, torch.Tensor]], sigma_rels: Sequence[float]):
        pairs = list(named_tensors)
        self.names = [n for n, _ in pairs]
        self.live = [p for _, p in pairs]
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.averages = [[p.detach().float().clone() for p in self.live] for _ in self.sigma_rels]
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        for gamma, avg in zip(self.gammas, self.averages):
            torch._foreach_lerp_(avg, [p.float() for p in self.live], 1.0 - power_ema_beta(self.step, gamma))

    def average(self, index: int) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.averages[index]))

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "sigma_rels": list(self.sigma_rels),
            "averages": [{n: a.detach().cpu() for n, a in zip(self.names, avg)} for avg in self.averages],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise ValueError(f"{source}: EMA widths {state['sigma_rels']} differ from train.ema.sigma_rels {self.sigma_rels}")
        for avg, saved in zip(self.averages, state["averages"]):
            if set(saved) != set(self.names):
                raise ValueError(f"{source}: EMA tensors do not match the network's trainable parameters")
            for name, a in zip(self.names, avg):
                a.copy_(saved[name])
        self.step = int(state["step"])

    def snapshot(self, folder: str | os.PathLike) -> Path:
        """Write every average at the current step to ``folder/ema-<step>.pt`` (temp file + rename) and
        its size/hash record ``ema-<step>.pt.sum``, as checkpoints have."""
        path = snapshot_path(folder, self.step)
        pkg = {**self.state_dict(), "gammas": list(self.gammas)}
        save_weight_file(pkg, path)
        write_sidecar(path)
        return path


def snapshot_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"ema-{step:09d}.pt"


def list_snapshots(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every snapshot in ``folder``, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SNAPSHOT_RE.match(p.name))]
    return sorted(found)


def remove_snapshots_after(folder: str | os.PathLike, step: int) -> list[Path]:
    """Delete snapshots later than ``step`` (left by a run that was stopped after its last checkpoint)."""
    removed = [p for s, p in list_snapshots(folder) if s > step]
    for p in removed:
        p.unlink()
        sidecar_path(p).unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class SynthesizedEMA:
    state: dict[str, torch.Tensor]  # float32 on CPU, the tracked (trainable) tensors only
    step: int
    sigma_rel: float
    relative_error: float  # of the profile fit, see SynthesisWeights
    num_snapshots: int


@torch.no_grad()
def synthesize_ema(folder: str | os.PathLike, sigma_rel: float, step: int | None = None) -> SynthesizedEMA:
    """Combine the snapshots in ``folder`` (those at or before ``step``, default the last) into the
    power-function average of width ``sigma_rel`` at ``step``. Sums in float64."""
    snaps = list_snapshots(folder)
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshots (ema-*.pt) in {folder}")
    step = snaps[-1][0] if step is None else int(step)
    snaps = [(s, p) for s, p in snaps if s <= step]
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshot at or before step {step} in {folder}")
    # A snapshot at or before the last checkpoint always has its record (the record is renamed into
    # place before the checkpoint is written), so a missing or differing one is damage: one flipped
    # bit would otherwise change the exported weights without a word.
    for _, p in snaps:
        if not verify_sidecar(p):
            raise CheckpointError(f"{p} has no size/hash record {sidecar_path(p).name}: cannot tell whether it is intact")
    # the widths come from the files, so snapshots of other runs' settings cannot be mixed in silently
    metas = [(s, p, load_plain_file(p, mmap=True)) for s, p in snaps]  # mapped: only one is read at a time
    steps, gammas = [], []
    for s, p, pkg in metas:
        if int(pkg["step"]) != s:
            raise ValueError(f"{p}: holds step {pkg['step']} but is named for step {s}")
        for g in pkg["gammas"]:
            steps.append(float(s))
            gammas.append(float(g))
    sol = solve_synthesis_weights(steps, gammas, float(step), sigma_rel_to_gamma(sigma_rel))
    acc: dict[str, torch.Tensor] = {}
    k = 0
    for _, p, pkg in metas:
        for avg in pkg["averages"]:
            w = float(sol.weights[k])
            k += 1
            if not acc:
                acc = {n: torch.zeros(t.shape, dtype=torch.float64) for n, t in avg.items()}
            if set(avg) != set(acc):
                raise ValueError(f"{p}: its tensors differ from the other snapshots' in {folder}")
            for n, t in avg.items():
                acc[n].add_(t.double(), alpha=w)
    return SynthesizedEMA(
        state={n: t.float() for n, t in acc.items()},
        step=step,
        sigma_rel=float(sigma_rel),
        relative_error=sol.relative_error,
        num_snapshots=len(metas),
    )
