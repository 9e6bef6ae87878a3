"""Post-hoc EMA: the width/exponent relation, the discrete update against its closed form, the
profile inner products against numerical integration, and the synthesis from snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmaudio.training.ema import (
    PowerEMA,
    gamma_to_sigma_rel,
    list_snapshots,
    profile_inner_product,
    remove_snapshots_after,
    sigma_rel_to_gamma,
    solve_synthesis_weights,
    synthesize_ema,
)


def _integrate(f, lo: float, hi: float, n: int = 400_001) -> float:
    s = np.linspace(lo, hi, n)
    y = f(s)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(s)) / 2)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_sigma_rel_is_the_relative_std_of_the_profile(sigma_rel):
    g = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(g) == pytest.approx(sigma_rel, rel=1e-10)
    # the profile (g+1) s^g on [0, 1]: its standard deviation is sigma_rel
    p = lambda s: (g + 1) * s**g
    mean = _integrate(lambda s: s * p(s), 0, 1)
    var = _integrate(lambda s: (s - mean) ** 2 * p(s), 0, 1)
    assert math.sqrt(var) == pytest.approx(sigma_rel, rel=1e-5)
    assert _integrate(p, 0, 1) == pytest.approx(1.0, rel=1e-6)


def test_upstream_widths_give_the_known_exponents():
    # sigma_rel 0.05 and 0.1 (upstream's) are gamma ~ 16.97 and ~ 6.94 (EDM2 paper, sec. 3.1)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.1) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("ta,ga,tb,gb", [(1.0, 6.94, 1.0, 16.97), (0.3, 16.97, 1.0, 6.94), (1.0, 2.0, 0.4, 5.0), (0.7, 3.0, 0.7, 3.0)])
def test_profile_inner_product_matches_integration(ta, ga, tb, gb):
    def p(t, g):
        return lambda s: np.where(s <= t, (g + 1) * s**g / t ** (g + 1), 0.0)

    pa, pb = p(ta, ga), p(tb, gb)
    want = _integrate(lambda s: pa(s) * pb(s), 0, min(ta, tb))  # the product is 0 beyond the earlier end
    got = profile_inner_product(*(torch.tensor(v, dtype=torch.float64) for v in (ta, ga, tb, gb)))
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_update_equals_closed_form_of_a_linear_trajectory():
    """theta_tau = tau (tau = 1..t): the average is t - sum_{k=1}^{t-1} (k/t)^(gamma+1) exactly."""
    w = torch.zeros(3, dtype=torch.float32)
    ema = PowerEMA([("w", w)], [0.05, 0.1])
    for tau in range(1, 201):
        w.fill_(float(tau))
        ema.update()
        if tau in (1, 2, 7, 50, 200):
            for i, g in enumerate(ema.gammas):
                closed = tau - sum((k / tau) ** (g + 1) for k in range(1, tau))
                assert float(ema.averages[i][0][0]) == pytest.approx(closed, rel=2e-6)
    # and close to the continuous profile's mean (g+1)/(g+2) t plus the half step of the staircase
    g = ema.gammas[0]
    assert float(ema.averages[0][0][0]) == pytest.approx((g + 1) / (g + 2) * 200 + 0.5, rel=2e-3)


def test_synthesis_weights_pick_a_tracked_profile_exactly():
    g1, g2 = sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.1)
    steps = [10, 10, 20, 20, 30, 30]
    gammas = [g1, g2, g1, g2, g1, g2]
    sol = solve_synthesis_weights(steps, gammas, 20, g2)
    assert sol.weights.tolist() == pytest.approx([0, 0, 0, 1, 0, 0], abs=1e-6)
    assert sol.relative_error < 1e-6
    between = solve_synthesis_weights(steps, gammas, 30, sigma_rel_to_gamma(0.07))
    assert 1e-6 < between.relative_error < 0.05  # a width between the tracked ones: close, not exact
    assert float(between.weights.sum()) == pytest.approx(1.0, abs=0.05)  # profiles integrate to 1


def _run(tmp_path, sigma_rels, steps=300, every=20):
    """A 2-tensor 'model' on a smooth trajectory, averaged at sigma_rels, snapshots every `every` steps."""
    a, b = torch.zeros(4), torch.zeros(2, 2)
    ema = PowerEMA([("a", a), ("b", b)], sigma_rels)
    for tau in range(1, steps + 1):
        a.copy_(torch.tensor([math.sin(tau / 40), tau / 100, math.cos(tau / 70), 1.0]))
        b.copy_(torch.full((2, 2), math.exp(-tau / 150)))
        ema.update()
        if tau % every == 0:
            ema.snapshot(tmp_path)
    return ema


def test_synthesize_reproduces_a_tracked_average(tmp_path):
    ema = _run(tmp_path, [0.05, 0.1])
    got = synthesize_ema(tmp_path, 0.05)
    assert got.step == 300 and got.num_snapshots == 15 and got.relative_error < 1e-6
    for name, t in ema.average(0).items():
        torch.testing.assert_close(got.state[name], t, rtol=1e-5, atol=1e-6)


def test_synthesize_an_untracked_width_and_step(tmp_path):
    """Snapshots at 0.05 and 0.1 give the 0.07 average (tracked directly alongside for reference),
    at the last step and at an earlier one, to a small fraction of the trajectory's spread."""
    _run(tmp_path, [0.05, 0.1])
    ref = _run(tmp_path / "ref", [0.07, 0.2], every=100)
    got = synthesize_ema(tmp_path, 0.07)
    assert got.relative_error < 0.05
    for name, t in ref.average(0).items():
        torch.testing.assert_close(got.state[name], t, rtol=0, atol=2e-3)
    ref200 = _run(tmp_path / "ref200", [0.07, 0.2], steps=200, every=100)
    early = synthesize_ema(tmp_path, 0.07, step=200)
    assert early.step == 200 and early.num_snapshots == 10
    for name, t in ref200.average(0).items():
        torch.testing.assert_close(early.state[name], t, rtol=0, atol=2e-3)


def test_snapshot_files_and_state_round_trip(tmp_path):
    ema = _run(tmp_path, [0.05, 0.1], steps=60, every=20)
    assert [s for s, _ in list_snapshots(tmp_path)] == [20, 40, 60]
    assert [p.name for p in remove_snapshots_after(tmp_path, 40)] == ["ema-000000060.pt"]
    assert [s for s, _ in list_snapshots(tmp_path)] == [20, 40]
    w = torch.zeros(4), torch.zeros(2, 2)
    other = PowerEMA([("a", w[0]), ("b", w[1])], [0.05, 0.1])
    other.load_state_dict(ema.state_dict())
    assert other.step == 60 and torch.equal(other.averages[1][0], ema.averages[1][0])
    with pytest.raises(ValueError, match="sigma_rels"):
        PowerEMA([("a", w[0]), ("b", w[1])], [0.05, 0.2]).load_state_dict(ema.state_dict())
    with pytest.raises(FileNotFoundError, match="no EMA snapshots"):
        synthesize_ema(tmp_path / "none", 0.05)
