"""The audio VAE: official key layout and sizes, upstream's numbers, file round trip, contracts.

Reference numbers in test_tiny_matches_upstream_numbers were produced once by upstream's VAE
classes built at the tiny_* widths and filled with the same seeded weights (see _fill).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmaudio.encoders.mel import MelConverter
from mmaudio.encoders.vae import (VAE_PRESETS, AudioVAE, DiagonalGaussian, VAEPreset, get_vae_preset, latent_to_mel,
                                  load_vae, save_vae, waveform_to_latent)
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file

KEYS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "keys"


def _fill(vae: AudioVAE, enc_gain: float = 0.25, dec_gain: float = -0.5) -> AudioVAE:
    """Raw kernels from one seeded generator in sorted-key order, gains off zero (upstream-reproducible)."""
    gen = torch.Generator().manual_seed(0)
    state = vae.state_dict()
    with torch.no_grad():
        for key in sorted(state):
            if key.endswith(".weight"):
                state[key].copy_(torch.randn(state[key].shape, generator=gen))
        vae.encoder.learnable_gain.fill_(enc_gain)
        vae.decoder.learnable_gain.fill_(dec_gain)
    return vae


def _test_mel(vae: AudioVAE, frames: int) -> torch.Tensor:
    """A deterministic log-mel around the data statistics, (1, n_mels, frames)."""
    t = torch.arange(frames, dtype=torch.float32)
    c = torch.arange(vae.preset.data_dim, dtype=torch.float32)[:, None]
    return vae.data_mean + vae.data_std * torch.sin(0.3 * t + 0.1 * c)


@pytest.mark.parametrize("preset", ["16k", "44k"])
def test_state_dict_matches_official_layout(preset: str) -> None:
    with torch.device("meta"):
        vae = AudioVAE(preset)
    expected = json.loads((KEYS_DIR / f"vae_{preset}.json").read_text())
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == expected
    assert len(expected) == 57


def test_parameter_counts() -> None:
    with torch.device("meta"):
        v16, v44 = AudioVAE("16k"), AudioVAE("44k")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(v16), count(v16.encoder), count(v16.decoder)) == (171_657_218, 72_529_921, 99_127_297)
    assert (count(v44), count(v44.encoder), count(v44.decoder)) == (305_479_682, 129_138_689, 176_340_993)


def test_presets_keep_the_data_contract() -> None:
    for name, mel_dim, latent_dim in [("16k", 80, 20), ("tiny_16k", 80, 20), ("44k", 128, 40), ("tiny_44k", 128, 40)]:
        p = VAE_PRESETS[name]
        assert (p.data_dim, p.latent_dim) == (mel_dim, latent_dim)
    assert VAE_PRESETS["16k"].latent_frames(500) == VAE_PRESETS["tiny_16k"].latent_frames(500) == 250
    assert VAE_PRESETS["44k"].latent_frames(690) == VAE_PRESETS["tiny_44k"].latent_frames(690) == 345
    with pytest.raises(KeyError, match="unknown VAE preset 'big'"):
        get_vae_preset("big")
    with pytest.raises(ValueError, match="down_levels"):
        VAEPreset(mel="16k", latent_dim=20, hidden_dim=8, ch_mult=(1, 2), down_levels=(1,))


def test_mel_statistics_buffers() -> None:
    v16, v44 = AudioVAE("tiny_16k"), AudioVAE("tiny_44k")
    assert v16.data_mean.shape == v16.data_std.shape == (1, 80, 1)
    assert v44.data_mean.shape == (1, 128, 1)
    assert [v16.data_mean[0, 0, 0].item(), v16.data_mean[0, -1, 0].item()] == pytest.approx([-1.6058, -2.9673])
    assert [v16.data_std[0, 0, 0].item(), v16.data_std[0, -1, 0].item()] == pytest.approx([1.0291, 1.1070])
    assert [v44.data_mean[0, 0, 0].item(), v44.data_mean[0, -1, 0].item()] == pytest.approx([-3.3462, -11.3861])
    assert [v44.data_std[0, 0, 0].item(), v44.data_std[0, -1, 0].item()] == pytest.approx([2.3804, 0.7164])


@pytest.mark.parametrize("preset, mean, std, dec, sums", [
    ("tiny_16k", [0.5793378949165344, -1.1604268550872803, 0.9743509292602539],
     [0.8901572227478027, 2.3502883911132812, 0.5921356678009033],
     [-1.8514150381088257, -0.5577776432037354, -3.340894937515259],
     [29.558365220669657, 692.2667088806629, -7490.456905961037]),
    ("tiny_44k", [-0.4061165153980255, 0.08986268937587738, -0.6389329433441162],
     [0.7443883419036865, 0.6351645588874817, 0.547851026058197],
     [-3.5021183490753174, -2.4555606842041016, -11.45926570892334],
     [30.775543435222062, 1267.6624874174595, -30886.980571508408]),
])
def test_tiny_matches_upstream_numbers(preset: str, mean: list[float], std: list[float], dec: list[float],
                                       sums: list[float]) -> None:
    vae = _fill(AudioVAE(preset))
    lat, dim = vae.preset.latent_dim, vae.preset.data_dim
    with torch.no_grad():
        m, s = vae.encode(_test_mel(vae, 50))
        out = vae.decode(m)
    assert m.shape == s.shape == (1, lat, 25) and out.shape == (1, dim, 50)
    at = [(0, 0), (3, 10), (lat - 1, 24)]
    assert [m[0, i, j].item() for i, j in at] == pytest.approx(mean, rel=1e-5, abs=1e-6)
    assert [s[0, i, j].item() for i, j in at] == pytest.approx(std, rel=1e-5)
    assert [out[0, i, j].item() for i, j in [(0, 0), (5, 17), (dim - 1, 49)]] == pytest.approx(dec, rel=1e-5)
    totals = [m.double().sum().item(), s.double().sum().item(), out.double().sum().item()]
    assert totals == pytest.approx(sums, rel=1e-5)


@pytest.mark.parametrize("preset, mel_frames, latent_frames", [("tiny_16k", 500, 250), ("tiny_44k", 690, 345)])
def test_eight_second_shapes(preset: str, mel_frames: int, latent_frames: int) -> None:
    vae = AudioVAE(preset)
    mel = _test_mel(vae, mel_frames).expand(2, -1, -1)
    with torch.no_grad():
        mean, std = vae.encode(mel)
        recon = vae.decode(mean)
    assert mean.shape == std.shape == (2, vae.latent_dim, latent_frames)
    assert (std > 0).all() and torch.isfinite(mean).all()
    assert recon.shape == (2, vae.preset.data_dim, mel_frames)


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    vae = AudioVAE("tiny_16k")
    vae.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():
        vae.encoder.learnable_gain.fill_(0.1)
    path = save_vae(vae, tmp_path / "v1-16.pth")
    raw = load_weight_file(path)  # the official format: one flat state dict
    assert list(raw) == list(vae.state_dict())
    loaded = load_vae(path, "tiny_16k")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    mel = _test_mel(vae, 64)
    with torch.no_grad():
        a, b = vae.encode(mel), loaded.encode(mel)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
        assert torch.equal(vae.decode(a.mean), loaded.decode(a.mean))


def test_forced_weight_norm_never_touches_the_stored_weights() -> None:
    vae = _fill(AudioVAE("tiny_16k"))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    mel = _test_mel(vae, 32)
    with torch.no_grad():
        train_out = vae.train().encode(mel).mean
        eval_out = vae.eval().encode(mel).mean
    assert torch.equal(train_out, eval_out)  # upstream makes no train/eval distinction either
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    with torch.no_grad():  # the raw kernel's scale is normalised away (up to the 1e-4 epsilon)
        vae.encoder.conv_in.weight.mul_(7.0)
        scaled_out = vae.encode(mel).mean
    torch.testing.assert_close(scaled_out, eval_out, rtol=1e-3, atol=1e-3)
    assert not torch.equal(scaled_out, eval_out)


def test_wrong_files_name_the_file(tmp_path: Path) -> None:
    path_16 = save_vae(AudioVAE("tiny_16k"), tmp_path / "tiny16.pth")
    with pytest.raises(WeightFileError, match="tiny16.pth") as err:
        load_vae(path_16, "tiny_44k")
    assert "shape mismatches" in str(err.value)
    state = load_weight_file(path_16)
    state["encoder.conv_inn.weight"] = state.pop("encoder.conv_in.weight")
    renamed = save_weight_file(state, tmp_path / "renamed.pth")
    with pytest.raises(WeightFileError, match="renamed.pth") as err:
        load_vae(renamed, "tiny_16k")
    assert "encoder.conv_in.weight" in str(err.value) and "encoder.conv_inn.weight" in str(err.value)


def test_waveform_and_latent_conveniences() -> None:
    vae, mel_conv = _fill(AudioVAE("tiny_16k")), MelConverter("16k")
    wave = 0.5 * torch.sin(torch.arange(128000) * 0.05)[None]  # (1, 128000) 8 s at 16 kHz
    with torch.no_grad():
        post = waveform_to_latent(wave, mel_conv, vae)
        mean, std = vae.encode(mel_conv(wave))
        assert post.mean.shape == post.std.shape == (1, 250, 20)  # (B, T, C) as the memmaps store
        assert torch.equal(post.mean, mean.transpose(1, 2)) and torch.equal(post.std, std.transpose(1, 2))
        mel = latent_to_mel(post.mean, vae)
        assert mel.shape == (1, 80, 500) and torch.equal(mel, vae.decode(mean))
    with pytest.raises(ValueError, match="does not match the VAE's mel preset '16k'"):
        waveform_to_latent(torch.zeros(1, 44100), MelConverter("44k"), vae)
    with pytest.raises(ValueError, match=r"\(B, T, 20\)"):
        latent_to_mel(mean, vae)  # channel-first by mistake


def test_gaussian_sampling_is_seeded() -> None:
    dist = DiagonalGaussian(torch.full((2, 3, 4), 1.0), torch.full((2, 3, 4), 0.5))
    a = dist.sample(torch.Generator().manual_seed(5))
    b = dist.sample(torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    expected = 1.0 + 0.5 * torch.empty(2, 3, 4).normal_(generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, expected)
    mean, std = dist  # unpacks like a (mean, std) pair
    assert mean is dist.mean and std is dist.std
