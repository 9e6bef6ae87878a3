"""Full Synchformer (DeSync): official key layout, audio preprocessing, the DeSync windows, weight files."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torchaudio

from mmaudio.encoders.synchformer import build_synchformer_visual, load_synchformer_visual
from mmaudio.evaluation.extractors.synchformer_av import (
    CLIP_SAMPLES,
    MEL_MEAN,
    MEL_STD,
    SYNCHFORMER_AV_PRESETS,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    AudioBranchConfig,
    DesyncResult,
    SynchformerAV,
    SynchformerAVPreset,
    build_synchformer_av,
    desync_score,
    load_synchformer_av,
    num_audio_segments,
    offset_grid,
    prepare_sync_audio,
    save_synchformer_av,
    segment_audio,
    sync_log_mel,
    window_bounds,
)
from mmaudio.weights import MissingWeightsError
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file
from tests.helpers import (
    assert_frozen_with_params,
    assert_matches_manifest,
    load_manifest,
    num_state_elements,
    save_with,
    save_without,
    tiny_model_fixtures,
)
from tests.helpers import one_thread  # noqa: F401  (autouse)

OFFICIAL_PARAMS = 237_460_245
PART_PARAMS = {
    "vfeat_extractor.": 122_440_704,
    "afeat_extractor.": 92_400_384,
    "vproj.": 590_592,
    "aproj.": 590_592,
    "transformer.": 21_437_973,
}


tiny, tiny_file = tiny_model_fixtures(build_synchformer_av, save_synchformer_av, "synchformer_state_dict.pth")


@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, torch.Tensor]:
    """One 8 s clip: (1, 200, 3, 224, 224) uint8 frames and (1, 128000) audio at 16 kHz."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 200, 3, 224, 224), dtype=torch.uint8, generator=gen)
    t = torch.arange(CLIP_SAMPLES) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t * (1 + t / 8)) + 0.05 * torch.randn(CLIP_SAMPLES, generator=gen)
    return frames, wave[None]


def test_official_keys_match_manifest() -> None:
    assert_matches_manifest(build_synchformer_av("official", device="meta"), "synchformer_full", num_keys=513)


def test_visual_part_is_the_visual_manifest() -> None:
    full = load_manifest("synchformer_full")
    visual = load_manifest("synchformer_visual")
    assert {k: v for k, v in full.items() if k.startswith("vfeat_extractor.")} == visual


def test_official_parameter_counts() -> None:
    model = build_synchformer_av("official", device="meta")
    assert_frozen_with_params(model, OFFICIAL_PARAMS)
    assert num_state_elements(model) == OFFICIAL_PARAMS  # no buffers
    state = model.state_dict()
    for prefix, count in PART_PARAMS.items():
        assert sum(v.numel() for k, v in state.items() if k.startswith(prefix)) == count, prefix


def test_preset_contract_is_enforced() -> None:
    official = SYNCHFORMER_AV_PRESETS["official"]
    with pytest.raises(ValueError, match="breaks the contract"):
        dataclasses.replace(official, audio=AudioBranchConfig(feature_dim=512))
    with pytest.raises(ValueError, match="breaks the contract"):
        dataclasses.replace(official, audio=AudioBranchConfig(spec_frames=80))  # 7 vectors per segment
    assert official.num_sync_tokens == 198  # 1 + 14*8 + 1 + 14*6, the official position table
    assert SYNCHFORMER_AV_PRESETS["tiny"].num_sync_tokens == 198


def test_audio_segments_are_upstream_slices() -> None:
    assert num_audio_segments(CLIP_SAMPLES) == 24
    assert num_audio_segments(WINDOW_SAMPLES) == 14
    assert num_audio_segments(10240) == 1
    assert num_audio_segments(15359) == 1
    assert num_audio_segments(10239) == 0
    wave = torch.arange(2 * 30000, dtype=torch.float32).view(2, 30000)
    segments = segment_audio(wave)
    assert segments.shape == (2, 4, 10240)
    for i in range(4):  # extract.py:25-28
        assert torch.equal(segments[:, i], wave[:, i * 5120 : i * 5120 + 10240])


