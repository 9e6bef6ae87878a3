"""The MLflow UI (3.x) as a DVC user first meets it, in headless Chromium: the URL the README gives
opens the experiment on its runs in "Model training" mode (not the GenAI traces overview), and the
compare view of two training runs shows both runs and their differing param.

The runs are made by the pipeline's own tracking code (StageRun) in a real SQLite store, served by
a real `mlflow ui`. Chromium is driven from its command line (--dump-dom, --screenshot): no WebDriver
needed. Screenshots go to the test's tmp dir and to /tmp/mlflow_runs.png, /tmp/mlflow_compare_runs.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mmaudio.config import load_params
from mmaudio.tracking import EXPERIMENT_TAGS, StageRun
from tests.slow.conftest import VENV_BIN, require

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 90
CHROMIUM = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1500,900", "--virtual-time-budget=20000")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        require(["chromium"])
    return found


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """Two train-stage runs (learning rates 1e-3 and 2e-3) logged by StageRun, and `mlflow ui` on them."""
    ws = tmp_path_factory.mktemp("ui")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, ws / name)
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
            mp.delenv(var, raising=False)
        run_ids = []
        for lr in ("1e-3", "2e-3"):
            mp.setenv("DVC_EXP_NAME", f"lr-{lr}")
            with StageRun("train", load_params([f"train.learning_rate={lr}"])) as run:
                for step in range(10, 101, 10):
                    run.log_metrics({"train/loss": 6.0 - step * float(lr) * 20, "train/lr": float(lr)}, step=step)
                    if step % 50 == 0:
                        run.log_metrics({"val/loss": 4.0 - step * float(lr) * 10}, step=step)
                run_ids.append(run.run_id)
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"mlflow ui did not answer at {url} within {WAIT_S} s") from None
                time.sleep(1)
        yield url, MlflowClient(uri), run_ids
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its workers may ignore SIGTERM while a request hangs
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _page(url: str, shot: Path) -> str:
    """The DOM after the page's scripts ran, and a screenshot of it."""
    chromium = _chromium()
    dom = subprocess.run([chromium, *CHROMIUM, "--dump-dom", url], capture_output=True, text=True, timeout=WAIT_S * 2)
    subprocess.run([chromium, *CHROMIUM, f"--screenshot={shot}", url], capture_output=True, timeout=WAIT_S * 2)
    assert shot.is_file(), f"no screenshot of {url}"
    return dom.stdout


def test_readme_url_opens_the_runs_in_model_training_mode(ui, tmp_path):
    url, client, run_ids = ui
    exp = client.get_experiment_by_name("mmaudio")
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_TAGS["mlflow.experimentKind"] == "custom_model_development"
    readme = (REPO / "README.md").read_text()
    link = f"/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
    assert "#/experiments/<id>?workflowType=machine_learning" in readme
    dom = _page(url + link, tmp_path / "runs.png")
    shutil.copy(tmp_path / "runs.png", "/tmp/mlflow_runs.png")
    for rid in run_ids:  # the runs list, with both training runs
        assert client.get_run(rid).info.run_name in dom
    assert "train [lr-1e-3]" in dom and "train [lr-2e-3]" in dom
    assert "Detect Issues" not in dom and "Model training" in dom


def test_compare_view_shows_both_runs_and_the_differing_param(ui, tmp_path):
    url, client, run_ids = ui
    exp = client.get_experiment_by_name("mmaudio")
    q = lambda x: urllib.parse.quote(json.dumps(x))  # noqa: E731
    dom = _page(f"{url}/#/compare-runs?runs={q(run_ids)}&experiments={q([exp.experiment_id])}"
                "&workflowType=machine_learning", tmp_path / "compare.png")
    shutil.copy(tmp_path / "compare.png", "/tmp/mlflow_compare_runs.png")
    assert "train [lr-1e-3]" in dom and "train [lr-2e-3]" in dom
    assert "train.learning_rate" in dom and "0.001" in dom and "0.002" in dom
    # the params a train run holds are the train stage's (dvc.yaml), not every section
    params = client.get_run(run_ids[0]).data.params
    assert "train.learning_rate" in params and "partition.max_segments" not in params
    assert "train/loss" in dom and "val/loss" in dom
