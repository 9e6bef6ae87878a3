"""Extraction stages on the tiny profile: the feature-set contract for both modes, rejects, resumable
shards, and the real stage under torchrun (2 processes, gloo) and under SIGKILL."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import mlflow
import numpy as np
import pytest
import torch
import yaml

from mmaudio.config import AudioDatasetConfig, ConfigError, ExtractConfig, load_params
from mmaudio.distributed import DistContext
from mmaudio.encoders.feature_encoders import FeatureEncoders
from mmaudio.encoders.tiny import write_tiny_weights
from mmaudio.extraction.jobs import audio_job, encoder_factory, encoder_weight_paths, run_job, video_job
from mmaudio.extraction.pipeline import DeviceBatches, ShardSaver, decode_plan
from mmaudio.extraction.settings import ExtractResult
from mmaudio.modes import mode_spec
from mmaudio.extraction.shards import (
    Shard,
    ShardManifest,
    ShardStore,
    batches_of,
    plan_shards,
    shard_fingerprint,
    shards_of_rank,
    work_dir_for,
)
from mmaudio.features import FeatureSet, feature_shapes
from mmaudio.hashing import dvc_hash
from mmaudio.media import load_video_clip
from mmaudio.media_index import INDEX_COLUMNS, index_video_list
from mmaudio.partition import CLIP_COLUMNS, partition_folder
from mmaudio.segments import (
    AudioClipDataset,
    ClipBatch,
    ClipRow,
    Decoded,
    Rejected,
    VideoClipDataset,
    audio_rows,
    collate_clips,
    merge_batches,
)
from mmaudio.tables import read_tsv, write_rejects, write_tsv

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(0, 1, 0, torch.device("cpu"))
MANY_CLIPS = 24  # rows of the audio dataset the multi-process and resume tests cut into shards (one too short)


# -- media the example set does not have -----------------------------------------------------------


def _write_video(path: Path, seconds: float, audio: np.ndarray | None, *, fps: int = 10, size: int = 48, rate: int = 16000) -> Path:
    """A small mp4 (mpeg4 + aac); ``audio`` None writes no audio stream."""
    with av.open(str(path), mode="w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        if audio is not None:
            a_s = c.add_stream("aac", rate=rate)
            a_s.layout = "mono"
        for i in range(int(seconds * fps)):
            rgb = np.full((size, size, 3), (i * 7) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        if audio is not None:
            n = a_s.codec_context.frame_size or 1024
            for start in range(0, audio.shape[0], n):
                frame = av.AudioFrame.from_ndarray(audio[None, start : start + n].astype(np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                for p in a_s.encode(frame):
                    c.mux(p)
            for p in a_s.encode(None):
                c.mux(p)
    return path


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# -- a project folder: params.yaml, tiny weights, datasets -----------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, examples_dir) -> Path:
    root = tmp_path_factory.mktemp("extract")
    write_tiny_weights(root / "ext_weights" / "tiny", seed=0)
    data = root / "data"
    data.mkdir()
    ex = examples_dir

    part = partition_folder(ex / "audio", load_params(root=REPO).partition)
    write_tsv(data / "clips.tsv", CLIP_COLUMNS, part.clips)
    write_rejects(data / "clips_rejects.tsv", part.rejects)
    # Many short-offset clips of the example files: enough shards to share out and to kill mid-way.
    many = [
        {"id": f"{c['name']}_m{k:02d}", "name": c["name"], "start_sample": int(c["start_sample"]) + 100 * k, "end_sample": int(c["end_sample"])}
        for k, c in zip(range(MANY_CLIPS), part.clips * 3)
    ]
    write_tsv(data / "many.tsv", CLIP_COLUMNS, many)
    write_rejects(data / "none.tsv", [])

    listed = {"two": [("flash_000", "flashes"), ("sweep_000", "a tone")], "one": [("sweep_000", "a tone")]}
    for name, entries in listed.items():
        write_tsv(data / f"{name}.tsv", ("id", "label"), [{"id": i, "label": label} for i, label in entries])
        idx = index_video_list(data / f"{name}.tsv", ex / "video", 8.0)
        write_tsv(data / f"{name}_index.tsv", INDEX_COLUMNS, idx.rows)
        write_rejects(data / f"{name}_rejects.tsv", idx.rejects)

    bad = root / "bad_media"
    bad.mkdir()
    _write_video(bad / "silent.mp4", 8.6, np.zeros(int(8.6 * 16000), np.float32))
    _write_video(bad / "short.mp4", 3.0, _tone(3.0))
    _write_video(bad / "mute.mp4", 8.6, None)
    (bad / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    bad_ids = ["silent", "short", "mute", "corrupt", "missing"]
    write_tsv(data / "bad.tsv", ("id", "label"), [{"id": i, "label": f"{i} video"} for i in bad_ids])
    idx = index_video_list(data / "bad.tsv", bad, 8.0)
    write_tsv(data / "bad_index.tsv", INDEX_COLUMNS, idx.rows)
    write_rejects(data / "bad_rejects.tsv", idx.rejects)

    def audio_ds(clips: str, rejects: str) -> dict:
        return {"media_dir": str(ex / "audio"), "captions_tsv": str(ex / "audio_captions.tsv"), "clips_tsv": str(data / clips), "rejects_tsv": str(data / rejects)}

    def video_ds(media: Path, name: str, normalize: bool) -> dict:
        return {"media_dir": str(media), "list_tsv": str(data / f"{name}.tsv"), "index_tsv": str(data / f"{name}_index.tsv"),
                "rejects_tsv": str(data / f"{name}_rejects.tsv"), "split": "train", "normalize_audio": normalize}

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {
        **base,  # every section: a missing key is an error
        "profile": "tiny",
        "audio_datasets": {"audio": audio_ds("clips.tsv", "clips_rejects.tsv"), "many": audio_ds("many.tsv", "none.tsv")},
        "video_datasets": {name: video_ds(ex / "video", name, True) for name in listed} | {"bad": video_ds(bad, "bad", True)},
        # every key, so that tests can override any of them
        "extract": {**dataclasses.asdict(ExtractConfig()), "device": "cpu", "num_workers": 0, "batch_size": 2, "shard_size": 4, "out_dir": "features"},
        # a preset of extract.mode (config checks them against each other)
        "train": {**base["train"], "network": "tiny_16k"},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test", "enabled": True},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _params(project: Path, *overrides: str):
    return load_params(list(overrides), root=project)


def _run(project: Path, kind: str, name: str, *overrides: str, monkeypatch) -> tuple[FeatureSet, ExtractResult]:
    """The library path of a stage, in this process (one thread, so results are bit-stable)."""
    monkeypatch.chdir(project)
    params = _params(project, *overrides)
    job = (audio_job if kind == "audio" else video_job)(params, name, CPU.device, encoder_weight_paths(params, kind))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_job(job, encoder_factory(params, kind, CPU.device), CPU, progress=False)
    finally:
        torch.set_num_threads(threads)
    return FeatureSet.open(project / job.out_dir, kind=kind, mode=params.extract.mode), result


def _assert_same(a: FeatureSet, b: FeatureSet) -> None:
    assert a.ids == b.ids and a.texts == b.texts
    assert (a.path / "rejects.tsv").read_text() == (b.path / "rejects.tsv").read_text()
    for k in a.td.keys():
        assert torch.equal(a.td[k][:], b.td[k][:]), k


@pytest.fixture(scope="module")
def many_reference(project) -> FeatureSet:
    """One uninterrupted one-process extraction of the 'many' dataset, for equality tests."""
    mp = pytest.MonkeyPatch()
    try:
        fs, result = _run(project, "audio", "many", "extract.out_dir=ref", monkeypatch=mp)
    finally:
        mp.undo()
    # offsets of 100 samples per k make clicks_000_m20 (16 kHz) end 2000 samples short of 8 s
    assert result.rejects == [("clicks_000_m20", "audio too short: 127600 samples at 16000 Hz, need 128000")]
    assert result.clips == MANY_CLIPS - 1 and result.shards == MANY_CLIPS // 4
    return fs


# -- shard planning --------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,size,world", [(0, 4, 2), (1, 4, 3), (10, 3, 2), (24, 4, 4), (17, 5, 8)])
def test_shards_cover_every_row_once_and_batches_stay_inside_them(rows, size, world):
    shards = plan_shards(rows, size)
    assert [r for s in shards for r in range(s.start, s.end)] == list(range(rows))
    assert all(s.end - s.start == size for s in shards[:-1])
    per_rank = [shards_of_rank(shards, r, world) for r in range(world)]
    assert sorted(s.index for p in per_rank for s in p) == [s.index for s in shards]
    assert [len(p) for p in per_rank] == [len(shards[r::world]) for r in range(world)]  # round-robin
    for s in shards:
        batches = batches_of(s, 2)
        assert [i for b in batches for i in b] == list(range(s.start, s.end)) and all(len(b) <= 2 for b in batches)


def test_fingerprint_changes_with_rows_files_and_settings(tmp_path):
    media = tmp_path / "a.wav"
    media.write_bytes(b"RIFF")
    rows = [ClipRow("a", "a caption", str(media), 0, 100)]
    base = shard_fingerprint(rows, {"mode": "16k"})
    assert shard_fingerprint(list(rows), {"mode": "16k"}) == base
    assert shard_fingerprint(rows, {"mode": "44k"}) != base
    assert shard_fingerprint([ClipRow("a", "another caption", str(media), 0, 100)], {"mode": "16k"}) != base
    assert shard_fingerprint([ClipRow("a", "a caption", str(media), 1, 101)], {"mode": "16k"}) != base
    media.write_bytes(b"RIFF....")  # the file was replaced
    assert shard_fingerprint(rows, {"mode": "16k"}) != base


def test_extract_params_are_validated_naming_the_key(project):
    for override, message in [
        ("extract.mode=22k", "key 'extract.mode' must be one of"),
        ("extract.storage_dtype=float16", "key 'extract.storage_dtype' must be one of"),
        ("extract.shard_size=0", "key 'extract.shard_size' must be >= 1"),
        ("extract.num_workers=-1", "key 'extract.num_workers' must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _params(project, override)


def test_amp_is_an_extract_setting_that_changes_the_fingerprint(project):
    cpu = torch.device("cpu")
    off = audio_job(_params(project), "audio", cpu).settings.fingerprint_settings
    on = audio_job(_params(project, "extract.amp=true"), "audio", cpu).settings.fingerprint_settings
    assert (off["amp"], on["amp"]) == (False, True)
    assert {k for k in off if off[k] != on[k]} == {"amp"}
    with pytest.raises(ConfigError, match="extract.amp"):
        _params(project, "extract.amp=fast")


# -- the pipeline: decode plan, batches from chunks, feeder thread, saver thread ---------------------


def _clip(i: int, frames: int = 3) -> Decoded:
    g = torch.Generator().manual_seed(i)
    return Decoded(i, f"id{i}", f"text {i}", torch.rand(16, generator=g),
                   torch.randint(0, 256, (frames, 3, 4, 4), dtype=torch.uint8, generator=g),
                   torch.randint(0, 256, (frames + 1, 3, 2, 2), dtype=torch.uint8, generator=g))


def _assert_same_batch(a: ClipBatch, b: ClipBatch) -> None:
    assert (a.indices, a.ids, a.texts) == (b.indices, b.ids, b.texts)
    assert [(r.index, r.id, r.reason) for r in a.rejects] == [(r.index, r.id, r.reason) for r in b.rejects]
    for name in ("audio", "clip_frames", "sync_frames"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y)), name


def test_decode_plan_gives_video_clips_to_separate_workers_and_audio_batches_to_one():
    batches = [[0, 1, 2], [3, 4, 5], [6]]
    assert decode_plan(batches, "video") == ([[0], [1], [2], [3], [4], [5], [6]], [3, 3, 1])
    assert decode_plan(batches, "audio") == ([[0, 1, 2], [3, 4, 5], [6]], [1, 1, 1])


def test_a_batch_merged_from_single_clips_equals_the_batch_collated_at_once():
    items = [_clip(0), Rejected(1, "id1", "video too short"), _clip(2), Rejected(3, "id3", "no audio stream"), _clip(4)]
    merged = merge_batches([collate_clips([x]) for x in items])
    _assert_same_batch(merged, collate_clips(items))
    assert merged.clip_frames.shape == (3, 3, 3, 4, 4) and merged.clip_frames.dtype == torch.uint8
    # chunks of several clips (audio) merge the same way; a batch of rejects only has no tensors
    _assert_same_batch(merge_batches([collate_clips(items[:2]), collate_clips(items[2:])]), collate_clips(items))
    empty = merge_batches([collate_clips(items[1:2]), collate_clips(items[3:4])])
    assert len(empty) == 0 and empty.audio.shape == (0, 0) and empty.clip_frames is None
    assert [r.id for r in empty.rejects] == ["id1", "id3"]


def test_device_batches_come_in_plan_order_and_raise_the_loaders_error():
    items = [_clip(i) for i in range(5)]
    chunks = iter([collate_clips([x]) for x in items])
    with DeviceBatches(chunks, [2, 2, 1], torch.device("cpu")) as batches:
        got = list(batches)
    assert [b.indices for b in got] == [[0, 1], [2, 3], [4]]
    _assert_same_batch(got[1], collate_clips(items[2:4]))

    def failing():
        yield collate_clips(items[:1])
        raise RuntimeError("decoder exploded on row 1")

    with DeviceBatches(failing(), [1, 1], torch.device("cpu")) as batches:
        assert next(batches).indices == [0]
        with pytest.raises(RuntimeError, match="decoder exploded on row 1"):
            next(batches)


def test_device_batches_close_stops_a_feeder_that_is_ahead():
    chunks = (collate_clips([_clip(i)]) for i in range(100))
    batches = DeviceBatches(chunks, [1] * 100, torch.device("cpu"), depth=1)
    assert next(batches).indices == [0]
    batches.close()  # the thread is blocked on the full queue; close must not hang
    assert not batches._thread.is_alive()


def test_shard_saver_writes_in_the_background_and_raises_a_failed_save(tmp_path):
    store = ShardStore(tmp_path / "work")
    saver = ShardSaver(store)
    parts = [{"x": torch.arange(6.0).view(2, 3)}, {"x": torch.arange(6.0, 9.0).view(1, 3)}]
    saver.submit(Shard(0, 0, 3), ShardManifest(0, "fp", ["a", "b", "c"], ["", "", ""], [], 0), parts, None, {})
    saver.finish()
    assert torch.equal(store.tensors(Shard(0, 0, 3))["x"], torch.arange(9.0).view(3, 3))
    assert store.manifest(Shard(0, 0, 3), "fp").ids == ["a", "b", "c"]

    blocked = ShardStore(tmp_path / "a_file")
    (tmp_path / "a_file").write_text("not a folder")
    bad = ShardSaver(blocked)
    bad.submit(Shard(1, 3, 4), ShardManifest(1, "fp", ["d"], [""], [], 0), parts[1:], None, {})
    with pytest.raises(OSError):
        bad.finish()
    saver.close()
    bad.close()


def test_bf16_autocast_keeps_video_features_within_bf16_tolerance(project):
    g = torch.Generator().manual_seed(0)
    clip_frames = torch.randint(0, 256, (2, 64, 3, 384, 384), dtype=torch.uint8, generator=g)
    sync_frames = torch.randint(0, 256, (2, 24, 3, 224, 224), dtype=torch.uint8, generator=g)
    out = {}
    torch.set_num_threads(1)
    try:
        for amp in (False, True):
            enc = FeatureEncoders("tiny", "16k", root=project, components=("clip", "sync"), amp=amp)
            out[amp] = (enc.encode_clip(clip_frames), enc.encode_sync(sync_frames))
    finally:
        torch.set_num_threads(2)
    for ref, amp in zip(out[False], out[True]):
        assert amp.dtype == torch.float32 and amp.shape == ref.shape
        assert not torch.equal(amp, ref)  # bf16 arithmetic did happen
        rel = float((amp - ref).abs().max() / ref.abs().max())
        assert rel < 0.05, rel
        cos = torch.nn.functional.cosine_similarity(amp, ref, dim=-1)
        assert float(cos.min()) > 0.995


@pytest.mark.slow  # ~20 s: four video decodes on two shared cores
def test_video_clips_decoded_by_several_workers_give_the_one_process_result(project, monkeypatch):
    one, _ = _run(project, "video", "two", "extract.out_dir=video_w0", monkeypatch=monkeypatch)
    two, _ = _run(project, "video", "two", "extract.out_dir=video_w2", "extract.num_workers=2", monkeypatch=monkeypatch)
    _assert_same(two, one)


# -- contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_audio_feature_set_contract_and_values(project, mode, monkeypatch):
    fs, result = _run(project, "audio", "audio", f"extract.mode={mode}", f"train.network=tiny_{mode}", f"extract.out_dir=audio_{mode}", monkeypatch=monkeypatch)
    clips = read_tsv(project / "data/clips.tsv", CLIP_COLUMNS)
    captions = {r["id"]: r["caption"] for r in read_tsv(Path(load_params(root=project).audio_datasets["audio"].captions_tsv), ("id", "caption"))}
    assert fs.ids == sorted(c["id"] for c in clips) and len(fs) == 10
    assert fs.texts == [captions[next(c["name"] for c in clips if c["id"] == i)] for i in fs.ids]
    assert (fs.path / "samples.tsv").read_text().splitlines()[0] == "id\tcaption"
    shapes = feature_shapes(mode, "audio")
    assert {k: tuple(fs.td[k].shape) for k in fs.td.keys()} == {k: (10, *s) for k, s in shapes.items()}
    assert all(fs.td[k].dtype == torch.float32 for k in shapes)
    assert read_tsv(fs.path / "rejects.tsv", ("id", "reason"), unique=False) == [{"id": "thuds_001", "reason": "shorter than 8.1 s (6.000 s)"}]
    assert result.clips == 10 and result.new_rejects == 0 and len(result.rejects) == 1

    # The stored row equals the encoders applied to upstream's clip: normalised file, cut, resampled.
    spec = mode_spec(mode)
    rows = audio_rows(load_params(root=project).audio_datasets["audio"]).rows
    i = fs.ids.index("tone_000_1")  # 48 kHz stereo: resampled and downmixed
    item = AudioClipDataset(rows, sample_rate=spec.sample_rate, num_samples=spec.num_audio_samples)[i]
    assert isinstance(item, Decoded) and item.audio.shape == (spec.num_audio_samples,)
    assert 0.5 < float(item.audio.abs().max()) < 1.0  # the whole file peaks at 0.95
    enc = FeatureEncoders("tiny", mode, root=project, components=("audio", "text"))
    torch.set_num_threads(1)
    with torch.inference_mode():
        mean, std = enc.encode_audio(item.audio[None])
        text = enc.encode_text([fs.texts[i]])
    torch.set_num_threads(2)
    torch.testing.assert_close(fs.td["mean"][i], mean[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fs.td["std"][i], std[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fs.td["text_features"][i], text[0], rtol=1e-4, atol=1e-5)
    info = (fs.path / "info.json").read_text()
    assert f'"mode": "{mode}"' in info and '"profile": "tiny"' in info and f'"num_samples": {spec.num_audio_samples}' in info


@pytest.mark.parametrize("mode,dataset", [("16k", "two"), ("44k", "one")])  # few videos: decoding dominates
def test_video_feature_set_contract_and_values(project, mode, dataset, monkeypatch):
    fs, result = _run(project, "video", dataset, f"extract.mode={mode}", f"train.network=tiny_{mode}", f"extract.out_dir=video_{mode}", monkeypatch=monkeypatch)
    expected = {"two": (["flash_000", "sweep_000"], ["flashes", "a tone"]), "one": (["sweep_000"], ["a tone"])}[dataset]
    assert (fs.ids, fs.texts) == expected and result.clips == len(fs)
    n = len(fs)
    assert (fs.path / "samples.tsv").read_text().splitlines()[0] == "id\tlabel"
    shapes = feature_shapes(mode, "video")
    assert {k: tuple(fs.td[k].shape) for k in fs.td.keys()} == {k: (n, *s) for k, s in shapes.items()}
    assert all(fs.td[k].dtype == torch.float32 for k in shapes)
    assert (fs.path / "rejects.tsv").read_text() == "id\treason\n"
    # CLIP image features are unit vectors per frame; Synchformer's are not constant over time.
    norms = fs.td["clip_features"][:].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-4, atol=1e-4)
    assert fs.td["sync_features"][:].std(dim=1).min() > 0

    spec = mode_spec(mode)
    media = Path(load_params(root=project).video_datasets[dataset].media_dir)
    clip = load_video_clip(media / "sweep_000.mkv", duration_sec=8.0, audio_rate=spec.sample_rate, audio_samples=spec.num_audio_samples)
    enc = FeatureEncoders("tiny", mode, root=project, components=("audio", "text"))
    torch.set_num_threads(1)
    with torch.inference_mode():
        mean, _ = enc.encode_audio((clip.audio * (0.95 / clip.audio_peak))[None])
        text = enc.encode_text(["a tone"])
    torch.set_num_threads(2)
    i = fs.ids.index("sweep_000")
    torch.testing.assert_close(fs.td["mean"][i], mean[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fs.td["text_features"][i], text[0], rtol=1e-4, atol=1e-5)


# -- rejects ---------------------------------------------------------------------------------------


def test_each_bad_video_is_rejected_with_its_reason(project):
    bad = project / "bad_media"
    rows = [ClipRow(i, "x", str(bad / f"{i}.mp4")) for i in ("silent", "short", "mute", "corrupt", "missing")]
    ds = VideoClipDataset(rows, sample_rate=16000, num_samples=128000, duration_sec=8.0, normalize_audio=True)
    items = [ds[i] for i in range(len(rows))]
    assert all(isinstance(x, Rejected) for x in items) and [x.index for x in items] == list(range(5))
    got = {x.id: x.reason for x in items}
    assert got["silent"] == "silent audio (peak 0 <= 1e-06)"
    assert got["short"].startswith("video too short: ") and "need 64 for 8 s" in got["short"]
    assert got["mute"] == "no audio stream"
    assert got["corrupt"].startswith("cannot open as media")
    assert got["missing"] == "file does not exist"
    # validation and test lists keep silent audio (upstream normalises and rejects only for training)
    keep = VideoClipDataset(rows[:1], sample_rate=16000, num_samples=128000, duration_sec=8.0, normalize_audio=False)[0]
    assert isinstance(keep, Decoded) and float(keep.audio.abs().max()) == 0.0


def test_rejects_from_the_index_and_from_decoding_reach_the_manifest(project, monkeypatch):
    fs, result = _run(project, "video", "bad", "extract.out_dir=bad", monkeypatch=monkeypatch)
    assert len(fs) == 0 and result.clips == 0
    rejects = {r["id"]: r["reason"] for r in read_tsv(fs.path / "rejects.tsv", ("id", "reason"))}
    assert set(rejects) == {"silent", "short", "mute", "corrupt", "missing"}
    assert rejects["silent"] == "silent audio (peak 0 <= 1e-06)"  # passed the header check, caught decoding
    assert rejects["mute"] == "no audio stream" and rejects["short"].startswith("shorter than 8 s")
    assert rejects["missing"].startswith("no file for id 'missing'") and "cannot open" in rejects["corrupt"]
    assert result.new_rejects == 1


def test_audio_rejects_silent_files_short_clips_and_uncaptioned_files(project, tmp_path):
    media = tmp_path / "audio"
    media.mkdir()
    with av.open(str(media / "quiet.wav"), mode="w") as c:
        s = c.add_stream("pcm_s16le", rate=16000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000 * 9), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    (media / "nocap.wav").write_bytes((media / "quiet.wav").read_bytes())
    write_tsv(tmp_path / "captions.tsv", ("id", "caption"), [{"id": "quiet", "caption": "nothing"}])
    write_tsv(tmp_path / "clips.tsv", CLIP_COLUMNS, [
        {"id": "quiet_0", "name": "quiet", "start_sample": 0, "end_sample": 129600},
        {"id": "nocap_0", "name": "nocap", "start_sample": 0, "end_sample": 129600},
    ])
    write_rejects(tmp_path / "rejects.tsv", [("old", "from the partition stage")])
    ds_cfg = AudioDatasetConfig(str(media), str(tmp_path / "captions.tsv"), str(tmp_path / "clips.tsv"), str(tmp_path / "rejects.tsv"))
    listed = audio_rows(ds_cfg)
    assert [r.id for r in listed.rows] == ["quiet_0"]
    assert listed.carried == [("old", "from the partition stage")]  # the earlier stage's, counted as carried
    assert listed.rejects == [("nocap_0", f"no caption for file 'nocap' in {tmp_path / 'captions.tsv'}")]  # this stage's
    ds = AudioClipDataset(listed.rows, sample_rate=16000, num_samples=128000)
    assert ds[0] == Rejected(0, "quiet_0", "silent audio (peak 0 <= 1e-06)")

    # a file whose audio ends before 8 s (the 3 s video's track)
    tone_rows = [ClipRow("tone_x", "t", str(project / "bad_media" / "short.mp4"), 0, None)]
    short = AudioClipDataset(tone_rows, sample_rate=16000, num_samples=128000)[0]
    assert isinstance(short, Rejected) and short.reason.startswith("audio too short: ") and "need 128000" in short.reason


# -- storage dtype, resume, multi-process ----------------------------------------------------------


def test_bfloat16_storage_holds_the_rounded_float32_features(project, many_reference, monkeypatch):
    fs, _ = _run(project, "audio", "many", "extract.out_dir=bf16", "extract.storage_dtype=bfloat16", monkeypatch=monkeypatch)
    assert fs.storage_dtype == "bfloat16" and fs.ids == many_reference.ids
    rows = fs.rows(torch.arange(len(fs)))
    for k in ("mean", "std", "text_features"):
        assert fs.td[k].dtype == torch.bfloat16 and rows[k].dtype == torch.float32
        assert torch.equal(rows[k], many_reference.td[k][:].bfloat16().float()), k


class _Interrupted(RuntimeError):
    pass


def test_finished_shards_are_reused_only_under_the_same_settings(project, many_reference, monkeypatch):
    monkeypatch.chdir(project)
    params = _params(project, "extract.out_dir=resume")
    calls = {"n": 0}

    def failing_factory():
        enc = encoder_factory(params, "audio", CPU.device)()
        real = enc.encode_audio

        def encode_audio(wave):
            calls["n"] += 1
            if calls["n"] == 3:  # batch 3 = the first batch of the second shard (2 batches per shard)
                raise _Interrupted
            return real(wave)

        enc.encode_audio = encode_audio
        return enc

    torch.set_num_threads(1)
    try:
        with pytest.raises(_Interrupted):
            run_job(audio_job(params, "many", CPU.device), failing_factory, CPU, progress=False)
        store = ShardStore(work_dir_for(project / "resume" / "many"))
        assert sorted(p.name for p in store.dir.iterdir()) == ["shard-00000.json", "shard-00000.pt"]
        assert not (project / "resume" / "many").exists()

        # another storage dtype: the finished shard is stale and recomputed
        other = _params(project, "extract.out_dir=resume", "extract.storage_dtype=bfloat16")
        job = audio_job(other, "many", CPU.device)
        shards = plan_shards(len(job.rows), 4)
        fp_other = shard_fingerprint(job.rows[:4], job.settings.fingerprint_settings)
        assert store.manifest(shards[0], fp_other) is None
        same = audio_job(params, "many", CPU.device)
        assert store.manifest(shards[0], shard_fingerprint(same.rows[:4], same.settings.fingerprint_settings)) is not None

        result = run_job(same, encoder_factory(params, "audio", CPU.device), CPU, progress=False)
    finally:
        torch.set_num_threads(2)
    assert result.shards_resumed == 1 and result.clips_encoded == MANY_CLIPS - 4
    assert not store.dir.exists()
    _assert_same(FeatureSet.open(project / "resume" / "many"), many_reference)


def _stage_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DVC_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def test_two_process_torchrun_equals_one_process_and_logs_once(project, many_reference):
    out = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
         str(REPO / "stages/extract_audio.py"), "--dataset", "many", "extract.out_dir=ddp", "extract.num_workers=1"],
        cwd=project, env=_stage_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    fs = FeatureSet.open(project / "ddp" / "many")
    _assert_same(fs, many_reference)
    assert not work_dir_for(project / "ddp" / "many").exists()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id], filter_string="params.`extract.out_dir` = 'ddp'")
    assert len(runs) == 1  # rank 0 only
    run = runs[0]
    assert run.data.metrics["clips"] == MANY_CLIPS - 1 and run.data.metrics["rejects"] == 1
    assert run.data.metrics["shards"] == MANY_CLIPS // 4 and run.data.metrics["clips_per_sec"] > 0
    assert run.data.params["data.out.ddp/many"] == dvc_hash(project / "ddp" / "many")
    assert run.data.params["extract.shard_size"] == "4" and run.data.tags["mmaudio.profile"] == "tiny"


def test_killed_stage_resumes_to_the_uninterrupted_result(project, many_reference, monkeypatch):
    args = ["--dataset", "many", "extract.out_dir=killed", "extract.shard_size=2"]
    work = work_dir_for(project / "killed" / "many")
    proc = subprocess.Popen([sys.executable, str(REPO / "stages/extract_audio.py"), *args], cwd=project, env=_stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(work.glob("shard-*.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = len(list(work.glob("shard-*.json")))
    assert 1 <= done < MANY_CLIPS // 2 and not (project / "killed" / "many").exists()

    # started again: the stage's own entry point, in this process (one thread, as the reference)
    spec = importlib.util.spec_from_file_location("extract_audio_stage", REPO / "stages/extract_audio.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(project)
    torch.set_num_threads(1)
    try:
        stage.main(args)
    finally:
        torch.set_num_threads(2)
    _assert_same(FeatureSet.open(project / "killed" / "many"), many_reference)
    assert not work.exists()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id], filter_string="params.`extract.out_dir` = 'killed'",
                              order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FINISHED" and runs[0].data.metrics["shards_resumed"] == done
    rerun_ids = sorted(r["id"] for r in read_tsv(project / "data/many.tsv", CLIP_COLUMNS))[2 * done :]
    assert runs[0].data.metrics["clips_encoded"] == len(rerun_ids) - ("clicks_000_m20" in rerun_ids)  # the too-short one


def test_extract_out_dir_on_the_media_folder_is_refused_before_any_work(project, examples_dir, monkeypatch):
    """Issue 16 item 3: extract.out_dir=<examples> put the 'audio' set on <examples>/audio, the media
    folder it reads, and the rename into place deleted the source audio."""
    from mmaudio.paths import OutputPathError

    spec = importlib.util.spec_from_file_location("extract_audio_stage", REPO / "stages/extract_audio.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)

    monkeypatch.chdir(project)
    before = sorted(p.name for p in (examples_dir / "audio").iterdir())
    with pytest.raises(OutputPathError, match=rf"key 'extract.out_dir' = '{examples_dir / 'audio'}' is input "
                                              r"'audio_datasets\.audio\.media_dir' \(.*\); refusing to write over it"):
        stage.main(["--dataset", "audio", f"extract.out_dir={examples_dir}"])
    assert sorted(p.name for p in (examples_dir / "audio").iterdir()) == before
    assert not (examples_dir / "audio.work").exists()
