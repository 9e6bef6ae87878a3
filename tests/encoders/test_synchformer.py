"""Synchformer visual features: official key layout, segmenting, tiny preset, weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmaudio.encoders.motionformer import MotionformerConfig
from mmaudio.encoders.synchformer import (
    SYNCHFORMER_PRESETS,
    SynchformerPreset,
    SynchformerVisual,
    build_synchformer_visual,
    load_synchformer_visual,
    num_sync_segments,
    save_synchformer_visual,
    segment_frames,
    sync_seq_len,
)
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file
from tests.helpers import (
    assert_frozen_with_params,
    assert_matches_manifest,
    save_with,
    save_without,
    tiny_model_fixtures,
)
from tests.helpers import one_thread  # noqa: F401  (autouse)

OFFICIAL_PARAMS = 122_440_704


tiny, tiny_file = tiny_model_fixtures(build_synchformer_visual, save_synchformer_visual, "synchformer_state_dict.pth")


def _frames(batch: int, num_frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num_frames, 3, 224, 224, generator=gen)  # (B, T, C, H, W)


def test_official_keys_match_manifest() -> None:
    assert_matches_manifest(build_synchformer_visual("official", device="meta"), "synchformer_visual", num_keys=238)


def test_official_parameter_count() -> None:
    assert_frozen_with_params(build_synchformer_visual("official", device="meta"), OFFICIAL_PARAMS)


def test_segment_counts() -> None:
    assert num_sync_segments(200) == 24
    assert sync_seq_len(200) == 192
    assert sync_seq_len(200, "tiny") == 192
    assert num_sync_segments(16) == 1
    assert num_sync_segments(23) == 1  # trailing frames that do not fill a segment are dropped
    assert num_sync_segments(24) == 2
    assert num_sync_segments(15) == 0


def test_segment_frames_are_upstream_slices() -> None:
    frames = torch.arange(2 * 40 * 3 * 2 * 2, dtype=torch.float32).view(2, 40, 3, 2, 2)
    segments = segment_frames(frames)
    assert segments.shape == (2, 4, 16, 3, 2, 2)
    for i in range(4):  # upstream: x[:, i * step : i * step + segment]
        assert torch.equal(segments[:, i], frames[:, 8 * i:8 * i + 16])
    with pytest.raises(ValueError, match="at least 16 frames"):
        segment_frames(frames[:, :15])


def test_tiny_encodes_8s_clip_to_contract_shape(tiny: SynchformerVisual) -> None:
    features = tiny.encode_sync(_frames(1, 200, seed=1))
    assert features.shape == (1, 192, 768)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # random weights still respond to the video: segments of different frames differ
    assert (features[0, :8] - features[0, -8:]).abs().max() > 1e-3


def test_encode_sync_is_segmentwise_forward_of_normalised_frames(tiny: SynchformerVisual) -> None:
    frames = _frames(2, 40, seed=2)  # 4 segments per clip
    # batch of 3 segments: chunks straddle the two clips
    features = tiny.encode_sync(frames, batch_size=3)
    assert features.shape == (2, 32, 768)
    normalised = frames * 2 - 1  # mean 0.5, std 0.5
    with torch.no_grad():
        for b in range(2):
            for i in range(4):
                seg = normalised[b:b + 1, None, 8 * i:8 * i + 16]  # (1, 1, 16, C, H, W)
                ref = tiny(seg)[0, 0]  # (8, 768)
                torch.testing.assert_close(features[b, 8 * i:8 * i + 8], ref, rtol=1e-5, atol=1e-5)


def test_encode_sync_uint8_and_batching(tiny: SynchformerVisual) -> None:
    frames_u8 = (_frames(1, 24, seed=3) * 255).round().to(torch.uint8)
    from_u8 = tiny.encode_sync(frames_u8)
    from_float = tiny.encode_sync(frames_u8.float() / 255, batch_size=1)
    assert from_u8.shape == (1, 16, 768)
    torch.testing.assert_close(from_u8, from_float, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="224"):
        tiny.encode_sync(torch.zeros(1, 16, 3, 256, 256))
    with pytest.raises(ValueError, match="dtype"):
        tiny.encode_sync(torch.zeros(1, 16, 3, 224, 224, dtype=torch.int32))


def test_train_mode_stays_off(tiny: SynchformerVisual) -> None:
    tiny.train()
    assert not tiny.training and not tiny.vfeat_extractor.training


def test_tiny_save_load_round_trip(tiny: SynchformerVisual, tiny_file: Path) -> None:
    raw = load_weight_file(tiny_file)  # the official layout: one flat dict of vfeat_extractor.* tensors
    assert raw.keys() == tiny.state_dict().keys()
    assert all(k.startswith("vfeat_extractor.") for k in raw)
    loaded = load_synchformer_visual(tiny_file, "tiny")
    assert loaded.state_dict().keys() == tiny.state_dict().keys()
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    frames = _frames(1, 16, seed=4)
    assert torch.equal(loaded.encode_sync(frames), tiny.encode_sync(frames))


def test_loader_ignores_other_synchformer_parts(tiny: SynchformerVisual, tiny_file: Path, tmp_path: Path) -> None:
    # the official file holds the whole Synchformer; only vfeat_extractor.* is ours
    full = load_weight_file(tiny_file)
    full["afeat_extractor.cls_token"] = torch.zeros(1, 1, 768)
    full["transformer.tok_emb"] = torch.zeros(3)
    full["vproj.weight"] = torch.zeros(768, 768)
    path = save_weight_file(full, tmp_path / "full.pth")
    loaded = load_synchformer_visual(path, "tiny")
    assert torch.equal(loaded.vfeat_extractor.cls_token, tiny.vfeat_extractor.cls_token)


def test_wrong_files_raise_naming_the_file(tiny_file: Path, tmp_path: Path) -> None:
    good = load_weight_file(tiny_file)

    path = save_with(good, {"vfeat_extractor.blocks.7.norm1.weight": torch.ones(768)}, tmp_path / "extra.pth")
    with pytest.raises(WeightFileError, match=r"extra\.pth.*unexpected.*blocks\.7\.norm1\.weight"):
        load_synchformer_visual(path, "tiny")

    path = save_without(good, "vfeat_extractor.temp_embed", tmp_path / "missing.pth")
    with pytest.raises(WeightFileError, match=r"missing\.pth.*missing.*temp_embed"):
        load_synchformer_visual(path, "tiny")

    path = save_with(good, {"vfeat_extractor.pos_embed": torch.zeros(1, 197, 768)}, tmp_path / "shape.pth")
    with pytest.raises(WeightFileError, match=r"shape\.pth.*pos_embed.*\(1, 197, 768\)"):
        load_synchformer_visual(path, "tiny")

    unprefixed = {k.removeprefix("vfeat_extractor."): v for k, v in good.items()}
    path = save_weight_file(unprefixed, tmp_path / "bare.pth")
    with pytest.raises(WeightFileError, match=r"bare\.pth.*no 'vfeat_extractor\.\*' entries"):
        load_synchformer_visual(path, "tiny")

    # the tiny file does not fit the official architecture
    with pytest.raises(WeightFileError, match=r"synchformer_state_dict\.pth.*shape mismatches"):
        load_synchformer_visual(tiny_file, "official")


def test_presets_keep_the_feature_contract() -> None:
    for preset in SYNCHFORMER_PRESETS.values():
        assert preset.features_per_segment == 8
        assert preset.motionformer.output_dim == 768
    assert not SYNCHFORMER_PRESETS["official"].motionformer.has_feature_proj  # official keys stay exact
    with pytest.raises(ValueError, match="feature contract"):
        SynchformerPreset(name="narrow", motionformer=MotionformerConfig(embed_dim=384, num_heads=6))
    with pytest.raises(ValueError, match="feature contract"):
        SynchformerPreset(name="narrow_out", motionformer=MotionformerConfig(embed_dim=32, num_heads=2, feature_dim=512))


def test_feature_proj_exists_only_when_widths_differ() -> None:
    tiny = build_synchformer_visual("tiny", device="meta")
    assert tuple(tiny.state_dict()["vfeat_extractor.feature_proj.weight"].shape) == (768, 32)
    official = build_synchformer_visual("official", device="meta")
    assert not any("feature_proj" in k for k in official.state_dict())
    with pytest.raises(KeyError, match="unknown Synchformer preset"):
        SynchformerVisual("huge")
