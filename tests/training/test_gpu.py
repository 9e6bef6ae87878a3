"""GPU tier (`pytest -m gpu`): bf16 autocast, torch.compile, fused AdamW, the prefetch thread with
pinned memory, and NCCL over two GPUs. Tracking is covered on CPU; here it is stubbed, so the tests
also run where mlflow is not installed."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmaudio.model.network import build_network, load_network_weights
from mmaudio.training.checkpoint import load_latest_checkpoint
from tests.training.conftest import train_params, train_raw
from tests.training.presets import MICRO, NullRun

pytestmark = pytest.mark.gpu
DRIVER = Path(__file__).with_name("ddp_driver.py")
GPU = dict(device="cuda", amp=True, prefetch=2, global_batch_size=16, log_interval=10, val_interval=40,
           checkpoint_every=40, ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 20, "output_sigma_rel": 0.05})


@pytest.fixture
def gpu_train(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import mmaudio.training.train as train_module

    monkeypatch.setattr(train_module, "StageRun", NullRun)
    from mmaudio.train_stage import train

    return train


@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_bf16_training(gpu_train, workspace, feature_root, compile_):
    r = gpu_train(train_params(feature_root, workspace / "g", num_iterations=120, compile=compile_, **GPU))
    losses = [row[1] for row in r.history if not math.isnan(row[1])]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0], losses
    ckpt = load_latest_checkpoint(r.checkpoint_dir)[0]
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["fused"] is True and group["eps"] == 1e-6 and group["betas"] == (0.9, 0.95)
    assert ckpt["ranks"][0]["rng"]["torch_cuda"]  # the CUDA RNG is in the checkpoint
    net = build_network(MICRO)
    load_network_weights(net, r.weights)
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())


def test_two_gpus_nccl_match_one(gpu_train, workspace, feature_root, monkeypatch):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    # true float32 in both runs (no bf16, no TF32 convolutions): the comparison is about the reduction
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    kw = dict(GPU, num_iterations=40, amp=False)
    one = gpu_train(train_params(feature_root, workspace / "one", **kw))
    raw = train_raw(feature_root, workspace / "two", nproc_per_node=2, **kw)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "MMAUDIO_TEST_NO_TRACKING": "1", "NVIDIA_TF32_OVERRIDE": "0"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(DRIVER)], cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    two = load_latest_checkpoint(next((workspace / "two" / "checkpoints").iterdir()))[0]
    assert len(two["ranks"]) == 2
    for (s1, l1, _), (s2, l2, _) in zip(one.history, two["history"]):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=2e-3, nan_ok=True)
    a = torch.load(one.weights, weights_only=True)
    b = torch.load(workspace / "two" / "weights.pth", weights_only=True)
    # Adam turns rounding-level gradient differences of near-zero gradients into lr-sized steps, so
    # single tensors drift apart a little; the network as a whole must agree closely
    va, vb = (torch.cat([w[k].flatten().double() for k in sorted(w)]) for w in (a, b))
    rel = float((va - vb).norm() / va.norm())
    worst = max(float(((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12))) for k in a)
    print(f"relative L2 difference: whole network {rel:.2e}, worst tensor {worst:.2e}")
    assert rel < 1e-3
