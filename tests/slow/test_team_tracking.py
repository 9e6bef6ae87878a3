"""Team tracking: the whole pipeline logs into an MLflow server backed by PostgreSQL with artifacts in
S3 (moto), and every run reads back with the params, data hashes and metrics DVC saw."""

from __future__ import annotations

import math
import re
import struct
import wave
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from mmaudio.config import load_params
from mmaudio.tracking import StageRun

pytestmark = pytest.mark.slow

AUDIO_SUFFIXES = (".wav", ".flac")


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def _as_param(v: object) -> str:
    """A params.yaml value as MLflow holds it (tuples and lists print alike)."""
    return ("null" if v is None else str(v)).replace("(", "[").replace(")", "]")


def _experiment_runs(client: MlflowClient, name: str) -> tuple[str, list]:
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no MLflow experiment {name!r} on the server"
    return exp.experiment_id, client.search_runs([exp.experiment_id], max_results=1000)


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    paths = []
    for f in client.list_artifacts(run_id, path):
        paths += _artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return paths


_HASH_KEY = re.compile(r"[a-z_]+\.(in|out)\.(.+)")


def _stage_prefix(run, stage: str) -> str | None:
    """How ``run`` carries ``stage``'s tags: "" when it is the stage's own run, "<stage>." when the
    stage logged into an earlier stage's run (evaluate into train), None when it has no part in it."""
    tags = run.data.tags
    if tags.get("dvc.stage") == stage:
        return ""
    if tags.get(f"{stage}.dvc.stage") == stage:
        return f"{stage}."
    return None


def _hash_records(run) -> list[tuple[str, str, str, str]]:
    """(key, in|out, path, hash) of every content hash the run holds: params ``data.in.<path>`` /
    ``data.out.<path>``, and tags ``<name>.in.<path>`` of stages that log into another stage's run
    (MLflow params are write-once)."""
    params = [(k, v) for k, v in run.data.params.items() if k.startswith("data.")]
    return [(k, m.group(1), m.group(2), v) for k, v in [*params, *run.data.tags.items()] if (m := _HASH_KEY.fullmatch(k))]


def _s3(services: dict[str, str]):
    import boto3  # the `team` extra: imported here so that the fast tier collects without it

    return boto3.client(
        "s3", endpoint_url=services["TEAM_S3_ENDPOINT"], region_name=services["AWS_DEFAULT_REGION"],
        aws_access_key_id=services["AWS_ACCESS_KEY_ID"], aws_secret_access_key=services["AWS_SECRET_ACCESS_KEY"],
    )


