"""PaSST: official key layout, hear21passt's front end, 10 s window, weight files."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torchaudio

from mmaudio.evaluation.extractors.passt import (
    PASST_PRESETS,
    Passt,
    PasstPreset,
    build_passt,
    kaldi_mel_banks,
    load_passt,
    passt_log_mel,
    save_passt,
)
from mmaudio.weights import MissingWeightsError
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file
from tests.helpers import assert_frozen_with_params, assert_matches_manifest, save_without, tiny_model_fixtures
from tests.helpers import one_thread  # noqa: F401  (autouse)

OFFICIAL_PARAMS = 86_153_758


tiny, tiny_file = tiny_model_fixtures(build_passt, save_passt, "passt-s-f128-p16-s10-ap.476-swa.pt")


def _tones(batch: int, seconds: float, rate: int = 32_000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    freqs = 100 + 5000 * torch.rand(batch, 1, generator=gen)
    return 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, t.numel(), generator=gen) + 0.1


def test_official_keys_match_manifest() -> None:
    assert_matches_manifest(build_passt("official", device="meta"), "passt", num_keys=159)


def test_official_parameter_count() -> None:
    assert_frozen_with_params(build_passt("official", device="meta"), OFFICIAL_PARAMS)
    assert PASST_PRESETS["official"].grid_size == (12, 99)


def test_mel_banks_equal_torchaudio_kaldi() -> None:
    ours = kaldi_mel_banks(128, 1024, 32_000, 0.0, 15_000)
    expected, _ = torchaudio.compliance.kaldi.get_mel_banks(128, 1024, 32_000, 0.0, 15_000, vtln_low=100.0,
                                                            vtln_high=-500.0, vtln_warp_factor=1.0)
    assert ours.shape == (128, 512)
    assert torch.equal(ours, expected)


def test_log_mel_front_end() -> None:
    wave = _tones(2, 1.0, seed=1)
    mel = passt_log_mel(wave)
    assert mel.shape == (2, 128, 100)  # 32000 - 1 samples after pre-emphasis -> 1 + 31999 // 320 frames
    emphasised = wave[:, 1:] - 0.97 * wave[:, :-1]
    spec = torch.stft(emphasised.double(), 1024, hop_length=320, win_length=800,
                      window=torch.hann_window(800, periodic=False, dtype=torch.float64), center=True,
                      return_complex=True)
    banks = torch.nn.functional.pad(kaldi_mel_banks(128, 1024, 32_000, 0.0, 15_000), (0, 1)).double()
    expected = ((banks @ spec.abs().pow(2) + 1e-5).log() + 4.5) / 5
    torch.testing.assert_close(mel.double(), expected, rtol=0, atol=2e-4)  # float32 STFT, low-energy bins
    assert passt_log_mel(_tones(1, 10.0)).shape == (1, 128, 1000)


def test_forward_contract(tiny: Passt) -> None:
    wave = _tones(2, 10.0, seed=2)
    out = tiny(wave)
    assert out["embedding"].shape == (2, 768) and out["logits"].shape == (2, 527)
    torch.testing.assert_close(out["logits"], tiny.head(out["embedding"]))
    single = tiny(wave[:1])
    torch.testing.assert_close(single["embedding"], out["embedding"][:1], rtol=1e-5, atol=1e-5)
    # head_dist is stored but not used at inference
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        other.head_dist.weight.add_(1.0)
    assert torch.equal(other(wave[:1])["logits"], single["logits"])
    with pytest.raises(ValueError, match="time patches"):
        tiny(_tones(1, 10.5))


def test_extract_cuts_to_8s_and_pads_to_the_10s_window(tiny: Passt) -> None:
    wave = _tones(1, 9.0, rate=48_000, seed=3)
    out = tiny.extract(wave, 48_000)
    # av_bench: AudioDataset(sr=32000) (mean removed over the whole file, resampled, cut to 8 s),
    # then extract.py:166-169 pads with zeros to 320000 samples
    centred = wave - wave.mean()
    wave32 = torchaudio.transforms.Resample(48_000, 32_000)(centred)[:, :256_000]
    expected = tiny(torch.nn.functional.pad(wave32, (0, 64_000)))
    torch.testing.assert_close(out["embedding"], expected["embedding"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    # with duration_sec=10 the whole window is audio
    assert tiny.extract(_tones(1, 10.0, seed=4), 32_000, duration_sec=10.0)["embedding"].shape == (1, 768)


def test_tiny_save_load_round_trip(tiny: Passt, tiny_file: Path, tmp_path: Path) -> None:
    raw = load_weight_file(tiny_file)  # flat network state dict
    assert raw.keys() == tiny.state_dict().keys()
    assert not any(k.startswith(("mel.", "net.")) for k in raw)
    loaded = load_passt(tiny_file, "tiny")
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # a checkpoint nested under "model" (accepted by hear21passt's checkpoint filter) reads too
    nested = save_weight_file({"model": raw}, tmp_path / "nested.pt")
    assert torch.equal(load_passt(nested, "tiny").time_new_pos_embed, tiny.time_new_pos_embed)
    by_name = load_passt(None, "tiny", ext_dir=tiny_file.parent)
    assert torch.equal(by_name.cls_token, tiny.cls_token)


def test_wrong_files_raise_naming_the_file(tiny_file: Path, tmp_path: Path) -> None:
    good = load_weight_file(tiny_file)
    missing = save_without(good, "head_dist.bias", tmp_path / "missing.pt")
    with pytest.raises(WeightFileError, match=r"missing\.pt.*missing.*head_dist\.bias"):
        load_passt(missing, "tiny")
    wrapped = save_weight_file({"net": good}, tmp_path / "wrapped.pt")
    with pytest.raises(WeightFileError, match=r"wrapped\.pt.*not tensors"):
        load_passt(wrapped, "tiny")
    with pytest.raises(WeightFileError, match=r"ap\.476-swa\.pt.*shape mismatches"):
        load_passt(tiny_file, "official")
    with pytest.raises(MissingWeightsError, match="passt-s-f128-p16-s10-ap.476-swa.pt"):
        load_passt(None, "tiny", ext_dir=tmp_path / "nowhere")


def test_presets_keep_the_contract() -> None:
    for preset in PASST_PRESETS.values():
        assert (preset.embed_dim, preset.num_classes, preset.input_fdim) == (768, 527, 128)
    assert PASST_PRESETS["tiny"].grid_size == (8, 62)
    with pytest.raises(ValueError, match="feature contract"):
        PasstPreset(name="bad", embed_dim=384, num_heads=6)
    with pytest.raises(ValueError, match="time position embedding"):
        PasstPreset(name="bad", input_tdim=500)
    with pytest.raises(KeyError, match="unknown PaSST preset"):
        Passt("huge")
