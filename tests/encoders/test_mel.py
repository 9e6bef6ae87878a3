"""The mel converter: presets, Slaney filterbank, shapes and values that upstream produces.

Reference numbers were produced once with upstream's converter (librosa filterbank) and are
facts about that function; the filterbank here reproduces librosa bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmaudio.encoders.mel import (MEL_PRESETS, MelConverter, get_mel_preset, hz_to_mel_slaney, mel_to_hz_slaney,
                                  slaney_mel_filterbank)


def _two_tones(sample_rate: int) -> torch.Tensor:
    """0.25 s of 440 Hz at 0.5 plus 3 kHz at 0.25, (1, L) float32."""
    t = torch.arange(int(0.25 * sample_rate), dtype=torch.float64) / sample_rate
    return (0.5 * torch.sin(2 * math.pi * 440 * t) + 0.25 * torch.sin(2 * math.pi * 3000 * t)).float()[None]


def test_presets_are_upstreams() -> None:
    p16, p44 = MEL_PRESETS["16k"], MEL_PRESETS["44k"]
    assert (p16.sample_rate, p16.n_fft, p16.n_mels, p16.hop_length, p16.win_length, p16.fmin, p16.fmax, p16.log) == (
        16000, 1024, 80, 256, 1024, 0.0, 8000.0, "log10")
    assert (p44.sample_rate, p44.n_fft, p44.n_mels, p44.hop_length, p44.win_length, p44.fmin, p44.fmax, p44.log) == (
        44100, 2048, 128, 512, 2048, 0.0, 22050.0, "ln")
    assert (p16.pad, p44.pad) == (384, 768)
    with pytest.raises(KeyError, match="unknown mel preset '22k'"):
        get_mel_preset("22k")


@pytest.mark.parametrize("preset, num_samples, n_mels, frames", [("16k", 128000, 80, 500), ("44k", 353280, 128, 690)])
def test_eight_seconds_shape(preset: str, num_samples: int, n_mels: int, frames: int) -> None:
    conv = MelConverter(preset)
    assert conv.preset.num_frames(num_samples) == frames
    wave = torch.rand(2, num_samples, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mel = conv(wave)
    assert mel.shape == (2, n_mels, frames)
    assert mel.dtype == torch.float32 and torch.isfinite(mel).all()


def test_slaney_scale_known_points() -> None:
    hz = torch.tensor([0.0, 200.0 / 3, 500.0, 1000.0, 6400.0], dtype=torch.float64)
    mels = hz_to_mel_slaney(hz)
    torch.testing.assert_close(mels, torch.tensor([0.0, 1.0, 7.5, 15.0, 42.0], dtype=torch.float64))
    torch.testing.assert_close(mel_to_hz_slaney(mels), hz)


def test_filterbank_equals_librosa_values() -> None:
    fb16 = slaney_mel_filterbank(16000, 1024, 80, 0.0, 8000.0)
    assert fb16.shape == (80, 513) and fb16.dtype == torch.float32
    assert fb16[10].nonzero().flatten().tolist() == [24, 25, 26, 27, 28]
    assert fb16[10, 24:29].tolist() == pytest.approx(
        [0.0018805701984092593, 0.013147851452231407, 0.02441513165831566, 0.018024420365691185,
         0.006757139693945646], rel=1e-6)
    assert fb16[0].nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert fb16[0, 1:5].tolist() == pytest.approx(
        [0.011267280206084251, 0.022534560412168503, 0.01990498974919319, 0.008637710474431515], rel=1e-6)
    assert fb16[79].nonzero().flatten().tolist() == list(range(475, 512))  # the Nyquist bin gets nothing
    assert float(fb16[79, 475]) == pytest.approx(0.00015543664630968124, rel=1e-6)
    assert float(fb16.double().sum()) == pytest.approx(5.118657639835874, rel=1e-7)
    assert float(fb16.max()) == pytest.approx(0.026662131771445274, rel=1e-7)

    fb44 = slaney_mel_filterbank(44100, 2048, 128, 0.0, 22050.0)
    assert fb44.shape == (128, 1025)
    assert fb44[60].nonzero().flatten().tolist() == list(range(113, 121))
    assert fb44[60, 113:121].tolist() == pytest.approx(
        [0.0008038304513320327, 0.004208287689834833, 0.007612745277583599, 0.011017202399671078,
         0.010585631243884563, 0.007288304623216391, 0.003990978002548218, 0.0006936515565030277], rel=1e-6)
    assert fb44[0].nonzero().flatten().tolist() == [1, 2]
    assert float(fb44.double().sum()) == pytest.approx(5.941555273058384, rel=1e-7)
    assert float(fb44.max()) == pytest.approx(0.032151322811841965, rel=1e-7)


@pytest.mark.parametrize("preset, bins, frame5, frame0", [
    ("16k", [10, 11, 54, 55], [0.2560904920101166, 0.6799159646034241, -0.2106531262397766, -0.30498644709587097],
     [0.5036020874977112, 0.6317196488380432, 0.02417696826159954, -0.03222933039069176]),
    ("44k", [12, 13, 14, 66], [0.8209986090660095, 2.2628841400146484, 1.553765058517456, 0.5048419833183289],
     [1.6648104190826416, 1.951149821281433, 1.7299026250839233, 0.8153160810470581]),
])
def test_values_match_upstream(preset: str, bins: list[int], frame5: list[float], frame0: list[float]) -> None:
    conv = MelConverter(preset)
    mel = conv(_two_tones(conv.preset.sample_rate))
    assert mel.shape == (1, conv.preset.n_mels, {"16k": 15, "44k": 21}[preset])  # upstream's frame counts
    assert mel[0, bins, 5].tolist() == pytest.approx(frame5, rel=1e-5, abs=1e-6)
    assert mel[0, bins, 0].tolist() == pytest.approx(frame0, rel=1e-5, abs=1e-6)  # frame 0 sees the reflect padding
    assert mel[0, :, 5].topk(4).indices.sort().values.tolist() == bins


@pytest.mark.parametrize("preset, floor", [("16k", -5.0), ("44k", math.log(1e-5))])
def test_silence_hits_the_log_clamp(preset: str, floor: float) -> None:
    mel = MelConverter(preset)(torch.zeros(1, 8192))
    torch.testing.assert_close(mel, torch.full_like(mel, floor))


def test_waveform_is_clamped_to_unit_range() -> None:
    conv = MelConverter("16k")
    loud = 3 * _two_tones(16000)
    torch.testing.assert_close(conv(loud), conv(loud.clamp(-1, 1)), rtol=0, atol=0)


def test_state_dict_layout_and_errors() -> None:
    conv = MelConverter("44k")
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {"mel_basis": (128, 1025),
                                                                          "hann_window": (2048,)}
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        conv(torch.zeros(4096))