def test_log_mel_matches_an_independent_stft() -> None:
    gen = torch.Generator().manual_seed(1)
    segments = 0.2 * torch.randn(2, 3, 10240, generator=gen)
    mel = sync_log_mel(segments)
    assert mel.shape == (2, 3, 128, 66)
    # torch.stft: periodic Hann of 400 centred in 1024, centred frames with reflect padding, power 2
    window = torch.hann_window(400, periodic=True, dtype=torch.float64)
    spec = torch.stft(segments.double().flatten(0, 1), n_fft=1024, hop_length=160, win_length=400,
                      window=window, center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    fb = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 128, 16000, norm=None, mel_scale="htk").double()
    reference = (torch.log((fb.T @ spec) + 1e-6) - MEL_MEAN) / (2 * MEL_STD)  # (6, 128, 65)
    assert torch.allclose(mel[..., :65].flatten(0, 1).double(), reference, atol=2e-4)
    # the 66th frame is padding added after the log: 0, normalised
    assert torch.allclose(mel[..., 65], torch.full_like(mel[..., 65], -MEL_MEAN / (2 * MEL_STD)))


def test_prepare_sync_audio_mono_resample_cut() -> None:
    gen = torch.Generator().manual_seed(2)
    stereo = 0.1 * torch.randn(2, 2, 8 * 44100 + 500, generator=gen) + 0.3  # DC offset: must survive
    out = prepare_sync_audio(stereo, 44100)
    expected = torchaudio.transforms.Resample(44100, 16000)(stereo.mean(dim=1))[:, :CLIP_SAMPLES]
    assert out.shape == (2, CLIP_SAMPLES)
    assert torch.equal(out, expected)
    assert out.mean().item() == pytest.approx(0.3, abs=0.01)  # no mean removal for Synchformer
    with pytest.raises(ValueError, match="too short"):
        prepare_sync_audio(torch.zeros(1, 16000 * 7), 16000)


def test_offset_grid_and_windows() -> None:
    grid = offset_grid()
    assert grid.dtype == torch.float32 and grid.shape == (21,)
    assert torch.allclose(grid, torch.arange(-10, 11) * 0.2, atol=1e-6)
    assert grid[10].item() == 0.0
    first, last = window_bounds()
    assert first == pytest.approx((0.0, 4.8)) and last == pytest.approx((3.2, 8.0))
    assert WINDOW_FRAMES == 120 and WINDOW_SAMPLES == 76800


def test_tiny_keeps_the_contract(tiny: SynchformerAV, clip: tuple[torch.Tensor, torch.Tensor]) -> None:
    frames, wave = clip
    video = tiny.encode_video_segments(frames)
    audio = tiny.encode_audio_segments(wave)
    assert video.shape == (1, 24, 8, 768)
    assert audio.shape == (1, 24, 6, 768)
    logits = tiny.compare(video[:, :14], audio[:, :14])
    assert logits.shape == (1, 21)
    # the logits see both streams
    assert not torch.allclose(logits, tiny.compare(video[:, :14], audio[:, 10:]))
    assert not torch.allclose(logits, tiny.compare(video[:, 10:], audio[:, :14]))


def test_desync_uses_first_and_last_windows(tiny: SynchformerAV, clip: tuple[torch.Tensor, torch.Tensor]) -> None:
    frames, wave = clip
    result = tiny.desync(frames, wave)
    assert result.logits.shape == (1, 2, 21)
    # 0-4.8 s and 3.2-8 s, cut as separate inputs (evaluate.py:180,185 slice segments 0-13 and 10-23)
    first = tiny.predict_offsets(frames[:, :120], wave[:, :76800])
    last = tiny.predict_offsets(frames[:, 80:], wave[:, 51200:])
    assert torch.allclose(result.logits[:, 0], first, atol=1e-5)
    assert torch.allclose(result.logits[:, 1], last, atol=1e-5)
    assert torch.equal(result.offsets_sec, offset_grid()[result.logits.argmax(-1)])
    assert result.per_clip.item() == pytest.approx(result.offsets_sec.abs().mean().item())


