"""Flow-matching math: closed forms of the path, target and loss, logit-normal t, guidance, solvers."""

from __future__ import annotations

import math

import pytest
import torch

from mmaudio.model import flow_matching as fm


def _pair(seed: int = 0, shape: tuple[int, ...] = (3, 10, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_path_endpoints_and_midpoint() -> None:
    x0, x1 = _pair()
    torch.testing.assert_close(fm.interpolate(x0, x1, torch.zeros(3)), x0, rtol=0, atol=0)
    torch.testing.assert_close(fm.interpolate(x0, x1, torch.ones(3)), x1, rtol=0, atol=0)
    torch.testing.assert_close(fm.interpolate(x0, x1, torch.full((3,), 0.5)), (x0 + x1) / 2)
    # t is per sample
    xt = fm.interpolate(x0, x1, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], x1[1])
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * x1[2])


def test_min_sigma_path_keeps_noise_at_t1() -> None:
    x0, x1 = _pair()
    xt = fm.interpolate(x0, x1, torch.ones(3), min_sigma=0.1)
    torch.testing.assert_close(xt, 0.1 * x0 + x1)
    torch.testing.assert_close(fm.target_velocity(x0, x1, min_sigma=0.1), x1 - 0.9 * x0)


@pytest.mark.parametrize("min_sigma", [0.0, 0.05])
def test_target_is_the_path_derivative(min_sigma: float) -> None:
    x0, x1 = (x.double() for x in _pair())
    t, h = torch.full((3,), 0.3, dtype=torch.float64), 1e-6
    numeric = (fm.interpolate(x0, x1, t + h, min_sigma=min_sigma) - fm.interpolate(x0, x1, t, min_sigma=min_sigma)) / h
    torch.testing.assert_close(fm.target_velocity(x0, x1, min_sigma=min_sigma), numeric, rtol=1e-6, atol=1e-6)
    if min_sigma == 0.0:
        torch.testing.assert_close(fm.target_velocity(x0, x1), x1 - x0)


def test_loss_is_per_sample_mean_squared_error() -> None:
    x0, x1 = _pair()
    perfect = x1 - x0
    loss = fm.flow_matching_loss(perfect, x0, x1)
    assert loss.shape == (3,) and loss.abs().max() == 0
    offset = perfect + torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    torch.testing.assert_close(fm.flow_matching_loss(offset, x0, x1), torch.tensor([1.0, 4.0, 9.0]))


def test_t_shape_is_checked() -> None:
    x0, x1 = _pair()
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        fm.interpolate(x0, x1, torch.zeros(3, 1))


def test_logit_normal_t_is_reproducible_and_centred() -> None:
    a = fm.sample_logit_normal_t(20000, generator=torch.Generator().manual_seed(3))
    b = fm.sample_logit_normal_t(20000, generator=torch.Generator().manual_seed(3))
    c = fm.sample_logit_normal_t(20000, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (20000,) and a.min() > 0 and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.01
    logit = torch.log(a / (1 - a))  # back to N(0, 1)
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03
    shifted = fm.sample_logit_normal_t(20000, generator=torch.Generator().manual_seed(3), mean=1.0, scale=0.5)
    torch.testing.assert_close(torch.log(shifted / (1 - shifted)), logit * 0.5 + 1.0, rtol=1e-4, atol=1e-4)


def test_noise_is_reproducible_from_the_generator() -> None:
    like = torch.zeros(2, 5, 3)
    a = fm.sample_noise_like(like, generator=torch.Generator().manual_seed(1))
    b = fm.sample_noise_like(like, generator=torch.Generator().manual_seed(1))
    assert a.shape == like.shape and torch.equal(a, b) and a.std() > 0.5


def test_guidance_formula() -> None:
    v_c, v_u = torch.tensor([2.0]), torch.tensor([1.0])
    torch.testing.assert_close(fm.guided_velocity(v_c, v_u, 1.0), v_c)
    torch.testing.assert_close(fm.guided_velocity(v_c, v_u, 4.5), v_u + 4.5 * (v_c - v_u))  # 5.5
    torch.testing.assert_close(fm.guided_velocity(v_c, v_u, 0.0), v_u)


def test_cfg_velocity_fn_broadcasts_t_and_skips_guidance_below_one() -> None:
    seen: list[tuple[str, torch.Tensor]] = []

    def predict(latent: torch.Tensor, t: torch.Tensor, cond: str) -> torch.Tensor:
        seen.append((cond, t))
        return torch.full_like(latent, 2.0 if cond == "c" else 1.0)

    x = torch.zeros(4, 3, 2)
    v = fm.cfg_velocity_fn(predict, "c", "u", 4.5)(torch.tensor(0.25), x)
    torch.testing.assert_close(v, torch.full_like(x, 5.5))
    assert [c for c, _ in seen] == ["c", "u"]
    torch.testing.assert_close(seen[0][1], torch.full((4,), 0.25))
    seen.clear()
    v = fm.cfg_velocity_fn(predict, "c", "u", 0.5)(torch.tensor(0.25), x)
    torch.testing.assert_close(v, torch.full_like(x, 2.0))  # conditional only, one pass
    assert [c for c, _ in seen] == ["c"]
    assert fm.DEFAULT_CFG_STRENGTH == 4.5 and fm.DEFAULT_NUM_STEPS == 25


def test_euler_on_a_constant_field_reaches_the_endpoint() -> None:
    x0, x1 = _pair()
    calls = []

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        return x1 - x0

    out = fm.euler_sample(velocity, x0)
    torch.testing.assert_close(out, x1, rtol=1e-6, atol=1e-6)
    assert len(calls) == 25 and calls[0] == 0.0
    torch.testing.assert_close(torch.tensor(calls), torch.arange(25) / 25)
    # reversed direction: data back to noise
    torch.testing.assert_close(fm.euler_sample(velocity, x1, t0=1.0, t1=0.0, num_steps=5), x0, rtol=1e-6, atol=1e-6)


def test_euler_is_explicit_left_point() -> None:
    """dx/dt = 2t over N steps gives the left Riemann sum (N - 1) / N, not 1."""
    x = fm.euler_sample(lambda t, x: torch.full_like(x, 2.0) * t, torch.zeros(1), num_steps=4)
    torch.testing.assert_close(x, torch.tensor([0.75]))


def test_euler_grid_stops_at_one_minus_min_sigma() -> None:
    grid = fm.euler_time_grid(4, min_sigma=0.2)
    torch.testing.assert_close(grid, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8]))
    with pytest.raises(ValueError, match="num_steps"):
        fm.euler_time_grid(0)


def test_adaptive_solver_matches_the_exact_solution() -> None:
    pytest.importorskip("torchdiffeq")
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    out = fm.adaptive_sample(lambda t, x: -x, x0)
    assert out.shape == x0.shape
    torch.testing.assert_close(out, x0 * math.exp(-1.0), rtol=1e-6, atol=1e-8)
