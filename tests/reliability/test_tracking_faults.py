"""Tracking faults against a real `mlflow server` on 127.0.0.1: unreachable at the start, killed in
the middle of a run and restarted, and gone for good. The stage never fails, nothing it logged is
lost: buffered records arrive when the server returns, or wait in a spool file that replays later."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests

from mmaudio import tracking
from mmaudio.config import load_params
from mmaudio.tracking import StageRun, replay_spool

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `mlflow server` process on 127.0.0.1 with its own SQLite store, killable and restartable."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"), start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{self.uri}/health", timeout=3).status_code == 200:
                    return
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
                pass  # not listening yet, or still starting its worker
            assert time.monotonic() < deadline, "mlflow server did not come up in 90 s"
            time.sleep(0.3)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its worker processes
        self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    if s.proc is not None:
        s.kill()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    (ws / "in.txt").write_text("input\n")
    monkeypatch.chdir(ws)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MMAUDIO_TRACKING_RETRY_S", "0.5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    yield ws
    mlflow.set_tracking_uri(None)


def _params(server: Server):
    return load_params([f"tracking.uri={server.uri}", "tracking.experiment=faults"])


def _metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_server_down_at_start_then_up_receives_everything(server, workspace, caplog):
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="mmaudio.tracking"):
        with StageRun("stage_a", _params(server), inputs=["in.txt"]) as run:
            run.sync()  # records go through a background thread
            assert run.run_id is None and run.spool is not None  # nothing reached the store yet
            for step in range(1, 4):
                run.log_metrics({"loss": 1.0 / step}, step=step)
            run.set_tags({"phase": "offline"})
            artifact = workspace / "note.txt"
            artifact.write_text("hello\n")
            run.log_artifact(artifact, artifact_path="notes")
            artifact.unlink()  # a temporary file: the spool kept a copy
            assert time.monotonic() - t0 < 10  # fail-fast client: no long stalls per call
            server.start()
            time.sleep(0.6)  # past the retry interval
            run.log_metrics({"loss": 0.1}, step=4)  # this record sends the spool first
            run.sync()
            assert run.spool is None and run.run_id is not None
    assert not run.incomplete and run.deferred >= 8
    assert "could not send start of run" in caplog.text and "is back: sent the" in caplog.text

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "stage_a"
    assert r.data.params["train.learning_rate"] == "0.001" and r.data.params["data.in.in.txt"] == run.hashes["in.txt"]
    assert r.data.tags["phase"] == "offline" and r.data.tags["mmaudio.stage"] == "stage_a"
    assert r.data.tags["mmaudio.tracking.deferred_records"] == str(run.deferred)
    assert _metric_history(client, run.run_id, "loss") == [(1, 1.0), (2, 0.5), (3, 1.0 / 3), (4, 0.1)]
    assert [a.path for a in client.list_artifacts(run.run_id, "notes")] == ["notes/note.txt"]
    assert [d.dataset.name for d in r.inputs.dataset_inputs] == ["in.txt"]
    assert not list((workspace / "mlflow_spool").iterdir())


def test_server_killed_mid_run_and_restarted(server, workspace, caplog):
    server.start()
    with caplog.at_level(logging.INFO, logger="mmaudio.tracking"):
        with StageRun("stage_b", _params(server)) as run:
            run_id = run.run_id
            run.log_metrics({"loss": 1.0}, step=1)
            run.sync()
            server.kill()
            t0 = time.monotonic()
            for step in range(2, 6):
                run.log_metrics({"loss": float(step)}, step=step)  # the stage goes on
            run.log_params({"late.param": 7})
            run.sync()
            assert time.monotonic() - t0 < 10 and run.spool is not None and run.spool.is_file()
            spooled = run.spool.read_text()
            assert '"step": 2' in spooled and "late.param" in spooled
            server.start()
            time.sleep(0.6)
            run.log_metrics({"loss": 6.0}, step=6)
            run.sync()
            assert run.spool is None
    assert run.run_id == run_id and not run.incomplete
    assert "unreachable" in caplog.text and "metrics ['loss'] at step 2" in caplog.text
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.params["late.param"] == "7"
    assert _metric_history(client, run_id, "loss") == [(s, float(s)) for s in range(1, 7)]


def test_server_gone_for_good_leaves_a_spool_that_replays(server, workspace, caplog, monkeypatch):
    monkeypatch.setenv("MMAUDIO_TRACKING_RETRY_S", "0.1")
    server.start()
    with caplog.at_level(logging.INFO, logger="mmaudio.tracking"):
        with StageRun("stage_c", _params(server)) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            run.sync()  # the run exists on the server before it goes
            server.kill()
            run.log_metrics({"loss": 2.0}, step=2)
            run.set_tags({"result": "kept"})
    assert run.incomplete and run.spool.is_file()
    assert "INCOMPLETE" in caplog.text and str(run.spool) in caplog.text
    spool = run.spool

    server.start()
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    assert client.get_run(run.run_id).info.status == "RUNNING"  # the end never arrived
    assert replay_spool(spool) == run.run_id and not spool.exists()
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["result"] == "kept"
    assert r.data.tags[tracking.INCOMPLETE_TAG] == "replayed"
    assert _metric_history(client, run.run_id, "loss") == [(1, 1.0), (2, 2.0)]


def test_refused_records_still_raise(server, workspace):
    """Only transport failures are buffered: a param changed within a run is an error, as before."""
    server.start()
    with pytest.raises(mlflow.exceptions.MlflowException, match="Changing param values is not allowed"):
        with StageRun("stage_d", _params(server)) as run:
            run.log_params({"p": 1})
            run.log_params({"p": 2})
    assert run.spool is None


def test_credentials_in_the_uri_never_reach_stdout_or_the_log(server, workspace, capfd, caplog, monkeypatch):
    """MLflow prints "View run ... at: <uri>" itself; with a password in the URI that line leaked it."""
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri.replace("http://", "http://alice:s3cret@"))
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    with caplog.at_level(logging.INFO, logger="mmaudio.tracking"):
        with StageRun("stage_e", load_params(["tracking.experiment=creds"])) as run:
            run.log_metrics({"loss": 1.0}, step=1)
    out, err = capfd.readouterr()
    assert run.run_id is not None and not run.incomplete
    assert "View run" not in out
    assert "s3cret" not in out + err + caplog.text
    assert "http://alice:***@127.0.0.1" in caplog.text
    r = mlflow.MlflowClient(tracking_uri=server.uri).get_run(run.run_id)
    assert not any("s3cret" in v for v in [*r.data.params.values(), *r.data.tags.values()])
