"""A reduced kill drill (tests/reliability/kill_drills.py, whose CLI prints the full drill's table): SIGKILL the real train and extract_audio stage
processes at seeded moments, including mid-checkpoint-write, restart them, and require bit-equal
final outputs and restarts that resume from the newest valid checkpoint / every finished shard."""

from __future__ import annotations

import pytest

from tests.reliability import kill_drills

pytestmark = pytest.mark.slow


def _drills():
    return kill_drills


def test_train_survives_kills_mid_checkpoint_and_ends_bit_equal(tmp_path):
    kd = _drills()
    # seed 3 draws ckpt_write, sidecar_write and ema_write for the three kills (shuffled modes)
    r = kd.train_drill(tmp_path, kills=3, seed=3, network="micro_16k", steps=20, timeout=300)
    assert r.tried == 3 and r.survived == 3, r.notes
    assert r.equal, r.notes


def test_extraction_survives_kills_and_ends_with_the_same_memmap(tmp_path):
    kd = _drills()
    r = kd.extract_drill(tmp_path, kills=2, seed=0, clips=10, timeout=300)
    assert r.tried == 2 and r.survived == 2, r.notes
    assert r.equal, r.notes
