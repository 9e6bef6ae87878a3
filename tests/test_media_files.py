"""Real-world media without surprises: stream start times, rotation, upper-case suffixes, long files,
file names that are not UTF-8, and a dataset with no usable row. Every file is generated here with
PyAV and decoded for real."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mmaudio.segments import AudioClipDataset, Decoded, audio_rows
from mmaudio.config import AudioDatasetConfig, PartitionConfig
from mmaudio.distributed import DistContext
from mmaudio.extraction.jobs import result_metrics
from mmaudio.extraction.pipeline import extract_features
from mmaudio.extraction.settings import ExtractSettings
from mmaudio.features import FeatureSet
from mmaudio.media import SYNC_FRAMES, MediaTooShortError, MediaUnreadableError, count_audio_samples, load_video_clip, probe
from mmaudio.media_index import index_video_list
from mmaudio.partition import CLIP_COLUMNS, partition_folder
from mmaudio.tables import read_tsv, write_rejects, write_tsv

RATE = 16000


def write_av(path, *, video_sec: float, audio: np.ndarray | None, video_start: float = 0.0, audio_start: float = 0.0,
             rotation: int | None = None, fps: int = 25, size=(64, 48), audio_codec="flac") -> Path:
    """A video (frame i is grey level i) whose first frame is at ``video_start`` s, and a mono 16 kHz
    audio track whose first sample is at ``audio_start`` s (mkv keeps both start times as given)."""
    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "10"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            vs.set_display_rotation(rotation)
        a_s = None
        if audio is not None:
            a_s = c.add_stream(audio_codec, rate=RATE)
            a_s.layout = "mono"
        t0 = round(video_start * fps)
        for i in range(int(video_sec * fps)):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), (i * 3) % 256, np.uint8), format="rgb24")
            f.pts = t0 + i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        if a_s is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
            a0 = round(audio_start * RATE)
            block = RATE * 10
            for k in range(0, pcm.shape[1], block):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, k : k + block]), format="s16", layout="mono")
                f.sample_rate, f.pts, f.time_base = RATE, a0 + k, Fraction(1, RATE)
                for p in a_s.encode(f):
                    c.mux(p)
            for p in a_s.encode(None):
                c.mux(p)
    return Path(path)


def _click_track(seconds: float, click_at: float) -> np.ndarray:
    wave = np.zeros(int(seconds * RATE), np.float32)
    wave[round(click_at * RATE)] = 0.9
    return wave


# -- stream start times -----------------------------------------------------------------------------


def test_audio_that_starts_late_is_placed_on_the_video_timeline(tmp_path):
    """Audio starting 2 s after the video, with a click at 5.00 s of presentation time (3 s into the
    track): the click lands at sample 80,000 of the 16 kHz clip, after 2 s of silence."""
    path = write_av(tmp_path / "late_audio.mkv", video_sec=10, audio=_click_track(8.0, 3.0), audio_start=2.0)
    clip = load_video_clip(path, duration_sec=8.0, specs=(SYNC_FRAMES,), audio_rate=RATE)
    assert clip.audio_offset_sec == pytest.approx(2.0)
    assert abs(int(clip.audio.abs().argmax()) - 80_000) <= 1
    assert float(clip.audio[: 2 * RATE - 100].abs().max()) == 0.0  # the silence before the track starts
    assert clip.audio.shape == (128_000,)


def test_video_that_starts_late_takes_the_audio_from_its_first_frame(tmp_path):
    """The clip starts at the first frame (1.6 s): a click at 5.00 s lands 3.4 s into the clip."""
    path = write_av(tmp_path / "late_video.mkv", video_sec=9, audio=_click_track(12.0, 5.0), video_start=1.6)
    clip = load_video_clip(path, duration_sec=8.0, specs=(SYNC_FRAMES,), audio_rate=RATE)
    assert clip.audio_offset_sec == pytest.approx(-1.6)
    assert abs(int(clip.audio.abs().argmax()) - 54_400) <= 1
    assert float(clip.frames["sync"][0].float().mean()) < 2  # frame 0 is the first (black) frame


def test_audio_ending_before_the_clip_is_too_short(tmp_path):
    """2 s of silence and 5 s of track end at 7 s: the clip cannot be filled."""
    path = write_av(tmp_path / "cut_audio.mkv", video_sec=10, audio=_click_track(5.0, 1.0), audio_start=2.0)
    with pytest.raises(MediaTooShortError, match=r"cut_audio.mkv: audio too short: 112000 samples at 16000 Hz, need 128000"):
        load_video_clip(path, duration_sec=8.0, specs=(SYNC_FRAMES,), audio_rate=RATE)


# -- rotation -----------------------------------------------------------------------------------------


def test_rotation_is_recorded_in_the_index_and_ignored_by_decoding(tmp_path):
    """A phone video whose display matrix says portrait: decoded in its coded (landscape) orientation,
    as upstream's decoder does, and the index says so."""
    media = tmp_path / "media"
    media.mkdir()
    write_av(media / "phone.mp4", video_sec=9, audio=np.zeros(9 * RATE, np.float32), rotation=90, size=(96, 48), audio_codec="aac")
    write_av(media / "flat.mp4", video_sec=9, audio=np.zeros(9 * RATE, np.float32), size=(96, 48), audio_codec="aac")
    assert probe(media / "phone.mp4").rotation == 90 and probe(media / "flat.mp4").rotation == 0
    write_tsv(tmp_path / "list.tsv", ("id", "label"), [{"id": "flat", "label": "x"}, {"id": "phone", "label": "y"}])
    idx = index_video_list(tmp_path / "list.tsv", media, 8.0)
    assert {r["id"]: r["rotation"] for r in idx.rows} == {"flat": 0, "phone": 90}
    clip = load_video_clip(media / "phone.mp4", duration_sec=8.0, specs=(SYNC_FRAMES,))
    assert clip.native_size == (48, 96)  # coded size, not turned


