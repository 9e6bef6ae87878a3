"""Two gloo processes under a real torchrun give the one-process result for the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from mmaudio.training.checkpoint import load_latest_checkpoint
from mmaudio.training.train import train
from tests.training.conftest import train_params, train_raw

DRIVER = Path(__file__).with_name("ddp_driver.py")


def test_two_processes_match_one(workspace, feature_root):
    kw = dict(num_iterations=6, log_interval=2, val_interval=3, checkpoint_every=3, global_batch_size=8,
              ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 3, "output_sigma_rel": 0.05})
    one = train(train_params(feature_root, workspace / "one", **kw))

    raw = train_raw(feature_root, workspace / "two", nproc_per_node=2, **kw)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # dataset order matters
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(DRIVER)]
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    two_dir = workspace / "two"
    two_ckpt_dir = next((two_dir / "checkpoints").iterdir())
    assert two_ckpt_dir.name == one.checkpoint_dir.name  # same run key: the world size is bookkeeping
    ckpt = load_latest_checkpoint(two_ckpt_dir)[0]
    assert ckpt["step"] == 6 and len(ckpt["ranks"]) == 2
    for (s1, l1, v1), (s2, l2, v2) in zip(one.history, ckpt["history"]):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4, nan_ok=True) and v1 == pytest.approx(v2, rel=1e-4, nan_ok=True)
    a = torch.load(one.weights, weights_only=True)
    b = torch.load(two_dir / "weights.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = sum(float((a[k] - ckpt["model"][k]).abs().sum()) for k in a)
    assert moved > 0  # the comparison is not between untrained networks

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mmaudio").experiment_id])
    assert len(runs) == 2  # one per execution: rank 1 logs nothing
    two_run = next(r for r in runs if r.data.params["train.world_size"] == "2")
    assert two_run.info.run_id == (two_dir / "mlflow_run_id.txt").read_text().strip()
    assert two_run.data.params["train.per_rank_batch_size"] == "4"
