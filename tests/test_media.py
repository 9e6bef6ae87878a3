"""Decoding of real encoded media (the example set and hand-made bad files) with PyAV."""

from __future__ import annotations

import math
import shutil

import av
import numpy as np
import pytest
import torch
import torchaudio

from mmaudio.examples import AUDIOS, VIDEOS
from mmaudio.media import (
    CLIP_FRAMES,
    SYNC_FRAMES,
    MediaMissingError,
    MediaTooShortError,
    MediaUnreadableError,
    NoAudioStreamError,
    NoVideoStreamError,
    decode_audio,
    exact_samples,
    load_audio,
    load_video_clip,
    probe,
    resample,
)
from mmaudio.tables import read_tsv


@pytest.mark.parametrize("recipe", VIDEOS, ids=lambda r: f"{r.id}-{r.container}-{r.video_codec}-{float(r.fps):.2f}fps")
def test_every_video_variant_decodes_to_exact_counts(examples_dir, recipe):
    path = examples_dir / "video" / f"{recipe.id}.{recipe.container}"
    info = probe(path)
    assert info.has_video and info.has_audio
    assert info.audio_rate == recipe.sample_rate and info.audio_channels == recipe.channels
    assert (info.width, info.height) == (recipe.width, recipe.height)
    assert info.fps == pytest.approx(float(recipe.fps), rel=1e-3)

    clip = load_video_clip(path, duration_sec=8.0, audio_rate=16000)
    assert clip.frames["clip"].shape == (64, 3, 384, 384) and clip.frames["clip"].dtype == torch.uint8
    assert clip.frames["sync"].shape == (200, 3, 224, 224)
    assert clip.audio.shape == (128000,) and clip.audio.dtype == torch.float32
    assert clip.native_audio_rate == recipe.sample_rate
    assert 0.2 < clip.audio_peak <= 1.0

    clip44 = load_video_clip(path, duration_sec=8.0, specs=(), audio_rate=44100, audio_samples=353280)
    assert clip44.audio.shape == (353280,)


def test_one_pass_matches_separate_decodes(examples_dir):
    path = examples_dir / "video" / "bounce_000.mp4"  # 30 fps, 44.1 kHz stereo
    both = load_video_clip(path, duration_sec=8.0, audio_rate=16000)
    only_sync = load_video_clip(path, duration_sec=8.0, specs=(SYNC_FRAMES,))
    assert torch.equal(both.frames["sync"], only_sync.frames["sync"])
    audio = load_audio(path, 16000, num_samples=128000)
    assert torch.equal(both.audio, audio)


def test_frames_show_the_flashes_at_their_times(examples_dir):
    """Flashes land on the Synchformer frames at their times (flash_000 is 25 fps: frame k is source frame k)."""
    events = [float(r["time_sec"]) for r in read_tsv(examples_dir / "events.tsv", ("id", "time_sec"), unique=False) if r["id"] == "flash_000"]
    clip = load_video_clip(examples_dir / "video" / "flash_000.mp4", duration_sec=8.0, specs=(SYNC_FRAMES, CLIP_FRAMES))
    brightness = clip.frames["sync"].float().mean(dim=(1, 2, 3))  # (200,)
    lit = brightness > 150
    expected = torch.zeros(200, dtype=torch.bool)
    for e in events:
        for k in range(200):
            t = k / 25
            if e <= t < e + 0.08 and abs(t - e) > 1e-3 and abs(t - e - 0.08) > 1e-3:
                expected[k] = True
    # Every frame strictly inside a flash is lit; frames far from any flash are dark.
    assert lit[expected].all()
    far = torch.tensor([min(abs(k / 25 - e) for e in events) > 0.16 for k in range(200)])
    assert not lit[far].any()
    assert lit.sum() >= 2 * len([e for e in events if e < 7.9])


def test_squash_and_crop_geometry():
    """A portrait frame: CLIP squashes it whole, Synchformer crops the centre of the short-side resize."""
    from mmaudio.media import _fit_frames

    frame = torch.zeros(1, 320, 180, 3, dtype=torch.uint8)
    frame[:, :40] = 255  # a white band at the top
    clip = _fit_frames(frame, CLIP_FRAMES)
    sync = _fit_frames(frame, SYNC_FRAMES)
    assert clip.shape == (1, 3, 384, 384) and sync.shape == (1, 3, 224, 224)
    assert clip[0, :, 5].float().mean() > 250  # the band survives the squash
    assert sync[0, :, 5].float().mean() < 5  # ... but is cropped away (224 of 398 rows kept)


@pytest.mark.parametrize("recipe", AUDIOS, ids=lambda r: f"{r.id}-{r.suffix}-{r.sample_rate}-{r.channels}ch")
def test_every_audio_variant_decodes_exactly(examples_dir, recipe):
    track = decode_audio(examples_dir / "audio" / f"{recipe.id}.{recipe.suffix}")
    assert track.sample_rate == recipe.sample_rate
    assert track.samples.shape == (recipe.channels, round(recipe.duration_sec * recipe.sample_rate))
    assert track.samples.dtype == torch.float32 and track.samples.abs().max() <= 1.0


