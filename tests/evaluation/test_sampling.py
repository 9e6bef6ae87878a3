"""Sampling for evaluation: per-row seeding, batch independence, both solvers."""

from __future__ import annotations

import pytest
import torch

from mmaudio.evaluation.sampling import SamplingOptions, initial_noise, row_seed, sample_latents, untrained_network
from mmaudio.model.network import NETWORK_PRESETS, build_network
from tests.training.presets import MICRO


@pytest.fixture(scope="module")
def net():
    NETWORK_PRESETS.setdefault(MICRO.name, MICRO)
    torch.manual_seed(0)
    return build_network(MICRO.name, latent_mean=torch.linspace(-1, 1, 20), latent_std=torch.full((20,), 2.0)).eval()


def conditions(b: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 64, 1024, generator=g), torch.randn(b, 192, 768, generator=g), torch.randn(b, 77, 1024, generator=g)


def test_noise_is_per_row():
    a = initial_noise([0, 1, 2], (250, 20), seed=7)
    b = initial_noise([2], (250, 20), seed=7)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], initial_noise([0], (250, 20), seed=8)[0])
    assert row_seed(7, 0) != row_seed(7, 1)


def test_same_seed_same_latents_and_batch_independent(net):
    clip, sync, text = conditions(3)
    opts = SamplingOptions(num_steps=3, seed=11, batch_size=3)
    whole = sample_latents(net, clip, sync, text, [10, 11, 12], opts)
    again = sample_latents(net, clip, sync, text, [10, 11, 12], opts)
    assert whole.shape == (3, 250, 20)
    assert torch.equal(whole, again)
    single = sample_latents(net, clip[1:2], sync[1:2], text[1:2], [11], opts)
    torch.testing.assert_close(single[0], whole[1], atol=1e-5, rtol=1e-5)
    other_seed = sample_latents(net, clip[1:2], sync[1:2], text[1:2], [11], SamplingOptions(num_steps=3, seed=12))
    assert (other_seed[0] - whole[1]).abs().max() > 1e-2


def test_euler_and_adaptive_finite_and_shaped(net):
    clip, sync, text = conditions(2)
    euler = sample_latents(net, clip, sync, text, [0, 1], SamplingOptions(num_steps=8, seed=1))
    adaptive = sample_latents(net, clip, sync, text, [0, 1], SamplingOptions(solver="adaptive", seed=1, rtol=1e-4, atol=1e-4))
    for x in (euler, adaptive):
        assert x.shape == (2, 250, 20) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
    # the same ODE from the same noise: a fine Euler grid lands near the adaptive solution
    assert (euler - adaptive).abs().mean() < 0.5 * (euler.abs().mean())


def test_untrained_network_repeats_init_and_keeps_data_buffers(net):
    a = untrained_network(MICRO.name, 123, net)
    b = untrained_network(MICRO.name, 123, net)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert torch.equal(a.latent_mean, net.latent_mean) and torch.equal(a.latent_std, net.latent_std)


def test_options_refuse_unknown_solver():
    with pytest.raises(ValueError, match="solver"):
        SamplingOptions(solver="rk4")
