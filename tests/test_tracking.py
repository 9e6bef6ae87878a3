"""The tracking foundation against a real SQLite MLflow store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from mmaudio.config import load_params
from mmaudio.hashing import dvc_hash
from mmaudio.tracking import StageRun

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a.txt").write_text("alpha\n")
    (tmp_path / "inputs" / "sub").mkdir()
    (tmp_path / "inputs" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (tmp_path / "list.tsv").write_text("id\tlabel\nx\ty\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lark")
    yield tmp_path
    mlflow.set_tracking_uri(None)


def _get_run(root: Path, run_id: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_run(run_id)


def test_stage_run_logs_params_hashes_tags_and_datasets(workspace):
    params = load_params(["partition.max_segments=2"])
    (workspace / "list.tsv").write_text("id\tlabel\nx\tchanged\n")  # a dirty tree
    with StageRun("partition@x", params, inputs=["inputs", "list.tsv"]) as run:
        out = workspace / "out.tsv"
        out.write_text("id\treason\n")
        run.log_outputs([out])
        run.log_metrics({"clips": 7})
    client, r = _get_run(workspace, run.run_id)
    p, tags = r.data.params, r.data.tags
    assert p["partition.max_segments"] == "2" and p["profile"] == "tiny" and p["tracking.uri"] == "null"
    assert p["data.in.inputs"] == dvc_hash(workspace / "inputs") and p["data.in.inputs"].endswith(".dir")
    assert p["data.in.list.tsv"] == dvc_hash(workspace / "list.tsv")
    assert p["data.out.out.tsv"] == dvc_hash(workspace / "out.tsv")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] == "true" and tags["git.changed"] == "list.tsv"
    assert tags["dvc.exp_name"] == "brisk-lark" and tags["mmaudio.profile"] == "tiny"
    assert tags["mmaudio.stage"] == "partition@x"
    assert r.data.metrics["clips"] == 7.0 and r.info.status == "FINISHED"
    inputs = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in r.inputs.dataset_inputs}
    assert ("inputs", p["data.in.inputs"], "input") in inputs
    assert ("out.tsv", p["data.out.out.tsv"], "output") in inputs
    # artifacts of the default store sit beside mlflow.db, not in the process' cwd
    assert r.info.artifact_uri.startswith((workspace / "mlartifacts").as_uri())


def test_dir_hash_equals_dvc(workspace):
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    odb = HashFileDB(fs, str(workspace / ".cache"))
    _, _, obj = build(odb, str(workspace / "inputs"), fs, "md5")
    assert obj.hash_info.value == dvc_hash(workspace / "inputs")


def test_failed_stage_marks_run_failed(workspace):
    params = load_params()
    with pytest.raises(RuntimeError, match="boom"):
        with StageRun("s", params) as run:
            raise RuntimeError("boom")
    _, r = _get_run(workspace, run.run_id)
    assert r.info.status == "FAILED"


def test_other_ranks_log_nothing(workspace):
    with StageRun("s", load_params(), inputs=["list.tsv"], rank=1) as run:
        run.log_metrics({"x": 1})
        run.log_outputs(["list.tsv"])
    assert run.run_id is None and not (workspace / "mlflow.db").exists()


def test_env_uri_and_dvc_root_anchor(workspace, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("parent_repo")
    monkeypatch.setenv("DVC_ROOT", str(elsewhere))  # DVC running an experiment in a temp copy
    with StageRun("s", load_params()) as run:
        pass
    assert (elsewhere / "mlflow.db").exists() and not (workspace / "mlflow.db").exists()
    uri = f"sqlite:///{tmp_path_factory.mktemp('server') / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with StageRun("s", load_params()) as run2:
        pass
    assert mlflow.MlflowClient(tracking_uri=uri).get_run(run2.run_id).info.status == "FINISHED"
