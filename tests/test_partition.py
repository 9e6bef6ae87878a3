"""Clip partitioning: upstream's semantics on real flac/wav files, and rejects for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from mmaudio.config import PartitionConfig
from mmaudio.examples import AudioRecipe, write_audio
from mmaudio.partition import Segment, partition_folder, partition_samples

CFG = PartitionConfig()  # 8.1 s, at most 5


def _write(folder, name, rate, channels, n_samples, suffix="flac"):
    t = np.arange(n_samples) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * channels).astype(np.float32)
    recipe = AudioRecipe(name, "sweep", suffix, rate, channels, n_samples / rate)
    write_audio(folder / f"{name}.{suffix}", recipe, wave)


def test_segment_math():
    assert partition_samples(129599, 16000, CFG) == []  # one sample short of 8.1 s
    assert partition_samples(129600, 16000, CFG) == [Segment(0, 129600)]
    # 2.5 segments' worth: two segments, the second ends exactly at the end
    assert partition_samples(324000, 16000, CFG) == [Segment(0, 129600), Segment(194400, 324000)]
    segs = partition_samples(50 * 16000, 16000, CFG)
    assert len(segs) == 5 and segs[0].start_sample == 0
    step = (800000 - 129600) // 4
    assert [s.start_sample for s in segs] == [i * step for i in range(5)]
    assert all(s.end_sample - s.start_sample == 129600 for s in segs)
    assert segs[-1].end_sample <= 800000
    assert len(partition_samples(50 * 16000, 16000, PartitionConfig(max_segments=3))) == 3


def test_partition_edge_cases_on_real_files(tmp_path):
    _write(tmp_path, "short", 16000, 1, int(8.09 * 16000))
    _write(tmp_path, "exact", 16000, 1, 129600, suffix="wav")
    _write(tmp_path, "long", 16000, 1, 50 * 16000)
    _write(tmp_path, "stereo44", 44100, 2, int(20 * 44100))
    res = partition_folder(tmp_path, CFG)
    by_name: dict[str, list] = {}
    for c in res.clips:
        by_name.setdefault(c["name"], []).append(c)
    assert res.rejects == [("short", "shorter than 8.1 s (8.090 s)")]
    assert [c["id"] for c in by_name["exact"]] == ["exact_0"]
    assert (by_name["exact"][0]["start_sample"], by_name["exact"][0]["end_sample"]) == (0, 129600)
    assert [c["id"] for c in by_name["long"]] == [f"long_{i}" for i in range(5)]
    assert by_name["long"][-1]["end_sample"] == 4 * ((800000 - 129600) // 4) + 129600
    # 44.1 kHz stereo: indices at the native rate, 20 s // 8.1 s = 2 segments
    s44 = by_name["stereo44"]
    assert [(c["start_sample"], c["end_sample"]) for c in s44] == [(0, 357210), (882000 - 357210, 882000)]
    assert res.files_seen == 4 and res.files_used == 3


def test_corrupt_and_foreign_files_are_rejected_and_the_rest_processed(tmp_path):
    _write(tmp_path, "good", 22050, 1, 10 * 22050)
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00junkjunkjunk" * 10)
    (tmp_path / "readme.txt").write_text("not audio")
    good = (tmp_path / "good.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(good[:200])
    (tmp_path / "good.wav").write_bytes(b"")  # same stem as good.flac
    res = partition_folder(tmp_path, CFG)
    assert [c["id"] for c in res.clips] == ["good_0"]
    reasons = dict(res.rejects)
    assert set(reasons) == {"cut", "empty", "garbage", "readme.txt", "good.wav"}
    assert reasons["empty"] == "file is empty (0 bytes)"
    assert "cannot open as media" in reasons["garbage"] or "decod" in reasons["garbage"]
    assert reasons["readme.txt"] == "not a .flac/.wav file"
    assert "duplicate id 'good'" in reasons["good.wav"]
    assert reasons["cut"]  # a flac header without frames: unreadable or too short, with a reason


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio folder does not exist: .*nowhere"):
        partition_folder(tmp_path / "nowhere", CFG)
