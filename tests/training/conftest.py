"""Fixtures for the training tests: synthetic feature sets with learnable structure and a workspace
(params.yaml + git) to run train() or the stage in, forced onto the CPU.

The synthetic data has K classes. A class fixes the text features, the CLIP features and a smooth
latent pattern (250 frames x 20 channels, with per-channel offsets and scales so the latent
statistics matter); rows add small noise. A network that reads its conditions can predict the latent,
so the flow-matching loss can fall well below its starting value.
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmaudio.config import Params, validate
from mmaudio.features import write_feature_set
from mmaudio.model.network import NETWORK_PRESETS
from tests.training.presets import MICRO

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _micro_preset(monkeypatch):
    monkeypatch.setitem(NETWORK_PRESETS, MICRO.name, MICRO)


def synthetic_rows(n: int, kind: str, seed: int) -> tuple[list[str], list[str], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)  # the classes are shared by every set
    text_emb = torch.randn(NUM_CLASSES, 1024, generator=g)
    clip_emb = torch.randn(NUM_CLASSES, 1024, generator=g)
    frames = torch.linspace(0, 1, 250)[:, None]  # (250, 1)
    freq = torch.rand(NUM_CLASSES, 1, 20, generator=g) * 6 + 1
    phase = torch.rand(NUM_CLASSES, 1, 20, generator=g) * 2 * math.pi
    patterns = torch.sin(2 * math.pi * freq * frames[None] + phase)  # (K, 250, 20)
    offset = torch.linspace(-2, 3, 20)
    scale = torch.linspace(0.5, 2.0, 20)

    r = torch.Generator().manual_seed(seed)
    cls = torch.arange(n) % NUM_CLASSES
    mean = offset + scale * (patterns[cls] + 0.05 * torch.randn(n, 250, 20, generator=r))
    tensors = {
        "mean": mean,
        "std": torch.full((n, 250, 20), 0.05) * scale,
        "text_features": text_emb[cls][:, None, :].expand(n, 77, 1024) + 0.1 * torch.randn(n, 77, 1024, generator=r),
    }
    if kind == "video":
        tensors["clip_features"] = clip_emb[cls][:, None, :].expand(n, 64, 1024) + 0.1 * torch.randn(n, 64, 1024, generator=r)
        tensors["sync_features"] = 0.1 * torch.randn(n, 192, 768, generator=r)
    ids = [f"{kind}{seed}_{i:03d}" for i in range(n)]
    texts = [f"class {int(c)}" for c in cls]
    return ids, texts, tensors


def write_synthetic_set(out: Path, n: int, kind: str, seed: int) -> Path:
    ids, texts, tensors = synthetic_rows(n, kind, seed)
    return write_feature_set(out, mode="16k", kind=kind, ids=ids, texts=texts, tensors=tensors)


@pytest.fixture(scope="session")
def feature_root(tmp_path_factory) -> Path:
    """data/features/{syn_video (24 rows), syn_audio (12), syn_val (6, video)} in a session folder."""
    root = tmp_path_factory.mktemp("features")
    write_synthetic_set(root / "syn_video", 24, "video", seed=1)
    write_synthetic_set(root / "syn_audio", 12, "audio", seed=2)
    write_synthetic_set(root / "syn_val", 6, "video", seed=3)
    return root


def train_raw(feature_root: Path, out_dir: Path, **train: object) -> dict:
    """params.yaml of the repo with a train section for the synthetic sets on CPU."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["extract"]["out_dir"] = str(feature_root)
    raw["train"] = {
        **raw["train"],
        "network": "micro_16k",
        "datasets": {"syn_video": 2, "syn_audio": 1},
        "val_dataset": "syn_val",
        "device": "cpu",
        "global_batch_size": 8,
        "learning_rate": 2e-3,
        "warmup_steps": 5,
        "schedule": "constant",
        "num_iterations": 20,
        "checkpoint_every": 10,
        "val_interval": 10,
        "log_interval": 5,
        "compile": False,
        "num_audio_samples": 0,
        "out_dir": str(out_dir),
        "ema": {"sigma_rels": [0.05, 0.1], "snapshot_every": 5, "output_sigma_rel": 0.05},
        **copy.deepcopy(train),
    }
    return raw


def train_params(feature_root: Path, out_dir: Path, **train: object) -> Params:
    return validate(train_raw(feature_root, out_dir, **train))


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """cwd = a git repo with the project's params.yaml; MLflow's default store lands in it."""
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=ws, check=True)
    monkeypatch.chdir(ws)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    yield ws
    if "mlflow" in sys.modules:  # imported lazily by the tracking code; absent on GPU test machines
        sys.modules["mlflow"].set_tracking_uri(None)


def assert_same_training(one, ckpt_dir: Path, weights: Path, ranks: int) -> None:
    """A multi-process run (its checkpoint folder and exported weights) equals the single-process
    TrainResult ``one``: same run key, same loss history, same weights, and the weights moved."""
    from mmaudio.training.checkpoint import load_latest_checkpoint

    assert ckpt_dir.name == one.checkpoint_dir.name  # same run key: the process layout is bookkeeping
    ckpt = load_latest_checkpoint(ckpt_dir)[0]
    assert ckpt["step"] == one.step and len(ckpt["ranks"]) == ranks
    assert len(ckpt["history"]) == len(one.history) > 0
    for (s1, l1, v1), (s2, l2, v2) in zip(one.history, ckpt["history"]):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4, nan_ok=True) and v1 == pytest.approx(v2, rel=1e-4, nan_ok=True)
    a = torch.load(one.weights, weights_only=True)
    b = torch.load(weights, weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = sum(float((a[k] - ckpt["model"][k]).abs().sum()) for k in a)
    assert moved > 0  # the comparison is not between untrained networks
