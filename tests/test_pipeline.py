"""The real DVC pipeline in a temporary copy of the repo: repro, no-op repro, exp run -S.

The fast test covers the data stages (examples, partition, index); the slow one runs the whole chain
through training and evaluation (`pytest -m slow`).
"""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from mmaudio.hashing import dvc_hash
from tests.conftest import run

DATA_STAGES = ["make_examples", "partition", "index_videos"]


def _lock(repo) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def _commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def _runs(repo, stage: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs(
        [client.get_experiment_by_name("mmaudio").experiment_id],
        filter_string=f"tags.`mmaudio.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
    )


def test_repro_is_tracked_idempotent_and_exp_run_reruns_only_dependents(repo_copy):
    first = run(["dvc", "repro", *DATA_STAGES], repo_copy)
    for stage in ["make_examples", "partition@examples_audio", "index_videos@examples_train"]:
        assert f"Running stage '{stage}'" in first.stdout
    clips = (repo_copy / "data/clips/examples_audio.tsv").read_text().splitlines()
    assert clips[0] == "id\tname\tstart_sample\tend_sample" and len(clips) == 1 + 10
    assert (repo_copy / "data/clips/examples_audio_rejects.tsv").read_text().splitlines()[1].startswith("thuds_001\tshorter than 8.1 s")

    second = run(["dvc", "repro", *DATA_STAGES], repo_copy)
    assert "Running stage" not in second.stdout and "up to date" in second.stdout

    _commit(repo_copy, "pipeline ran")
    exp = run(["dvc", "exp", "run", "-S", "partition.max_segments=3", "-n", "three-segments", *DATA_STAGES], repo_copy)
    assert "Running stage 'partition@examples_audio'" in exp.stdout
    assert "Running stage 'make_examples'" not in exp.stdout
    assert "Running stage 'index_videos" not in exp.stdout
    assert len((repo_copy / "data/clips/examples_audio.tsv").read_text().splitlines()) == 1 + 8  # clips per file: 1, 1, 3 (50 s, capped), 3 (30 s)

    latest, earlier = _runs(repo_copy, "partition@examples_audio")
    assert latest.data.params["partition.max_segments"] == "3" and earlier.data.params["partition.max_segments"] == "5"
    assert "train.learning_rate" not in latest.data.params  # the params the stage reads, not the whole config

    assert latest.data.tags["dvc.exp_name"] == "three-segments" and earlier.data.tags["dvc.exp_name"] == ""
    assert latest.data.metrics["clips"] == 8.0 and latest.data.metrics["rejects"] == 1.0
    # the hashes MLflow holds are the ones DVC recorded
    lock = _lock(repo_copy)["partition@examples_audio"]
    dep = next(d for d in lock["deps"] if d["path"] == "data/examples/audio")
    out = next(o for o in lock["outs"] if o["path"] == "data/clips/examples_audio.tsv")
    assert latest.data.params["data.in.data/examples/audio"] == dep["md5"]
    assert latest.data.params["data.out.data/clips/examples_audio.tsv"] == out["md5"] == dvc_hash(repo_copy / out["path"])

    # The MLflow experiment says where runs are logged, not what they compute: no stage declares
    # `tracking`, so renaming it reruns and invalidates nothing.
    renamed = run(["dvc", "exp", "run", "-S", "tracking.experiment=other", "-n", "renamed", *DATA_STAGES], repo_copy)
    assert "Running stage" not in renamed.stdout, renamed.stdout
    assert yaml.safe_load((repo_copy / "params.yaml").read_text())["tracking"]["experiment"] == "other"
    assert "Data and pipelines are up to date" in run(["dvc", "status", *DATA_STAGES], repo_copy).stdout

    # last, as a failed stage removes its outputs: a wrong type through `dvc exp run -S` prints the
    # stage's three lines and DVC's one, no traceback
    bad = run(["dvc", "exp", "run", "-S", "partition.max_segments=abc", *DATA_STAGES], repo_copy, check=False)
    assert bad.returncode != 0
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    assert "  value:   'abc'" in lines and "  allowed: an integer" in lines, lines
    assert any(line.endswith("key 'partition.max_segments'") for line in lines)
    # after "Running stage" and its command: the three lines and DVC's one (skipped stages are listed before)
    failed = lines[next(i for i, line in enumerate(lines) if line.startswith("Running stage 'partition")):]
    assert len(failed) <= 6 and not any("Traceback" in line for line in lines), failed


@pytest.mark.slow
def test_whole_chain_on_the_tiny_profile(repo_copy):
    """`dvc repro` end to end, a no-op second run, and `dvc exp run -S train.learning_rate=...`."""
    run(["dvc", "repro"], repo_copy)
    assert "up to date" in run(["dvc", "repro"], repo_copy).stdout
    metrics = json.loads((repo_copy / "models/train/metrics.json").read_text())
    assert metrics["step"] > 0 and metrics["train"]["loss"] < 6.0

    _commit(repo_copy, "pipeline ran")
    exp = run(["dvc", "exp", "run", "-S", "train.learning_rate=2e-3", "-n", "faster"], repo_copy)
    assert "Running stage 'train'" in exp.stdout and "Running stage 'extract_video" not in exp.stdout
    latest, earlier = _runs(repo_copy, "train")[:2]
    assert float(latest.data.params["train.learning_rate"]) == 2e-3
    assert float(earlier.data.params["train.learning_rate"]) == 1e-3
    assert latest.data.tags["dvc.exp_name"] == "faster"
    assert "train/loss" in latest.data.metrics and "val/loss" in latest.data.metrics
