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

from mmaudio.train_stage import train
from tests.training.conftest import assert_same_training, train_params, train_raw

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
    assert_same_training(one, two_ckpt_dir, two_dir / "weights.pth", ranks=2)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mmaudio").experiment_id])
    assert len(runs) == 2  # one per execution: rank 1 logs nothing
    two_run = next(r for r in runs if r.data.params["train.world_size"] == "2")
    assert two_run.info.run_id == (two_dir / "mlflow_run_id.txt").read_text().splitlines()[0]
    assert two_run.data.params["train.per_rank_batch_size"] == "4"
