"""ImageBind huge (IB-score): key layout of the vision/audio towers, av-benchmark's preprocessing, weight files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchaudio
import torchvision.transforms.v2 as v2

from mmaudio.evaluation.extractors.imagebind import (
    BUILT_MODALITIES,
    FBANK_MEAN,
    FBANK_STD,
    IMAGEBIND_PRESETS,
    SKIPPED_MODALITIES,
    ImageBind,
    build_imagebind,
    ib_audio_clip_bounds,
    ib_fbank,
    ib_score,
    load_imagebind,
    prepare_ib_audio,
    prepare_ib_video,
    save_imagebind,
    select_built_modalities,
)
from mmaudio.weights import MissingWeightsError
from mmaudio.weights import WeightFileError, load_weight_file
from tests.helpers import assert_keys_match, load_manifest, save_with, save_without, tiny_model_fixtures
from tests.helpers import one_thread  # noqa: F401  (autouse)

VISION_PARAMS = 632_829_440
AUDIO_PARAMS = 86_235_648  # + 1 buffer (the audio logit scale)
ALL_TOWERS_PARAMS = 1_200_781_057  # the whole file, six towers


tiny, tiny_file = tiny_model_fixtures(build_imagebind, save_imagebind, "imagebind_huge.pth")


def _frames(batch: int, num: int, height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, num, 3, height, width), dtype=torch.uint8, generator=gen)


def test_official_keys_match_manifest_subset() -> None:
    manifest = load_manifest("imagebind_huge")
    assert len(manifest) == 1311
    built = {k: v for k, v in manifest.items() if k.split(".")[1] in BUILT_MODALITIES}
    assert len(built) == 569
    assert_keys_match(build_imagebind("official", device="meta"), built)
    # what is not built belongs to the four other towers, and nothing else
    assert {k.split(".")[1] for k in set(manifest) - set(built)} == set(SKIPPED_MODALITIES)
    assert {k.split(".")[0] for k in manifest} == {
        "modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors",
    }


def test_official_parameter_counts() -> None:
    model = build_imagebind("official", device="meta")
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == VISION_PARAMS + AUDIO_PARAMS
    assert sum(p.numel() for k, p in params.items() if ".vision." in k) == VISION_PARAMS
    assert sum(p.numel() for k, p in params.items() if ".audio." in k) == AUDIO_PARAMS
    assert [k for k, _ in model.named_buffers()] == ["modality_postprocessors.audio.1.log_logit_scale"]
    assert not any(p.requires_grad for p in params.values())
    # the manifest's other towers account for the rest of the file (the text mask is a buffer)
    manifest = load_manifest("imagebind_huge")
    non_param = {"modality_preprocessors.text.mask"} | {
        f"modality_postprocessors.{m}.1.log_logit_scale" for m in ("audio", "depth", "thermal", "imu")
    }
    total = sum(math.prod(s) for k, s in manifest.items() if k not in non_param)
    assert total == ALL_TOWERS_PARAMS


def test_select_built_modalities() -> None:
    state = {
        "modality_trunks.vision.blocks.0.norm_1.weight": torch.ones(2),
        "modality_heads.audio.2.weight": torch.ones(2, 2),
        "modality_trunks.text.blocks.0.norm_1.weight": torch.ones(2),
        "modality_postprocessors.imu.1.log_logit_scale": torch.ones(()),
    }
    kept = select_built_modalities(state, source="x.pth")
    assert set(kept) == {"modality_trunks.vision.blocks.0.norm_1.weight", "modality_heads.audio.2.weight"}
    with pytest.raises(WeightFileError, match="modality_trunks.video.blocks.0.w"):
        select_built_modalities({"modality_trunks.video.blocks.0.w": torch.ones(1)}, source="x.pth")
    with pytest.raises(WeightFileError, match="logit_scale"):
        select_built_modalities({"logit_scale": torch.ones(())}, source="x.pth")


def test_video_preprocessing_matches_av_benchmark_transform() -> None:
    frames = _frames(1, 4, 180, 320, seed=0)  # landscape: short side 180 -> 224 x 398
    clips = prepare_ib_video(frames)
    assert clips.shape == (1, 9, 3, 2, 224, 224)
    # av-benchmark's own transform written as a v2.Compose (video_dataset.py:43-49)
    transform = v2.Compose([
        v2.Resize(224, interpolation=v2.InterpolationMode.BICUBIC),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
    ])
    full = transform(frames[0]).as_subclass(torch.Tensor)  # (4, 3, 224, 398)
    assert full.shape == (4, 3, 224, 398)
    lefts = [0, 87, 174]  # start, ceil((398 - 224) / 2), end
    for pair in range(3):
        for crop, left in enumerate(lefts):
            expected = full[pair : pair + 2, :, :, left : left + 224].transpose(0, 1)  # (3, 2, 224, 224)
            assert torch.equal(clips[0, 3 * pair + crop], expected), (pair, crop)


def test_video_crops_follow_the_long_side() -> None:
    clips = prepare_ib_video(_frames(1, 2, 300, 224, seed=1))  # portrait: crops move down
    assert clips.shape == (1, 3, 3, 2, 224, 224)
    assert not torch.equal(clips[0, 0], clips[0, 2])
    square = prepare_ib_video(_frames(1, 3, 224, 224, seed=2))  # all three crops are the frame
    assert torch.equal(square[0, 0], square[0, 1]) and torch.equal(square[0, 1], square[0, 2])
    with pytest.raises(ValueError, match="uint8"):
        prepare_ib_video(torch.rand(1, 4, 3, 224, 224))


def test_audio_clip_bounds() -> None:
    # pytorchvideo ConstantClipsPerVideoSampler(2, 3): starts k * (d - 2) / 3, not spread to the end
    assert ib_audio_clip_bounds(128000) == [(0, 32000), (32000, 64000), (64000, 96000)]
    assert ib_audio_clip_bounds(48000) == [(0, 32000), (5333, 37333), (10666, 42666)]
    assert ib_audio_clip_bounds(20000) == [(0, 32000)] * 3  # shorter than a clip: the same clip 3 times
    assert ib_audio_clip_bounds(32000) == [(0, 32000)] * 3


def test_fbank_settings_and_normalisation() -> None:
    gen = torch.Generator().manual_seed(3)
    clip = 0.1 * torch.randn(1, 32000, generator=gen)
    out = ib_fbank(clip)
    assert out.shape == (1, 128, 204)
    direct = torchaudio.compliance.kaldi.fbank(
        clip, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
    ).T  # (128, 198)
    assert direct.shape == (128, 198)
    assert torch.allclose(out[0, :, :198], (direct - FBANK_MEAN) / FBANK_STD, atol=1e-6)
    assert torch.allclose(out[0, :, 198:], torch.full((128, 6), -FBANK_MEAN / FBANK_STD))  # zero pad, normalised


def test_audio_preprocessing_channel_zero_and_in_place_means() -> None:
    gen = torch.Generator().manual_seed(4)
    stereo = 0.1 * torch.randn(1, 2, 48000, generator=gen) + torch.tensor([0.2, -0.5])[None, :, None]
    out = prepare_ib_audio(stereo)
    assert out.shape == (1, 3, 1, 128, 204)
    assert torch.equal(stereo, stereo.clone())  # the caller's tensor is not modified
    # upstream's order: each clip (a view of the file) loses its mean over both channels in place,
    # so the overlapping later clips see the earlier subtractions; the fbank reads channel 0
    wave = stereo[0].clone()
    for i, (start, end) in enumerate(ib_audio_clip_bounds(48000)):
        view = wave[:, start:end]
        view -= view.mean()
        assert torch.equal(out[0, i], ib_fbank(view[:1])), i
    # channel 1 only shifts the clip means, which the fbank's per-frame DC removal takes out (up to
    # rounding, amplified by the log in near-empty low bins): a loud, different second channel leaves
    # the result that of channel 0 alone, where a downmix would change it
    t = torch.arange(48000) / 16000
    loud = torch.stack((stereo[0, 0], 0.8 * torch.sin(2 * math.pi * 1000 * t)))[None]
    channel0 = prepare_ib_audio(stereo[:, 0])
    assert (prepare_ib_audio(loud) - channel0).abs().mean() < 1e-3
    assert (prepare_ib_audio(loud.mean(dim=1)) - channel0).abs().mean() > 0.1


def test_tiny_embeddings_contract(tiny: ImageBind) -> None:
    frames = _frames(2, 4, 240, 320, seed=5)
    video = tiny.encode_video(frames)
    assert video.shape == (2, 1024)
    assert (video.norm(dim=-1) <= 1 + 1e-6).all()  # the mean of 9 unit vectors
    clips = prepare_ib_video(frames).flatten(0, 1)
    assert torch.allclose(tiny.embed_vision(clips).norm(dim=-1), torch.ones(18), atol=1e-5)
    assert torch.allclose(video, tiny.embed_vision(clips).view(2, 9, -1).mean(1))
    gen = torch.Generator().manual_seed(6)
    wave = 0.1 * torch.randn(2, 128000, generator=gen)
    audio = tiny.encode_audio(wave)
    assert audio.shape == (2, 1024)
    fbanks = prepare_ib_audio(wave).flatten(0, 1)
    assert torch.allclose(tiny.embed_audio(fbanks).norm(dim=-1), torch.full((6,), 20.0), atol=1e-3)
    # a still, uniform video: 9 identical clips, so the mean is a unit vector
    still = torch.full((1, 4, 3, 224, 224), 90, dtype=torch.uint8)
    assert tiny.encode_video(still).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_encode_audio_resamples_with_functional_defaults(tiny: ImageBind) -> None:
    gen = torch.Generator().manual_seed(7)
    wave = 0.1 * torch.randn(1, 2, 8 * 44100, generator=gen)
    resampled = torchaudio.functional.resample(wave, orig_freq=44100, new_freq=16000)
    assert torch.equal(tiny.encode_audio(wave, 44100), tiny.encode_audio(resampled))


def test_ib_score() -> None:
    video = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    audio = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    assert ib_score(video, audio) == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        ib_score(video, audio[:1])


def test_tiny_file_round_trip(tiny: ImageBind, tiny_file: Path) -> None:
    state = load_weight_file(tiny_file)
    assert set(state) == set(tiny.state_dict())
    assert state["modality_postprocessors.audio.1.log_logit_scale"].item() == pytest.approx(math.log(20.0))
    loaded = load_imagebind(tiny_file, "tiny")
    frames = _frames(1, 4, 224, 256, seed=8)
    wave = 0.1 * torch.randn(1, 64000, generator=torch.Generator().manual_seed(9))
    assert torch.equal(loaded.encode_video(frames), tiny.encode_video(frames))
    assert torch.equal(loaded.encode_audio(wave), tiny.encode_audio(wave))


def test_loading_is_strict_for_the_built_towers(tiny_file: Path, tmp_path: Path) -> None:
    state = load_weight_file(tiny_file)
    # an official-style file also holds the other towers: they are set aside
    other_towers = {"modality_trunks.text.blocks.0.norm_1.weight": torch.ones(3),
                    "modality_preprocessors.text.mask": torch.zeros(77, 77)}
    save_with(state, other_towers, tmp_path / "full.pth")
    load_imagebind(tmp_path / "full.pth", "tiny")
    save_without(state, "modality_trunks.audio.blocks.0.attn.bias_k", tmp_path / "missing.pth")
    with pytest.raises(WeightFileError, match="bias_k"):
        load_imagebind(tmp_path / "missing.pth", "tiny")
    save_with(state, {"modality_trunks.vision.blocks.1.norm_1.weight": torch.ones(32)}, tmp_path / "extra.pth")
    with pytest.raises(WeightFileError, match="blocks.1.norm_1"):
        load_imagebind(tmp_path / "extra.pth", "tiny")
    with pytest.raises(WeightFileError, match="shape"):
        load_imagebind(tiny_file, IMAGEBIND_PRESETS["official"])


def test_missing_file_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        load_imagebind(preset="tiny", ext_dir=tmp_path)
    assert "imagebind_huge.pth" in str(err.value)
    assert "dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth" in str(err.value)