def test_predict_offsets_rejects_other_lengths(tiny: SynchformerAV, clip: tuple[torch.Tensor, torch.Tensor]) -> None:
    frames, wave = clip
    with pytest.raises(ValueError, match="120 frames"):
        tiny.predict_offsets(frames[:, :112], wave[:, :76800])
    with pytest.raises(ValueError, match="76800"):
        tiny.predict_offsets(frames[:, :120], wave[:, :70000])
    with pytest.raises(ValueError, match="200 frames"):
        tiny.desync(frames[:, :199], wave)


def test_desync_score_is_mean_absolute_offset() -> None:
    logits = torch.zeros(2, 2, 21)
    logits[0, 0, 0] = 1.0  # -2.0 s
    logits[0, 1, 10] = 1.0  # 0.0 s
    logits[1, 0, 13] = 1.0  # +0.6 s
    logits[1, 1, 6] = 1.0  # -0.8 s
    result = DesyncResult.from_logits(logits)
    assert torch.allclose(result.offsets_sec, torch.tensor([[-2.0, 0.0], [0.6, -0.8]]))
    assert desync_score(result.offsets_sec) == pytest.approx((2.0 + 0.0 + 0.6 + 0.8) / 4, abs=1e-6)
    with pytest.raises(ValueError):
        desync_score(torch.zeros(0, 2))


def test_tiny_file_round_trip(tiny: SynchformerAV, tiny_file: Path, clip: tuple[torch.Tensor, torch.Tensor]) -> None:
    frames, wave = clip
    state = load_weight_file(tiny_file)
    assert set(state) == set(tiny.state_dict())  # one flat dict, the official nesting
    assert "transformer.off_head.weight" in state and "afeat_extractor.ast.layernorm.weight" in state
    loaded = load_synchformer_av(tiny_file, "tiny")
    args = (frames[:, :120], wave[:, :76800])
    assert torch.equal(loaded.predict_offsets(*args), tiny.predict_offsets(*args))
    # the visual-only loader reads the visual part of the same file
    visual = load_synchformer_visual(tiny_file, "tiny")
    assert torch.equal(visual.encode_sync(frames[:, :32]), tiny.encode_sync(frames[:, :32]))


def test_loading_is_strict(tiny_file: Path, tmp_path: Path) -> None:
    state = load_weight_file(tiny_file)
    save_without(state, "transformer.pos_emb_cfg.pos_emb", tmp_path / "missing.pth")
    with pytest.raises(WeightFileError, match="transformer.pos_emb_cfg.pos_emb"):
        load_synchformer_av(tmp_path / "missing.pth", "tiny")
    save_with(state, {"afeat_extractor.classifier.dense.weight": torch.zeros(527, 768)}, tmp_path / "extra.pth")
    with pytest.raises(WeightFileError, match="afeat_extractor.classifier.dense.weight"):
        load_synchformer_av(tmp_path / "extra.pth", "tiny")
    # a visual-only file is not a full Synchformer
    save_weight_file(build_synchformer_visual("tiny", seed=0).state_dict(), tmp_path / "visual.pth")
    with pytest.raises(WeightFileError, match="missing keys"):
        load_synchformer_av(tmp_path / "visual.pth", "tiny")


def test_missing_file_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        load_synchformer_av(preset="tiny", ext_dir=tmp_path)
    message = str(err.value)
    assert "synchformer_state_dict.pth" in message
    assert "github.com/hkchengrex/MMAudio/releases" in message


def test_preset_registry() -> None:
    assert set(SYNCHFORMER_AV_PRESETS) >= {"official", "tiny"}
    assert all(isinstance(p, SynchformerAVPreset) for p in SYNCHFORMER_AV_PRESETS.values())
    with pytest.raises(KeyError, match="unknown Synchformer preset"):
        build_synchformer_av("huge", device="meta")
