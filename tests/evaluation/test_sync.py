"""The sync side of evaluation (mmaudio.evaluation.sync) and the learnable example set."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mmaudio.config import ConfigError, validate
from mmaudio.evaluation.sync import ShuffledVideo, encode_png, same_kind_derangement, spectrogram_image
from mmaudio.examples import generate_examples
from mmaudio.features import FeatureSet, write_feature_set
from mmaudio.media import probe
from mmaudio.sync_examples import SyncSetSpec, sync_clips
from mmaudio.tables import read_tsv


def test_derangement_keeps_the_kind_and_never_the_row() -> None:
    kinds = torch.tensor([0, 1, 2, 0, 1, 2, 0, 5]).float().view(-1, 1, 1).expand(-1, 3, 2)
    partner = same_kind_derangement(kinds)
    assert partner == [3, 4, 5, 6, 1, 2, 0, 0]  # a kind alone (row 7) takes the next row, cyclically
    with pytest.raises(ValueError, match="at least 2 rows"):
        same_kind_derangement(kinds[:1])


def test_shuffled_video_swaps_only_the_video_features(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    n = 4
    text = torch.randn(2, 77, 1024, generator=g)[[0, 1, 0, 1]]
    tensors = {"mean": torch.randn(n, 250, 20, generator=g), "std": torch.full((n, 250, 20), 0.1),
               "text_features": text, "clip_features": torch.randn(n, 64, 1024, generator=g),
               "sync_features": torch.randn(n, 192, 768, generator=g)}
    write_feature_set(tmp_path / "fs", mode="16k", kind="video", ids=list("abcd"), texts=list("xyxy"), tensors=tensors)
    fs = FeatureSet.open(tmp_path / "fs")
    shuffled = ShuffledVideo(fs)
    assert shuffled.partner == [2, 3, 0, 1] and len(shuffled) == 4 and shuffled.ids == fs.ids
    rows = shuffled.rows(torch.tensor([0, 3]))
    assert torch.equal(rows["sync_features"][0], tensors["sync_features"][2])
    assert torch.equal(rows["clip_features"][1], tensors["clip_features"][1])
    assert torch.equal(rows["mean"][0], tensors["mean"][0]) and torch.equal(rows["text_features"][1], text[3])


def _decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_round_trips_and_marks_events_and_onsets() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_decode_png(encode_png(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))
    img = spectrogram_image(torch.zeros(16_000), 16_000, events=np.array([0.5]), onsets=np.array([0.25]))
    assert img.shape == (128, 101, 3)
    assert tuple(img[0, 50]) == (255, 40, 40) and tuple(img[0, 30]) != (255, 40, 40)
    assert tuple(img[-1, 25]) == (255, 255, 255) and tuple(img[-1, 50]) != (255, 255, 255)


def test_learnable_set_is_written_with_random_events_per_clip(tmp_path: Path) -> None:
    spec = SyncSetSpec(train=3, val=0, test=1, frame_size=32)
    assert [c.id for c in sync_clips(spec)] == ["sync_train_0000", "sync_train_0001", "sync_train_0002", "sync_test_0000"]
    counts = generate_examples(tmp_path / "ex", seed=0, sync_set=spec)
    assert counts["videos"] == 10 + 4
    ids = [r["id"] for r in read_tsv(tmp_path / "ex" / "video_train.tsv", ("id", "label"))]
    assert ids[-3:] == ["sync_train_0000", "sync_train_0001", "sync_train_0002"]
    info = probe(tmp_path / "ex" / "video" / "sync_train_0000.mp4")
    assert info.width == 32 and info.height == 32 and info.duration_sec >= 8.0
    events = {}
    for r in read_tsv(tmp_path / "ex" / "events.tsv", ("id", "kind", "time_sec"), unique=False):
        events.setdefault(r["id"], []).append(r["time_sec"])
    # sync_train_0000 and sync_test_0000 are both flash clips: different draws, different times
    assert events["sync_train_0000"] and events["sync_train_0000"] != events["sync_test_0000"]


def test_sync_set_and_codec_params_are_checked() -> None:
    with pytest.raises(ValueError, match="sync_clips.train"):
        SyncSetSpec(train=-1)
    with pytest.raises(ConfigError, match="examples.sync_clips.test"):
        validate({"examples": {"sync_clips": {"test": -2}}})
    with pytest.raises(ConfigError, match="examples.sync_frame_size"):
        validate({"examples": {"sync_frame_size": 33}})
    with pytest.raises(ConfigError, match="tiny_weights.codec.modes"):
        validate({"tiny_weights": {"codec": {"modes": ["22k"]}}})
    with pytest.raises(ConfigError, match="tiny_weights.codec.vocoder_segment_frames"):
        validate({"tiny_weights": {"codec": {"vocoder_segment_frames": 31}}})