def test_every_stage_run_is_in_postgres_with_the_params_hashes_and_metrics_dvc_saw(team_services, team_repo):
    params_yaml = yaml.safe_load((team_repo.path / "params.yaml").read_text())
    client = MlflowClient(team_services["MLFLOW_TRACKING_URI"])
    exp_id, runs = _experiment_runs(client, params_yaml["tracking"]["experiment"])
    # artifacts are proxied by the server, so clients upload over HTTP and never see S3
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:/")

    lock = team_repo.lock()
    for stage in lock:
        assert f"Running stage '{stage}'" in team_repo.repro_stdout
    matched_runs = set()
    for stage, entry in lock.items():
        stage_runs = [(r, p) for r in runs if (p := _stage_prefix(r, stage)) is not None]
        assert stage_runs, f"stage {stage} ran under `dvc repro` but no MLflow run carries dvc.stage={stage}"
        assert len(stage_runs) == 1, f"stage {stage}: {len(stage_runs)} runs for one execution"
        r, prefix = client.get_run(stage_runs[0][0].info.run_id), stage_runs[0][1]
        matched_runs.add(r.info.run_id)
        assert r.info.status == "FINISHED", stage
        assert r.data.tags[f"{prefix}git.commit"] == team_repo.commit, stage
        # the code ran as committed: only what DVC itself writes during the repro may differ
        changed = [p for p in r.data.tags.get(f"{prefix}git.changed", "").split(",") if p]
        assert all(p == "dvc.lock" or p.endswith(".gitignore") for p in changed), f"stage {stage}: changed {changed}"
        assert r.data.tags[f"{prefix}mmaudio.profile"] == params_yaml["profile"], stage
        assert r.data.metrics, f"stage {stage} logged no metric"

        # every param the stage declares in dvc.yaml, with the value DVC recorded in dvc.lock
        declared = _flatten(entry.get("params", {}).get("params.yaml", {}))
        assert declared, f"stage {stage} declares no params"
        for key, value in declared.items():
            assert key in r.data.params, f"stage {stage}: param {key} not logged"
            assert r.data.params[key] == _as_param(value), f"stage {stage}: {key}={r.data.params[key]!r}, dvc.lock {value!r}"

        # data hashes: each one MLflow holds for a path this stage's dvc.lock entry names is the hash there
        locked = {"in": {d["path"]: d["md5"] for d in entry.get("deps", []) if "md5" in d},
                  "out": {o["path"]: o["md5"] for o in entry.get("outs", []) if "md5" in o}}
        matched = 0
        for key, direction, path, digest in _hash_records(r):
            if path in locked[direction]:
                assert digest == locked[direction][path], f"stage {stage}: {key}={digest}, dvc.lock {locked[direction][path]}"
                matched += 1
        assert matched, f"stage {stage}: no hash in its run names a path of its dvc.lock entry"
        # and the inputs appear as MLflow datasets with the same digests
        datasets = {(d.dataset.name, d.dataset.digest) for d in r.inputs.dataset_inputs}
        for key, digest in r.data.params.items():
            if key.startswith("data.in."):
                assert (key.removeprefix("data.in."), digest) in datasets, f"stage {stage}: dataset input {key} missing"

    # the runs really live in PostgreSQL
    import psycopg  # the `team` extra

    with psycopg.connect(team_services["TEAM_PG_URI"]) as conn:
        rows = conn.execute("SELECT run_uuid, status FROM runs WHERE experiment_id = %s", (int(exp_id),)).fetchall()
        max_segments = conn.execute(
            "SELECT value FROM params WHERE run_uuid = ANY(%s) AND key = 'partition.max_segments'", (sorted(matched_runs),)
        ).fetchall()
    assert len(rows) == len(runs) and matched_runs <= {run_uuid for run_uuid, _ in rows}
    assert {v for (v,) in max_segments} == {str(params_yaml["partition"]["max_segments"])}


def _write_tone(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", round(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(int(seconds * rate))))


def test_artifacts_go_through_the_server_into_s3(team_services, team_repo, tmp_path, monkeypatch):
    uri = team_services["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    exp_name = yaml.safe_load((team_repo.path / "params.yaml").read_text())["tracking"]["experiment"]
    _, runs = _experiment_runs(client, exp_name)
    artifacts = [(r, p) for r in runs for p in _artifact_paths(client, r.info.run_id)]
    audio = [(r, p) for r, p in artifacts if p.endswith(AUDIO_SUFFIXES)]
    if not audio:
        # No stage logs audio yet (the train stage's samples/step_*/<id>_sample.wav will): log one the
        # way a stage does, through StageRun, into an experiment of its own.
        monkeypatch.chdir(team_repo.path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        previous_uri = mlflow.get_tracking_uri()
        params = load_params(["tracking.experiment=team-check"], root=team_repo.path)
        tone = tmp_path / "tone.wav"
        _write_tone(tone)
        try:
            with StageRun("team_check", params) as stage_run:
                stage_run.log_artifact(tone, artifact_path="samples")
        finally:
            mlflow.set_tracking_uri(previous_uri)  # the fluent API is process-wide
        r = client.get_run(stage_run.run_id)
        audio = [(r, "samples/tone.wav")]
        artifacts.append(audio[0])

    s3 = _s3(team_services)
    bucket = team_services["TEAM_MLFLOW_BUCKET"]
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}
    for r, path in artifacts:
        key = f"{r.info.experiment_id}/{r.info.run_id}/artifacts/{path}"
        assert key in keys, f"artifact {path} of run {r.info.run_id} is not in s3://{bucket}/{key}"
    for r, path in audio:
        local = Path(client.download_artifacts(r.info.run_id, path, str(tmp_path)))
        key = f"{r.info.experiment_id}/{r.info.run_id}/artifacts/{path}"
        assert local.read_bytes() == s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if local.suffix == ".wav":
            with wave.open(str(local)) as w:
                assert w.getnframes() > 0 and w.getframerate() > 0
