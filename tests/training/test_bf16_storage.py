"""bf16 feature storage: half the bytes on disk and on the wire, the same training loss within bf16
tolerance.

Tolerance: bf16 keeps 8 significant bits, so storing a feature moves it by at most 2^-8 (0.4 %) of its
value, and most values by much less. The loss is a smooth function of those inputs, and so are the few
optimizer steps after them, so the per-step losses of the two runs may differ by at most about that:
we allow 2^-8 relative (CPU, float32 arithmetic; measured 1.5e-4 to 5e-4). A defect in the bf16 route
(rows out of order, bytes read as the wrong dtype) moves the loss by far more; and the runs must not
be bitwise equal either, which would mean the bf16 set was not what ran.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mmaudio.train_stage as train_stage
import mmaudio.training.train as train_module
from mmaudio.features import FeatureSet, write_feature_set
from tests.training.conftest import synthetic_rows, train_params
from tests.training.presets import NullRun

SETS = {"syn_video": (24, "video", 1), "syn_audio": (12, "audio", 2), "syn_val": (6, "video", 3)}  # rows, kind, seed


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """The conftest's synthetic sets (same rows, same seeds), stored once as float32 and once as bf16."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        root = tmp_path_factory.mktemp(dtype)
        for name, (n, kind, seed) in SETS.items():
            ids, texts, tensors = synthetic_rows(n, kind, seed)
            write_feature_set(root / name, mode="16k", kind=kind, ids=ids, texts=texts, tensors=tensors,
                              storage_dtype=dtype)
        out[dtype] = root
    return out


def _losses(r) -> list[float]:
    return [row[1] for row in r.history if not math.isnan(row[1])]


def _rel_diffs(a: list[float], b: list[float]) -> list[float]:
    assert len(a) == len(b) > 0
    return [abs(x - y) / abs(x) for x, y in zip(a, b)]


def test_bf16_set_holds_the_rounded_rows_in_half_the_bytes(roots):
    f32 = FeatureSet.open(roots["float32"] / "syn_video")
    bf16 = FeatureSet.open(roots["bfloat16"] / "syn_video")
    assert bf16.storage_dtype == "bfloat16" and f32.storage_dtype == "float32"
    for key in f32.td.keys():
        size32 = (roots["float32"] / "syn_video" / "td" / f"{key}.memmap").stat().st_size
        size16 = (roots["bfloat16"] / "syn_video" / "td" / f"{key}.memmap").stat().st_size
        assert size16 * 2 == size32 > 0
        a, b = f32.td[key][:], bf16.td[key][:]
        assert torch.equal(a.to(torch.bfloat16), b)  # round to nearest, nothing else
        rel = ((b.float() - a).abs() / a.abs().clamp_min(1e-30)).max()
        assert 0 < rel <= 2**-8  # half a unit in the last of 8 significant bits


def _train(roots, dtype: str, workspace: Path, **kw):
    params = train_params(roots[dtype], workspace / dtype, num_iterations=12, log_interval=2, val_interval=6,
                          checkpoint_every=100, **kw)
    return train_stage.train(params)


def test_training_loss_matches_float32_storage(roots, workspace, monkeypatch):
    monkeypatch.setattr(train_module, "StageRun", NullRun)  # tracking is not what this compares
    f32 = _train(roots, "float32", workspace)
    bf16 = _train(roots, "bfloat16", workspace)
    a, b = _losses(f32), _losses(bf16)
    diffs = _rel_diffs(a, b)
    print(f"relative loss differences, float32 vs bf16 storage: max {max(diffs):.2e}")
    assert len(a) == 6 and a[-1] < 0.9 * a[0]  # it trained
    assert max(diffs) < 2**-8, (a, b)  # one bf16 rounding step, relative
    assert max(diffs) > 0  # the bf16 set is what the second run read
    assert bf16.val_loss == pytest.approx(f32.val_loss, rel=2**-8)


@pytest.mark.gpu
def test_training_loss_matches_float32_storage_on_gpu(roots, workspace, monkeypatch):
    """The GPU route: bf16 batches through pinned memory and a side stream, cast on the device."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(train_module, "StageRun", NullRun)
    kw = dict(device="cuda", amp=True, prefetch=2)
    a, b = _losses(_train(roots, "float32", workspace, **kw)), _losses(_train(roots, "bfloat16", workspace, **kw))
    # under bf16 autocast the network itself rounds to bf16: same order as the storage rounding
    assert max(_rel_diffs(a, b)) < 2e-2, (a, b)
