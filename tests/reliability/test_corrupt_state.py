"""Damaged state on disk: a truncated or overwritten latest checkpoint falls back to the previous good
one, a damaged extraction shard is recomputed; each with a warning naming the file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mmaudio.extraction.shards import Shard, ShardManifest, ShardStore
from mmaudio.training.checkpoint import (
    checkpoint_path,
    load_latest_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from mmaudio.training.state import REQUIRED_CHECKPOINT_KEYS as REQUIRED_KEYS


def _state(step: int) -> dict:
    state = {k: {} for k in REQUIRED_KEYS}
    state.update(step=step, model={"w": torch.full((64, 64), float(step))}, history=[], ranks=[])
    return state


def _three_checkpoints(folder: Path) -> None:
    for step in (10, 20, 30):
        save_checkpoint(folder, _state(step), keep_last=2)


def test_checkpoints_carry_a_size_and_hash_record_and_old_ones_go_with_it(tmp_path):
    _three_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000020.pt", "ckpt-000000020.pt.sum", "ckpt-000000030.pt", "ckpt-000000030.pt.sum"]
    state, path = load_latest_checkpoint(tmp_path, REQUIRED_KEYS)
    assert path == checkpoint_path(tmp_path, 30) and torch.equal(state["model"]["w"], torch.full((64, 64), 30.0))


def test_truncated_latest_checkpoint_falls_back_with_a_warning_naming_it(tmp_path, caplog):
    _three_checkpoints(tmp_path)
    latest = checkpoint_path(tmp_path, 30)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # a disk fault cut it short
    with caplog.at_level(logging.WARNING, logger="mmaudio.training.checkpoint"):
        state, path = load_latest_checkpoint(tmp_path, REQUIRED_KEYS)
    assert path == checkpoint_path(tmp_path, 20) and state["step"] == 20
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(latest) in warned[0] and "truncated" in warned[0]
    assert f"{len(data) // 2} bytes" in warned[0] and f"says {len(data)}" in warned[0]


def test_same_size_overwrite_is_caught_by_the_hash(tmp_path, caplog):
    _three_checkpoints(tmp_path)
    latest = checkpoint_path(tmp_path, 30)
    data = bytearray(latest.read_bytes())
    # flip bytes inside the stored tensor: the zip still opens, only the hash can tell
    raw = torch.full((64, 64), 30.0).numpy().tobytes()
    at = bytes(data).index(raw)
    data[at : at + 4] = b"\x00\x00\x80\x7f"  # +inf in place of 30.0
    latest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mmaudio.training.checkpoint"):
        state, path = load_latest_checkpoint(tmp_path, REQUIRED_KEYS)
    assert state["step"] == 20
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(latest) in warned[0] and "SHA-256" in warned[0]


def test_checkpoint_without_its_record_is_still_used_when_it_loads(tmp_path):
    _three_checkpoints(tmp_path)
    sidecar_path(checkpoint_path(tmp_path, 30)).unlink()  # killed between the two renames
    state, _ = load_latest_checkpoint(tmp_path, REQUIRED_KEYS)
    assert state["step"] == 30


def test_every_checkpoint_damaged_means_none(tmp_path, caplog):
    _three_checkpoints(tmp_path)
    for step in (20, 30):
        checkpoint_path(tmp_path, step).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="mmaudio.training.checkpoint"):
        assert load_latest_checkpoint(tmp_path, REQUIRED_KEYS) is None
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2


def _saved_shard(store: ShardStore) -> tuple[Shard, ShardManifest]:
    shard = Shard(0, 0, 2)
    m = ShardManifest(shard=0, fingerprint="fp", ids=["a", "b"], texts=["x", "y"], rejects=[], tensor_file_bytes=0)
    store.save(shard, m, {"mean": torch.arange(2 * 250 * 20, dtype=torch.float32).reshape(2, 250, 20)})
    return shard, m


def test_shard_manifest_records_size_and_hash(tmp_path):
    store = ShardStore(tmp_path)
    shard, _ = _saved_shard(store)
    m = store.manifest(shard, "fp")
    assert m is not None and m.tensor_file_bytes == (tmp_path / "shard-00000.pt").stat().st_size
    assert len(m.tensor_file_sha256) == 64
    assert torch.equal(store.tensors(shard)["mean"][1, 0], torch.arange(5000, 5020, dtype=torch.float32))


def test_damaged_shard_is_recomputed_with_a_warning_naming_it(tmp_path, caplog):
    store = ShardStore(tmp_path)
    shard, _ = _saved_shard(store)
    f = tmp_path / "shard-00000.pt"
    data = bytearray(f.read_bytes())
    at = bytes(data).index(torch.tensor([7.0]).numpy().tobytes())
    data[at] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mmaudio.extraction"):
        assert store.manifest(shard, "fp") is None  # so extract_features puts it back on the to-do list
    assert str(f) in caplog.text and "SHA-256" in caplog.text

    caplog.clear()
    f.write_bytes(bytes(data[:100]))
    with caplog.at_level(logging.WARNING, logger="mmaudio.extraction"):
        assert store.manifest(shard, "fp") is None
    assert str(f) in caplog.text and "100 bytes" in caplog.text and "truncated" in caplog.text
