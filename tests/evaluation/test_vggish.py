"""VGGish: official key layout, log-mel examples as av-benchmark frames them, weight files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from mmaudio.evaluation.extractors.vggish import (
    VGGISH_PRESETS,
    Vggish,
    VggishPreset,
    build_vggish,
    htk_mel_matrix,
    load_vggish,
    num_examples,
    save_vggish,
    waveform_to_examples,
)
from mmaudio.weights import MissingWeightsError
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file
from tests.helpers import (
    assert_frozen_with_params,
    assert_matches_manifest,
    save_with,
    save_without,
    tiny_model_fixtures,
)
from tests.helpers import one_thread  # noqa: F401  (autouse)

OFFICIAL_PARAMS = 72_141_184


tiny, tiny_file = tiny_model_fixtures(build_vggish, save_vggish, "vggish-10086976.pth")


def _tones(batch: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 16_000
    freqs = 200 + 3000 * torch.rand(batch, 1, generator=gen)
    return 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, num_samples, generator=gen)


def _numpy_examples(wave: np.ndarray) -> np.ndarray:
    """Independent float64 numpy version of VGGish's framing: (L,) -> (N, 96, 64) float32."""
    n_frames = 1 + (len(wave) - 400) // 160
    frames = np.stack([wave[i * 160:i * 160 + 400] for i in range(n_frames)]).astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    magnitude = np.abs(np.fft.rfft(frames * window, 512))  # (T, 257)
    to_mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    bins = to_mel(np.linspace(0, 8000, 257))
    edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (64, 1)
    weights = np.maximum(0, np.minimum((bins - lower) / (center - lower), (upper - bins) / (upper - center))).T
    weights[0] = 0
    log_mel = np.log(magnitude @ weights + 0.01)  # (T, 64)
    n_examples = 1 + (n_frames - 96) // 96
    return np.stack([log_mel[i * 96:i * 96 + 96] for i in range(n_examples)]).astype(np.float32)


def test_official_keys_match_manifest() -> None:
    assert_matches_manifest(build_vggish("official", device="meta"), "vggish", num_keys=18)


def test_official_parameter_count() -> None:
    assert_frozen_with_params(build_vggish("official", device="meta"), OFFICIAL_PARAMS)


def test_example_counts() -> None:
    assert num_examples(128_000) == 8  # 8 s: 798 frames -> 8 examples of 96
    assert num_examples(400 + 160 * 95) == 1
    assert num_examples(400 + 160 * 95 - 1) == 0
    assert num_examples(100) == 0
    with pytest.raises(ValueError, match="at least one 0.96 s example"):
        waveform_to_examples(torch.zeros(1, 15_000))


def test_examples_match_numpy_reference() -> None:
    wave = _tones(2, 40_000, seed=1)  # 2.5 s: 248 frames -> 2 examples, tail dropped
    examples = waveform_to_examples(wave)
    assert examples.shape == (2, 2, 96, 64) and examples.dtype == torch.float32
    for b in range(2):
        expected = _numpy_examples(wave[b].numpy())
        np.testing.assert_allclose(examples[b].numpy(), expected, rtol=0, atol=1e-5)


def test_mel_matrix_shape_and_triangles() -> None:
    matrix = htk_mel_matrix(64, 257, 16_000, 125.0, 7_500.0)
    assert matrix.shape == (257, 64)
    assert (matrix[0] == 0).all()  # no DC
    assert matrix.max() <= 1.0 and (matrix.max(axis=0) > 0.5).all()  # each band hits near its peak
    assert (matrix[np.linspace(0, 8000, 257) > 7_500] == 0).all()
    with pytest.raises(ValueError, match="band edges"):
        htk_mel_matrix(64, 257, 16_000, 125.0, 9_000.0)


def test_forward_is_per_example_without_final_relu(tiny: Vggish) -> None:
    examples = waveform_to_examples(_tones(1, 128_000, seed=2))[0, :, None]  # (8, 1, 96, 64)
    out = tiny(examples)
    assert out.shape == (8, 128)
    assert (out < 0).any()  # the last layer is linear (av-benchmark drops the final ReLU)
    torch.testing.assert_close(tiny(examples[3:4]), out[3:4], rtol=1e-5, atol=1e-5)


def test_extract_prepares_like_av_benchmark(tiny: Vggish) -> None:
    gen = torch.Generator().manual_seed(3)
    stereo = 0.2 * torch.randn(2, 2, int(8.3 * 22_050), generator=gen) + 0.05  # (B, C, T) at 22.05 kHz
    out = tiny.extract(stereo, 22_050)["embedding"]
    assert out.shape == (2, 8, 128)
    mono = stereo.mean(dim=1)
    mono = mono - mono.mean(dim=-1, keepdim=True)
    wave16 = torchaudio.transforms.Resample(22_050, 16_000)(mono)[:, :128_000]
    expected = tiny(waveform_to_examples(wave16).flatten(0, 1)[:, None]).view(2, 8, 128)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_tiny_save_load_round_trip(tiny: Vggish, tiny_file: Path) -> None:
    raw = load_weight_file(tiny_file)  # one flat dict, like vggish-10086976.pth
    assert raw.keys() == tiny.state_dict().keys()
    loaded = load_vggish(tiny_file, "tiny")
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    by_name = load_vggish(None, "tiny", ext_dir=tiny_file.parent)
    assert torch.equal(by_name.embeddings[4].bias, tiny.embeddings[4].bias)


def test_hub_postprocessor_entries_are_ignored(tiny: Vggish, tiny_file: Path, tmp_path: Path) -> None:
    pca = {"pproc.pca_matrix": torch.eye(128), "pproc.pca_means": torch.zeros(128, 1)}
    loaded = load_vggish(save_with(load_weight_file(tiny_file), pca, tmp_path / "hub.pth"), "tiny")
    assert torch.equal(loaded.features[0].weight, tiny.features[0].weight)


def test_wrong_files_raise_naming_the_file(tiny_file: Path, tmp_path: Path) -> None:
    good = load_weight_file(tiny_file)
    missing = save_without(good, "embeddings.4.bias", tmp_path / "missing.pth")
    with pytest.raises(WeightFileError, match=r"missing\.pth.*missing.*embeddings\.4\.bias"):
        load_vggish(missing, "tiny")
    only_pca = save_weight_file({"pproc.pca_means": torch.zeros(128, 1)}, tmp_path / "pca.pth")
    with pytest.raises(WeightFileError, match=r"pca\.pth holds no VGGish weights"):
        load_vggish(only_pca, "tiny")
    with pytest.raises(WeightFileError, match=r"vggish-10086976\.pth.*shape mismatches"):
        load_vggish(tiny_file, "official")
    with pytest.raises(MissingWeightsError, match="vggish-10086976.pth"):
        load_vggish(tmp_path / "absent.pth", "tiny")


def test_presets_keep_the_contract() -> None:
    for preset in VGGISH_PRESETS.values():
        assert preset.embedding_dim == 128
    assert VGGISH_PRESETS["official"].flat_dim == 512 * 4 * 6
    with pytest.raises(ValueError, match="feature contract"):
        VggishPreset(name="bad", embedding_dim=64)
    with pytest.raises(ValueError, match="pool 4 times"):
        VggishPreset(name="bad", layers=(8, "M", 8))
    with pytest.raises(KeyError, match="unknown VGGish preset"):
        Vggish("huge")
