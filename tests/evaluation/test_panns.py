"""PANNs Cnn14 (16 kHz): official key layout, exact front end, av-benchmark preprocessing, weight files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchaudio

from mmaudio.encoders.mel import slaney_mel_filterbank
from mmaudio.evaluation.extractors.audio_frontend import pad_or_cut, prepare_av_bench_waveform, to_mono_batch
from mmaudio.evaluation.extractors.panns import (
    PANNS_PRESETS,
    Cnn14,
    PannsPreset,
    build_panns,
    dft_conv_weights,
    load_panns,
    save_panns,
)
from mmaudio.weights import MissingWeightsError
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file
from tests.helpers import assert_frozen_with_params, assert_matches_manifest, num_state_elements, tiny_model_fixtures
from tests.helpers import one_thread  # noqa: F401  (autouse)

OFFICIAL_PARAMS = 81_033_231  # 80,753,615 learned + 263,168 STFT + 16,448 mel
OFFICIAL_STATE_ELEMENTS = 81_049_500  # + BatchNorm running statistics and counters


tiny, tiny_file = tiny_model_fixtures(build_panns, save_panns, "Cnn14_16k_mAP=0.438.pth")


def _tones(batch: int, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    freqs = 100 + 3000 * torch.rand(batch, channels, 1, generator=gen)
    wave = 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, channels, t.numel(), generator=gen)
    return (wave + 0.1).squeeze(1) if channels == 1 else wave + 0.1  # DC offset: mean removal matters


def test_official_keys_match_manifest() -> None:
    assert_matches_manifest(build_panns("official", device="meta"), "panns_cnn14_16k", num_keys=84)


def test_official_parameter_count() -> None:
    model = build_panns("official", device="meta")
    assert_frozen_with_params(model, OFFICIAL_PARAMS)
    assert num_state_elements(model) == OFFICIAL_STATE_ELEMENTS


def test_front_end_matrices(tiny: Cnn14) -> None:
    real, imag = dft_conv_weights(512)
    stft = tiny.spectrogram_extractor.stft
    assert torch.equal(stft.conv_real.weight, real) and torch.equal(stft.conv_imag.weight, imag)
    assert real.shape == imag.shape == (257, 1, 512)
    hann = torch.hann_window(512, periodic=True, dtype=torch.float64).float()
    torch.testing.assert_close(real[0, 0], hann, rtol=0, atol=1e-7)  # DC row: the window itself
    assert imag[0].abs().max() == 0
    mel = slaney_mel_filterbank(16_000, 512, 64, 50.0, 8_000.0).T
    assert torch.equal(tiny.logmel_extractor.melW, mel)


def test_log_mel_is_centred_power_stft_in_db(tiny: Cnn14) -> None:
    wave = _tones(2, 1.0, 16_000)
    log_mel = tiny.log_mel(wave)
    assert log_mel.shape == (2, 1, 101, 64)  # 16000 // 160 + 1 centred frames
    spec = torch.stft(wave.double(), 512, hop_length=160, window=torch.hann_window(512, dtype=torch.float64),
                      center=True, pad_mode="reflect", return_complex=True)  # (B, 257, T)
    power = spec.abs().pow(2).transpose(1, 2)  # (B, T, 257)
    expected = 10 * torch.log10((power @ tiny.logmel_extractor.melW.double()).clamp(min=1e-10))
    torch.testing.assert_close(log_mel[:, 0].double(), expected, rtol=0, atol=2e-3)  # dB


def test_forward_contract_and_pooling(tiny: Cnn14) -> None:
    wave = _tones(2, 8.0, 16_000)
    out = tiny(wave)
    assert out["embedding"].shape == (2, 2048) and out["logits"].shape == (2, 527)
    assert (out["embedding"] >= 0).all() and (out["embedding"] > 0).any()  # ReLU'd fc1
    torch.testing.assert_close(out["logits"], tiny.fc_audioset(out["embedding"]))
    assert tiny.log_mel(wave).shape[2] == PANNS_PRESETS["tiny"].num_frames(128_000) == 801
    # clips are independent: a batch equals its items
    single = tiny(wave[1:])
    torch.testing.assert_close(single["logits"], out["logits"][1:], rtol=1e-5, atol=1e-5)


def test_extract_prepares_like_av_benchmark(tiny: Cnn14) -> None:
    stereo = _tones(2, 8.5, 44_100, channels=2, seed=1)  # (B, C, T), longer than 8 s
    out = tiny.extract(stereo, 44_100)
    # av_bench/data/audio_dataset.py:124-141: mono, minus mean, torchaudio Resample defaults, cut to 8 s
    mono = stereo.mean(dim=1)
    mono = mono - mono.mean(dim=-1, keepdim=True)
    expected_wave = torchaudio.transforms.Resample(44_100, 16_000)(mono)[:, :128_000]
    expected = tiny(expected_wave)
    torch.testing.assert_close(out["embedding"], expected["embedding"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["logits"], expected["logits"], rtol=1e-5, atol=1e-5)


def test_shared_waveform_preparation() -> None:
    wave = _tones(1, 2.0, 48_000, channels=2, seed=2)
    assert to_mono_batch(wave[0, 0]).shape == (1, 96_000)
    assert to_mono_batch(wave).shape == (1, 96_000)
    with pytest.raises(ValueError, match="floating point"):
        to_mono_batch(torch.zeros(1, 10, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        to_mono_batch(torch.zeros(1, 1, 1, 10))
    # short clips are cut, never padded; the mean is taken before resampling
    prepared = prepare_av_bench_waveform(wave, 48_000, 16_000, duration_sec=8.0)
    assert prepared.shape == (1, 32_000)
    mono = wave.mean(dim=1)
    expected = torchaudio.functional.resample(mono - mono.mean(), 48_000, 16_000)
    torch.testing.assert_close(prepared, expected, rtol=0, atol=1e-6)
    assert prepare_av_bench_waveform(wave, 48_000, 16_000, duration_sec=1.5).shape == (1, 24_000)
    same_rate = prepare_av_bench_waveform(wave[:, 0], 48_000, 48_000)
    torch.testing.assert_close(same_rate, wave[:, 0] - wave[:, 0].mean())
    assert pad_or_cut(torch.ones(2, 5), 8).tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]] * 2
    assert pad_or_cut(torch.ones(2, 5), 3).shape == (2, 3)


def test_too_short_input_raises(tiny: Cnn14) -> None:
    with pytest.raises(ValueError, match="more than 256 samples"):
        tiny(torch.zeros(1, 256))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        tiny(torch.zeros(1, 1, 1000))


def test_train_mode_stays_off(tiny: Cnn14) -> None:
    tiny.train()
    assert not tiny.training and not tiny.bn0.training


def test_tiny_save_load_round_trip(tiny: Cnn14, tiny_file: Path) -> None:
    raw = load_weight_file(tiny_file, subkey="model")  # the official nesting
    assert raw.keys() == tiny.state_dict().keys()
    loaded = load_panns(tiny_file, "tiny")
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    wave = _tones(1, 2.0, 16_000, seed=3)
    assert torch.equal(loaded(wave)["logits"], tiny(wave)["logits"])
    # through the resolver: ext_dir/<official file name>
    by_name = load_panns(None, "tiny", ext_dir=tiny_file.parent)
    assert torch.equal(by_name.fc1.weight, tiny.fc1.weight)


def test_official_file_extras_are_ignored(tiny: Cnn14, tiny_file: Path, tmp_path: Path) -> None:
    full = {"model": load_weight_file(tiny_file, subkey="model"), "iteration": 640_000}
    path = save_weight_file(full, tmp_path / "with_iteration.pth")
    loaded = load_panns(path, "tiny")
    assert torch.equal(loaded.fc_audioset.bias, tiny.fc_audioset.bias)


def test_wrong_files_raise_naming_the_file(tiny_file: Path, tmp_path: Path) -> None:
    good = load_weight_file(tiny_file, subkey="model")
    flat = save_weight_file(good, tmp_path / "flat.pth")
    with pytest.raises(WeightFileError, match=r"flat\.pth.*'model'"):
        load_panns(flat, "tiny")
    missing = save_weight_file({"model": {k: v for k, v in good.items() if k != "bn0.running_var"}},
                               tmp_path / "missing.pth")
    with pytest.raises(WeightFileError, match=r"missing\.pth.*missing.*bn0\.running_var"):
        load_panns(missing, "tiny")
    with pytest.raises(WeightFileError, match=r"Cnn14_16k_mAP=0\.438\.pth.*shape mismatches"):
        load_panns(tiny_file, "official")
    with pytest.raises(MissingWeightsError, match="Cnn14_16k_mAP=0.438.pth"):
        load_panns(None, "tiny", ext_dir=tmp_path / "nowhere")


def test_presets_keep_the_contract() -> None:
    for preset in PANNS_PRESETS.values():
        assert (preset.embedding_dim, preset.num_classes, preset.sample_rate) == (2048, 527, 16_000)
    with pytest.raises(ValueError, match="feature contract"):
        PannsPreset(name="bad", mel_bins=128)
    with pytest.raises(ValueError, match="6 conv blocks"):
        PannsPreset(name="bad", channels=(8, 8))
    with pytest.raises(KeyError, match="unknown PANNs preset"):
        Cnn14("huge")