# -- upper-case suffixes and reject counting ----------------------------------------------------------


def _tone_file(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)[None]
    codec = "flac" if path.suffix.lower() == ".flac" else "pcm_s16le"
    with av.open(str(path), "w", format="flac" if codec == "flac" else "wav") as c:
        s = c.add_stream(codec, rate=RATE)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        f.sample_rate = RATE
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def _audio_dataset(tmp_path, media: Path, captions: dict[str, str]) -> AudioDatasetConfig:
    part = partition_folder(media, PartitionConfig())
    write_tsv(tmp_path / "clips.tsv", CLIP_COLUMNS, part.clips)
    write_rejects(tmp_path / "rejects.tsv", part.rejects)
    write_tsv(tmp_path / "captions.tsv", ("id", "caption"), [{"id": k, "caption": v} for k, v in captions.items()])
    return AudioDatasetConfig(str(media), str(tmp_path / "captions.tsv"), str(tmp_path / "clips.tsv"), str(tmp_path / "rejects.tsv"))


def test_upper_case_suffixes_are_kept_by_partition_and_found_by_extraction(tmp_path):
    media = tmp_path / "audio"
    media.mkdir()
    _tone_file(media / "LOUD.WAV", 9.0)
    _tone_file(media / "Mixed.Flac", 9.0)
    _tone_file(media / "short.wav", 3.0)
    ds = _audio_dataset(tmp_path, media, {"LOUD": "a tone", "Mixed": "another tone"})
    listed = audio_rows(ds)
    assert [(r.id, Path(r.path).name) for r in listed.rows] == [("LOUD_0", "LOUD.WAV"), ("Mixed_0", "Mixed.Flac")]
    assert listed.rejects == [] and listed.carried == [("short", "shorter than 8.1 s (3.000 s)")]
    got = AudioClipDataset(listed.rows, sample_rate=RATE, num_samples=128_000)[0]
    assert isinstance(got, Decoded) and float(got.audio.abs().max()) == pytest.approx(0.95, abs=1e-3)


# -- a dataset with no usable row --------------------------------------------------------------------


def _never_built():
    raise AssertionError("no row to encode: the encoders must not be built")


def test_all_rejected_dataset_writes_an_empty_feature_set_with_its_rejects(tmp_path):
    """Captions for none of the files: no row reaches the encoders; the stage writes an empty feature
    set and every reject, counted where it arose (partition: carried; no caption: this stage)."""
    media = tmp_path / "audio"
    media.mkdir()
    _tone_file(media / "a.flac", 9.0)
    _tone_file(media / "b.flac", 2.0)
    ds = _audio_dataset(tmp_path, media, {"zzz": "a caption for a file that is not there"})
    listed = audio_rows(ds)
    assert listed.rows == []
    settings = ExtractSettings(kind="audio", mode="16k", storage_dtype="float32", batch_size=2, shard_size=4, num_workers=0)
    cpu = DistContext(0, 1, 0, torch.device("cpu"))
    result = extract_features(
        listed.rows, AudioClipDataset([], sample_rate=RATE, num_samples=128_000), _never_built, settings, cpu,
        out_dir=tmp_path / "features" / "audio", carried_rejects=listed.carried, listing_rejects=listed.rejects,
        progress=False,
    )
    fs = FeatureSet.open(tmp_path / "features" / "audio", kind="audio", mode="16k")
    assert len(fs) == 0 and fs.ids == []
    rejects = [(r["id"], r["reason"]) for r in read_tsv(fs.path / "rejects.tsv", ("id", "reason"), id_column=None)]
    assert rejects == [("b", "shorter than 8.1 s (2.000 s)"), ("a_0", f"no caption for file 'a' in {tmp_path / 'captions.tsv'}")]
    m = result_metrics(result)
    assert (m["clips"], m["rejects"], m["rejects_carried"], m["rejects_extract"]) == (0, 2, 1, 1)
    assert not (tmp_path / "features" / "audio.work").exists()


