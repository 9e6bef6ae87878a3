"""Two "nodes" on loopback: two torchrun agents (--nnodes=2 --nproc_per_node=1) meet through a c10d
rendezvous and train with gloo; the result equals the one-process run for the same global batch.

Each agent runs in its own workspace (own params.yaml, own train.out_dir, own MLflow store), as two
machines without a shared filesystem would; only the feature sets are common, as after a `dvc pull`
on each node. The rendezvous, not --node-rank, decides which agent holds rank 0, so the test finds
the outputs where they landed and checks that the other node wrote none.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from mmaudio.train_stage import train
from tests.training.conftest import assert_same_training, train_params, train_raw

DRIVER = Path(__file__).with_name("ddp_driver.py")
# the same run as tests/training/test_ddp.py: 6 steps of the micro network, global batch 8
KW = dict(num_iterations=6, log_interval=2, val_interval=3, checkpoint_every=3, global_batch_size=8,
          ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 3, "output_sigma_rel": 0.05})
# torchrun's variables from an enclosing launcher would leak into the agents
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_workspace(root: Path, name: str, raw: dict) -> Path:
    """A git checkout with params.yaml, as each machine has its own."""
    ws = root / name
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # dataset order matters
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=ws, check=True)
    return ws


def test_two_nodes_through_c10d_rendezvous_match_one_process(workspace, feature_root, tmp_path):
    one = train(train_params(feature_root, workspace / "one", **KW))

    port, rdzv_id = free_port(), f"multinode-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    nodes = {}
    for name in ("node_a", "node_b"):
        raw = train_raw(feature_root, tmp_path / name / "out", nproc_per_node=1, **KW)
        ws = node_workspace(tmp_path, name, raw)
        # the command every node runs, word for word (README "Multi-node training"); --local-addr keeps
        # the workers' process group on loopback
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={rdzv_id}",
               "--local-addr=127.0.0.1", "--max-restarts=0", str(DRIVER)]
        nodes[name] = (ws, subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True))
    logs = {}
    try:
        for name, (_, proc) in nodes.items():
            logs[name] = proc.communicate(timeout=300)[0]
    finally:
        for _, proc in nodes.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, (_, proc) in nodes.items():
        assert proc.returncode == 0, f"{name}:\n{logs[name][-6000:]}"

    # rank 0's node holds every output; the other node's workers wrote nothing
    done = [name for name, (ws, _) in nodes.items() if (ws / "out" / "weights.pth").exists()]
    assert len(done) == 1, done
    head = nodes[done[0]][0]
    other = nodes[next(n for n in nodes if n != done[0])][0]
    assert not (other / "out").exists() or not any((other / "out").rglob("*")), sorted((other / "out").rglob("*"))
    assert not (other / "mlflow.db").exists()

    ckpt_dir = next((head / "out" / "checkpoints").iterdir())
    assert_same_training(one, ckpt_dir, head / "out" / "weights.pth", ranks=2)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{head / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mmaudio").experiment_id])
    assert len(runs) == 1  # one run for the whole job: only global rank 0 logs
    assert runs[0].data.params["train.world_size"] == "2"
    assert runs[0].data.params["train.per_rank_batch_size"] == "4"
    assert runs[0].info.run_id == (head / "out" / "mlflow_run_id.txt").read_text().splitlines()[0]