@pytest.mark.parametrize("orig", [22050, 44100, 48000])
@pytest.mark.parametrize("target", [16000, 44100])
def test_resampler_equals_torchaudio_reference(orig, target):
    """Bit-equal to the call upstream makes (transforms.Resample, kaiser_best settings)."""
    g = torch.Generator().manual_seed(orig + target)
    wave = torch.rand(orig // 2, generator=g) * 2 - 1
    kw = dict(lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
    ours = resample(wave, orig, target)
    assert torch.equal(ours, torchaudio.transforms.Resample(orig, target, **kw)(wave))
    # The functional form builds its kernel in the input's dtype: equal to float32 rounding.
    torch.testing.assert_close(ours, torchaudio.functional.resample(wave, orig, target, **kw), rtol=0, atol=1e-4)
    assert ours.shape[0] == math.ceil(wave.shape[0] * target / orig)


def test_exact_samples_avoids_float_error():
    assert exact_samples(8.1, 16000) == 129600
    assert exact_samples(8.1, 44100) == 357210 and exact_samples(8.0, 44100) == 352800


def test_load_audio_cuts_native_samples_then_resamples(examples_dir):
    path = examples_dir / "audio" / "thuds_000.wav"  # 44.1 kHz stereo
    full = decode_audio(path)
    seg = load_audio(path, 16000, start_sample=44100, end_sample=44100 + 357210)
    ref = resample(full.mono()[44100 : 44100 + 357210], 44100, 16000)
    assert torch.equal(seg, ref) and seg.shape[0] == math.ceil(357210 * 16000 / 44100)


# ------------------------------------------------------------------------------------------------
# Bad input: each gives a MediaError subclass naming the file and the reason.


def test_missing_file(tmp_path):
    with pytest.raises(MediaMissingError, match="nope.mp4: file does not exist"):
        load_video_clip(tmp_path / "nope.mp4", duration_sec=8.0)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(MediaUnreadableError, match=r"empty.mp4: file is empty \(0 bytes\)"):
        decode_audio(p)


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaUnreadableError, match="notes.mp4: cannot open as media"):
        load_video_clip(p, duration_sec=8.0)


def test_truncated_mp4(examples_dir, tmp_path):
    src = (examples_dir / "video" / "flash_000.mp4").read_bytes()
    p = tmp_path / "cut.mp4"
    p.write_bytes(src[: len(src) // 3])  # the moov atom sits at the end: the file cannot be opened
    with pytest.raises(MediaUnreadableError, match="cut.mp4"):
        load_video_clip(p, duration_sec=8.0, audio_rate=16000)


def test_truncated_stream_is_too_short(examples_dir, tmp_path):
    # mkv keeps its index at the front, so a cut file opens and decodes until the data ends.
    src = (examples_dir / "video" / "flash_002.mkv").read_bytes()
    p = tmp_path / "cut.mkv"
    p.write_bytes(src[: len(src) // 2])
    with pytest.raises((MediaTooShortError, MediaUnreadableError), match="cut.mkv"):
        load_video_clip(p, duration_sec=8.0, audio_rate=16000)


def _write_video_only(path, seconds=9.0, fps=10):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def test_video_without_audio(tmp_path):
    p = tmp_path / "silent_film.mp4"
    _write_video_only(p)
    with pytest.raises(NoAudioStreamError, match="silent_film.mp4: no audio stream"):
        load_video_clip(p, duration_sec=8.0, audio_rate=16000)
    clip = load_video_clip(p, duration_sec=8.0)  # frames alone are fine
    assert clip.frames["sync"].shape[0] == 200


def write_audio_only_mp4(src_audio, path):
    """An mp4 holding only an AAC track (a podcast-style file that slipped into a video list)."""
    track = decode_audio(src_audio)
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=track.sample_rate)
        s.layout = "mono"
        data = track.mono()[None].numpy()
        for i in range(0, data.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i : i + 1024]), format="fltp", layout="mono")
            f.sample_rate, f.pts = track.sample_rate, i
            for pk in s.encode(f):
                c.mux(pk)
        for pk in s.encode(None):
            c.mux(pk)


def test_audio_only_mp4(examples_dir, tmp_path):
    p = tmp_path / "radio.mp4"
    write_audio_only_mp4(examples_dir / "audio" / "clicks_000.flac", p)
    with pytest.raises(NoVideoStreamError, match="radio.mp4: no video stream"):
        load_video_clip(p, duration_sec=8.0, audio_rate=16000)
    assert load_audio(p, 16000).shape[0] > 16000 * 11


def test_video_shorter_than_required(examples_dir):
    # 204 frames at 24 fps, the last at 8.458 s for 41 ms: libavfilter's fps=25 gives 212 frames
    # (tests/test_media_parity.py checks the rule against the filter itself)
    path = examples_dir / "video" / "sweep_000.mkv"
    with pytest.raises(MediaTooShortError, match=r"sweep_000.mkv: video too short: 212 frames at 25 fps \(8.499 s\), need 225 for 9 s"):
        load_video_clip(path, duration_sec=9.0, specs=(SYNC_FRAMES, CLIP_FRAMES))


def test_audio_shorter_than_required(examples_dir):
    with pytest.raises(MediaTooShortError, match="thuds_001.flac: audio too short"):
        load_audio(examples_dir / "audio" / "thuds_001.flac", 16000, num_samples=128000)
