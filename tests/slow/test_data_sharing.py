"""Data sharing through a DVC S3 remote: push from the clone that ran the pipeline, pull into a second
clone, and find nothing to recompute there."""

from __future__ import annotations

import json
import re

import pytest

from mmaudio.hashing import dvc_hash
from tests.conftest import run

pytestmark = pytest.mark.slow

REMOTE = "team"


def add_remote(repo, services: dict[str, str]) -> None:
    """The remote as a teammate configures it: in .dvc/config.local, which git never sees."""
    url = f"s3://{services['TEAM_DVC_BUCKET']}/mmaudio"
    run(["dvc", "remote", "add", "--local", "-d", REMOTE, url], repo)
    run(["dvc", "remote", "modify", "--local", REMOTE, "endpointurl", services["TEAM_S3_ENDPOINT"]], repo)
    run(["dvc", "remote", "modify", "--local", REMOTE, "access_key_id", services["AWS_ACCESS_KEY_ID"]], repo)
    run(["dvc", "remote", "modify", "--local", REMOTE, "secret_access_key", services["AWS_SECRET_ACCESS_KEY"]], repo)
    config = (repo / ".dvc" / "config.local").read_text()
    assert f"url = {url}" in config and f"endpointurl = {services['TEAM_S3_ENDPOINT']}" in config
    assert run(["git", "status", "--porcelain"], repo).stdout == "", "the remote's credentials must stay out of git"


def stage_outputs(repo) -> tuple[dict[str, str], dict[str, str]]:
    """(path -> hash) of the outputs DVC caches (and pushes), and of those it leaves to git
    (`cache: false`: metrics, plots, small files)."""
    from dvc.repo import Repo

    cached, uncached = {}, {}
    with Repo(str(repo)) as dvc_repo:
        for out in dvc_repo.index.outs:
            (cached if out.use_cache else uncached)[out.def_path] = out.hash_info.value
    return cached, uncached


def test_push_then_pull_into_a_second_clone_leaves_nothing_to_recompute(team_services, team_repo, tmp_path):
    cached, uncached = stage_outputs(team_repo.path)
    lock = team_repo.lock()
    # DVC's view of the outputs is the one dvc.lock records
    assert {**cached, **uncached} == {o["path"]: o["md5"] for entry in lock.values() for o in entry.get("outs", [])}
    assert cached
    assert any(p.endswith("/checkpoints") for p in cached), "the training checkpoints travel through the remote"

    add_remote(team_repo.path, team_services)
    push = run(["dvc", "push"], team_repo.path)
    pushed = re.search(r"(\d+) files? pushed", push.stdout)
    assert pushed and int(pushed.group(1)) >= len(cached), push.stdout

    # every cached output is in the bucket under DVC 3's content-addressed layout
    import boto3  # the `team` extra: imported here so that the fast tier collects without it

    s3 = boto3.client(
        "s3", endpoint_url=team_services["TEAM_S3_ENDPOINT"], region_name=team_services["AWS_DEFAULT_REGION"],
        aws_access_key_id=team_services["AWS_ACCESS_KEY_ID"], aws_secret_access_key=team_services["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = team_services["TEAM_DVC_BUCKET"]
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="mmaudio/") for o in page.get("Contents", [])}
    for path, md5 in cached.items():
        assert f"mmaudio/files/md5/{md5[:2]}/{md5[2:]}" in keys, f"{path} ({md5}) not pushed"

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(team_repo.path), str(clone)], tmp_path)
    assert not any((clone / p).exists() for p in cached), "cached outputs must come from the remote, not from git"
    add_remote(clone, team_services)
    pull = run(["dvc", "pull"], clone)
    assert not re.search(r"fail|missing|not found", pull.stdout + pull.stderr, re.IGNORECASE), pull.stdout + pull.stderr
    for path, md5 in {**cached, **uncached}.items():  # the uncached ones came with git
        assert (clone / path).exists(), (
            f"{path} is neither in the remote nor in git: a `cache: false` output that git ignores never reaches a "
            "teammate, whose `dvc repro` then reruns its stage; commit it to git or let DVC cache it")
        assert dvc_hash(clone / path) == md5, path

    # nothing missing: DVC sees every output in the workspace and in the cache, and the cache and
    # the remote hold the same objects
    status = run(["dvc", "status", "--json"], clone)
    assert json.loads(status.stdout) == {}, status.stdout
    cloud = run(["dvc", "status", "--cloud", "--json"], clone)
    assert json.loads(cloud.stdout) == {}, cloud.stdout
    # nothing to do: every stage of dvc.lock is skipped, the training one included (its persistent
    # checkpoints came from the remote like every other cached output)
    repro = run(["dvc", "repro"], clone)
    assert "Running stage" not in repro.stdout, repro.stdout
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", repro.stdout))
    assert skipped == set(lock), (sorted(set(lock) - skipped), repro.stdout)
    assert "Data and pipelines are up to date." in repro.stdout, repro.stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == "", "the pulled clone must stay clean"