# -- file names that are not UTF-8 --------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_file_name_that_is_not_utf8_is_rejected_by_partition_with_its_bytes_escaped(tmp_path):
    media = tmp_path / "audio"
    media.mkdir()
    _tone_file(media / "good.flac", 9.0)
    raw = os.fsencode(media) + b"/caf\xe9.flac"  # Latin-1 e-acute: not UTF-8
    with open(raw, "wb") as f:
        f.write((media / "good.flac").read_bytes())
    res = partition_folder(media, PartitionConfig())
    assert [c["id"] for c in res.clips] == ["good_0"]
    assert res.rejects == [("caf\\xe9.flac", "file name is not valid UTF-8")]
    write_rejects(tmp_path / "rejects.tsv", res.rejects)  # and the manifest can be written and read
    assert read_tsv(tmp_path / "rejects.tsv", ("id", "reason"), id_column=None)[0]["id"] == "caf\\xe9.flac"
    with pytest.raises(MediaUnreadableError, match=r"caf\\xe9.flac: file name is not valid UTF-8"):
        count_audio_samples(os.fsdecode(raw))


# -- long media, small memory -------------------------------------------------------------------------

_RSS_PROBE = textwrap.dedent("""
    import resource, sys
    from mmaudio.config import PartitionConfig
    from mmaudio.media import SYNC_FRAMES, load_video_clip
    from mmaudio.partition import partition_folder
    kind, warm, long = sys.argv[1:]
    def run(path):
        if kind == "partition":
            return len(partition_folder(path, PartitionConfig()).clips)
        return load_video_clip(path, duration_sec=8.0, specs=(SYNC_FRAMES,), audio_rate=16000).audio.shape[0]
    run(warm)  # imports, allocator pools and kernels warm: the baseline peak
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run(long)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(out, (after - before) // 1024)  # ru_maxrss is in KiB on Linux
""")


def _extra_peak_mib(kind: str, warm: Path, long: Path) -> tuple[str, int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, kind, str(warm), str(long)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and peak semantics as on Linux")
def test_an_hour_of_silent_flac_is_partitioned_in_small_memory(tmp_path):
    """Decoded whole, the hour raised the peak by 56 MiB here (3.6 GB for 44.1 kHz stereo); streamed, by ~0."""
    warm, long = tmp_path / "warm", tmp_path / "long"
    warm.mkdir(), long.mkdir()
    _tone_file(warm / "w.flac", 9.0)
    with av.open(str(long / "hour.flac"), "w") as c:
        s = c.add_stream("flac", rate=RATE)
        s.layout = "mono"
        block = np.zeros((1, RATE * 10), np.int16)
        for i in range(360):
            f = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            f.sample_rate, f.pts = RATE, i * RATE * 10
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    assert (long / "hour.flac").stat().st_size < 2_000_000
    clips, extra = _extra_peak_mib("partition", warm, long)
    assert clips == "5" and extra < 25, f"partitioning an hour of audio raised the peak RSS by {extra} MiB"


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and peak semantics as on Linux")
def test_a_small_video_with_an_hour_of_audio_decodes_in_small_memory(tmp_path):
    """Decoding the whole track raised the peak by 521 MiB here (8.6 GB for the issue's file)."""
    warm = write_av(tmp_path / "warm.mkv", video_sec=9, audio=_click_track(9.0, 1.0))
    long = write_av(tmp_path / "long.mkv", video_sec=9, audio=np.zeros(3600 * RATE, np.float32))
    assert long.stat().st_size < 2_000_000
    samples, extra = _extra_peak_mib("video", warm, long)
    assert samples == "128000" and extra < 25, f"an hour-long audio track raised the peak RSS by {extra} MiB"
