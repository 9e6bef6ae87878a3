"""The tiny codec's training (mmaudio.codec_training): losses, determinism, resumption, the stage's
files in the official formats, and its round-trip scores. Few steps and small segments: fast tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from mmaudio.codec_training import (
    CodecTrainOptions,
    SegmentSampler,
    load_codec_audio,
    multi_resolution_stft_loss,
    roundtrip_quality,
    train_codec_part,
    train_tiny_codec,
)
from mmaudio.config import CodecConfig
from mmaudio.encoders import profiles
from mmaudio.encoders.bigvgan import build_vocoder, load_vocoder, save_vocoder
from mmaudio.encoders.mel import MelConverter
from mmaudio.encoders.tiny import file_seed
from mmaudio.encoders.vae import AudioVAE, load_vae, save_vae


def _waves(n: int = 3, seconds: float = 1.5, rate: int = 16_000) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * rate)) / rate
    return [0.3 * torch.sin(2 * torch.pi * (200 + 100 * i) * t) + 0.01 * torch.randn(t.shape, generator=g) for i in range(n)]


def _vae() -> AudioVAE:
    vae = AudioVAE("tiny_16k")
    vae.reset_parameters(torch.Generator().manual_seed(1))
    return vae


OPTS = CodecTrainOptions(steps=6, batch_size=2, segment_frames=8, checkpoint_every=3, log_every=1, seed=5)


def test_stft_loss_is_zero_for_equal_signals_and_grows_with_difference() -> None:
    w = _waves(1)[0][None]
    assert float(multi_resolution_stft_loss(w, w)) == pytest.approx(0.0, abs=1e-6)
    small = float(multi_resolution_stft_loss(w * 0.9, w))
    large = float(multi_resolution_stft_loss(torch.zeros_like(w) + 1e-3, w))
    assert 0 < small < large


def test_segments_have_the_mel_length_and_short_clips_are_refused() -> None:
    s = SegmentSampler(_waves(), hop=256, segment_frames=8, generator=torch.Generator().manual_seed(0))
    assert s.batch(4).shape == (4, 8 * 256)
    with pytest.raises(ValueError, match=r"clips \[0\] are shorter"):
        SegmentSampler([torch.zeros(100)], hop=256, segment_frames=8, generator=torch.Generator())
    with pytest.raises(ValueError, match="segment_frames must be even"):
        CodecTrainOptions(steps=1, segment_frames=7)


@pytest.mark.parametrize("part", ["vae", "vocoder"])
def test_training_lowers_the_loss_and_is_deterministic(part: str) -> None:
    mel = MelConverter("16k")
    curves: list[list[float]] = [[], []]
    models = []
    for run in range(2):
        model = _vae() if part == "vae" else build_vocoder("tiny_16k", seed=3)
        opts = CodecTrainOptions(steps=30, batch_size=2, segment_frames=8, log_every=10, seed=5, learning_rate=5e-3)
        models.append(train_codec_part(part, model, mel, _waves(), opts, on_log=lambda s, m, c=curves[run]: c.append(m["loss"])))
    assert curves[0] == curves[1]  # same seed, same run
    assert curves[0][-1] < curves[0][0]
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    mel = MelConverter("16k")
    straight = train_codec_part("vae", _vae(), mel, _waves(), OPTS)

    class Killed(RuntimeError):
        pass

    def kill_at_4(step: int, _: dict) -> None:
        if step == 4:
            raise Killed

    ckpt = tmp_path / "vae.pt"
    with pytest.raises(Killed):
        train_codec_part("vae", _vae(), mel, _waves(), OPTS, checkpoint=ckpt, on_log=kill_at_4)
    assert ckpt.is_file()  # the state of step 3
    resumed = train_codec_part("vae", _vae(), mel, _waves(), OPTS, checkpoint=ckpt)
    assert not ckpt.exists()
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="'vae' or 'vocoder'"):
        train_codec_part("mel", _vae(), MelConverter("16k"), _waves(), OPTS)


def test_roundtrip_quality_scores_a_perfect_and_a_silent_chain() -> None:
    mel = MelConverter("16k")
    clip = torch.zeros(16_000)
    clip[4000:4200] = torch.linspace(0.8, 0, 200) * torch.sign(torch.randn(200, generator=torch.Generator().manual_seed(0)))
    q = roundtrip_quality(_vae(), build_vocoder("tiny_16k", seed=3).remove_weight_norm().eval(), mel,
                          {"a": clip}, {"a": np.array([0.25])})
    assert set(q) >= {"vae_mel_l1", "roundtrip_mel_l1", "roundtrip_lsd_db", "roundtrip_onset_f1"}
    assert q["vae_mel_l1"] > 0 and q["roundtrip_lsd_db"] > 0 and q["roundtrip_clips"] == 1.0


def _random_codec_files(folder: Path) -> None:
    vae = AudioVAE("tiny_16k")
    vae.reset_parameters(torch.Generator().manual_seed(file_seed(0, profiles.VAE_FILES["16k"])))
    save_vae(vae, folder / profiles.VAE_FILES["16k"])
    voc = build_vocoder("tiny_16k", seed=file_seed(0, profiles.VOCODER_16K_FILE))
    save_vocoder(voc, folder / profiles.VOCODER_16K_FILE, layout="file")


def test_stage_codec_trains_both_16k_files_in_place_deterministically(examples_dir: Path, tmp_path: Path) -> None:
    cfg = CodecConfig(modes=["16k"], vae_steps=4, vocoder_steps=3, vae_batch_size=2, vocoder_batch_size=1,
                      vae_segment_frames=8, vocoder_segment_frames=8, checkpoint_every=2)
    outs, logged = [], []
    for run in range(2):
        folder = tmp_path / f"w{run}"
        _random_codec_files(folder)
        before = (folder / "v1-16.pth").read_bytes()
        scores = train_tiny_codec(folder, examples_dir, cfg, seed=0, work_dir=tmp_path / f"work{run}",
                                  on_metrics=lambda m, s: logged.append(m))
        assert (folder / "v1-16.pth").read_bytes() != before
        outs.append({f: (folder / f).read_bytes() for f in ("v1-16.pth", "best_netG.pt")})
        # the official loaders read what it wrote
        load_vae(folder / "v1-16.pth", "tiny_16k")
        load_vocoder(folder / "best_netG.pt", "tiny_16k")
    assert outs[0] == outs[1]
    # the example test split: sweep_002 (no onsets) and flash_003 (clicks)
    assert scores["16k/roundtrip_clips"] == 2.0 and 0.0 <= scores["16k/roundtrip_onset_f1"] <= 1.0
    assert any("codec_16k/vae/loss" in m for m in logged) and any("codec_16k/vocoder/stft" in m for m in logged)


def test_codec_audio_names_a_listed_video_without_file(examples_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "ex"
    shutil.copytree(examples_dir, copy)
    next((copy / "video").glob("flash_003.*")).unlink()
    with pytest.raises(FileNotFoundError, match=r"video_test.tsv: no video file for ids \['flash_003'\]"):
        load_codec_audio(copy, 16_000, 128_000)


def test_44k_codec_trains_and_is_written_in_the_bigvgan_v2_layout(examples_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "w"
    vae = AudioVAE("tiny_44k")
    vae.reset_parameters(torch.Generator().manual_seed(0))
    save_vae(vae, folder / profiles.VAE_FILES["44k"])
    save_vocoder(build_vocoder("tiny_44k", seed=1), folder / profiles.VOCODER_44K_DIR, layout="hf_dir")
    before = (folder / profiles.VOCODER_44K_DIR / "bigvgan_generator.pt").read_bytes()
    cfg = CodecConfig(modes=["44k"], vae_steps=2, vocoder_steps=2, vae_batch_size=1, vocoder_batch_size=1,
                      vae_segment_frames=8, vocoder_segment_frames=8)
    scores = train_tiny_codec(folder, examples_dir, cfg, seed=0, work_dir=tmp_path / "work")
    assert (folder / profiles.VOCODER_44K_DIR / "bigvgan_generator.pt").read_bytes() != before
    assert (folder / profiles.VOCODER_44K_DIR / "config.json").is_file()
    load_vae(folder / "v1-44.pth", "tiny_44k")
    assert load_vocoder(folder / profiles.VOCODER_44K_DIR, "tiny_44k").sampling_rate == 44_100
    assert scores["44k/roundtrip_clips"] == 2.0 and scores["44k/vae_mel_l1"] > 0
