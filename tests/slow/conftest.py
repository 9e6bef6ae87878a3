"""Fixtures of the team tests: the services scripts/team_services.sh starts (PostgreSQL, moto's S3
server, an MLflow server using both, all on 127.0.0.1) and one copy of the repo whose whole pipeline
ran once against them. The tests share that one `dvc repro`: it is the expensive part, and every
stage dvc.yaml declares, now or later, runs in it.

Prerequisites missing (Debian's postgresql, chromium, chromium-driver; the `team` extra) skip the
tests with the install command, unless MMAUDIO_TEAM_TESTS_REQUIRED=1 (as in the command .ci/run
prints), where they fail.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import _COPY_IGNORE, REPO, run

SCRIPT = REPO / "scripts" / "team_services.sh"
REQUIRED_ENV = "MMAUDIO_TEAM_TESTS_REQUIRED"
VENV_BIN = Path(sys.executable).parent
INSTALL_HINT = "apt-get install -y postgresql chromium chromium-driver && pip install -c requirements.lock -c requirements-team.lock -e '.[team]'"


def require(missing: list[str]) -> None:
    """Skip (or fail under CI) naming what is missing."""
    if not missing:
        return
    msg = f"missing {', '.join(missing)}: {INSTALL_HINT}"
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def missing_services() -> list[str]:
    missing = []
    if not (os.environ.get("PG_BIN") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        missing.append("PostgreSQL server (postgresql)")
    if not (VENV_BIN / "moto_server").exists():
        missing.append("moto_server")
    missing += [m for m in ("boto3", "psycopg", "dvc_s3") if importlib.util.find_spec(m) is None]
    return missing


def missing_browser() -> list[str]:
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    return missing


@pytest.fixture(scope="session")
def team_services(tmp_path_factory) -> dict[str, str]:
    """The variables `scripts/team_services.sh start` writes (MLFLOW_TRACKING_URI, TEAM_S3_ENDPOINT, ...)."""
    require(missing_services())
    state = tmp_path_factory.mktemp("team") / "state"
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = subprocess.run(["bash", str(SCRIPT), "start", str(state)], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        raise AssertionError(f"{SCRIPT} start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
    values = {}
    for line in (state / "env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = value
    try:
        yield values
    finally:
        subprocess.run(["bash", str(SCRIPT), "purge", str(state)], env=env, capture_output=True, text=True, timeout=300, check=True)


@dataclass(frozen=True)
class TeamRepo:
    path: Path
    commit: str  # the commit `dvc repro` ran on
    repro_stdout: str

    def lock(self) -> dict:
        return yaml.safe_load((self.path / "dvc.lock").read_text())["stages"]


@pytest.fixture(scope="session")
def team_repo(tmp_path_factory, team_services) -> TeamRepo:
    """A git + DVC copy of the project (sources only, as the repo_copy fixture makes) whose whole
    pipeline ran with MLFLOW_TRACKING_URI at the team server; dvc.lock is committed afterwards."""
    dst = tmp_path_factory.mktemp("team_repo") / "repo"
    shutil.copytree(REPO, dst, ignore=_COPY_IGNORE)
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-q", "-m", "copy"], dst)
    commit = run(["git", "rev-parse", "HEAD"], dst).stdout.strip()
    # clients need only the server's address: artifacts go through it, so no S3 credentials here
    repro = run(["dvc", "repro"], dst, env={"MLFLOW_TRACKING_URI": team_services["MLFLOW_TRACKING_URI"]})
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-q", "-m", "pipeline ran"], dst)
    return TeamRepo(path=dst, commit=commit, repro_stdout=repro.stdout)
