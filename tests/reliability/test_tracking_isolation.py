"""Tracking never stops or stalls a stage: a corrupt SQLite store, a server that accepts connections
and never answers (a real socket on 127.0.0.1), hostile spool files, and a run-id file that does not
belong to the weights beside it."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
from pathlib import Path

import mlflow
import pytest

from mmaudio.config import load_params
from mmaudio.tracking import (
    SpoolError,
    StageRun,
    StaleRunIdError,
    redact_credentials,
    replay_spool,
    run_id_for_weights,
    write_run_id_file,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    monkeypatch.chdir(ws)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MMAUDIO_TRACKING_RETRY_S", "0.2")
    yield ws
    mlflow.set_tracking_uri(None)


class StuckServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte back."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.client_gave_up = threading.Event()  # a client closed a connection it had waited on
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):  # read the request, answer nothing
                pass
        except OSError:
            pass
        self.client_gave_up.set()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.held:
            c.close()


def test_stuck_server_never_holds_up_the_stage_and_loses_nothing(workspace, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("MMAUDIO_TRACKING_RETRY_S", "30")
    monkeypatch.setenv("MMAUDIO_TRACKING_FLUSH_S", "2")
    server = StuckServer()
    try:
        params = load_params([f"tracking.uri={server.uri}", "tracking.experiment=stuck"])
        with caplog.at_level(logging.INFO, logger="mmaudio.tracking"):
            with StageRun("stuck_stage", params) as run:
                assert server.accepted.wait(30), "the tracking thread never connected"
                for step in range(1, 21):  # a training loop's metrics while the start of the run hangs
                    run.log_metrics({"loss": 1.0 / step}, step=step)
                # every call above returned while the store still owed its first answer: the stage's
                # thread did not wait for the store
                calls_returned_before_any_answer = not server.client_gave_up.is_set()
                run.set_tags({"result": "kept"})
        assert calls_returned_before_any_answer
    finally:
        server.close()
    assert run.incomplete and run.spool.is_file()
    assert "INCOMPLETE" in caplog.text and "MMAUDIO_TRACKING_FLUSH_S" in caplog.text
    records = [json.loads(line) for line in run.spool.read_text().splitlines()]
    steps = [r["step"] for r in records if r["op"] == "metrics"]
    assert steps == list(range(1, 21))
    assert records[1]["op"] == "start" and records[-1] == {**records[-1], "op": "end", "status": "FINISHED"}

    store = f"sqlite:///{workspace / 'replayed.db'}"
    run_id = replay_spool(run.spool, uri=store)
    client = mlflow.MlflowClient(tracking_uri=store)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(s, 1.0 / s) for s in range(1, 21)]
    assert client.get_run(run_id).data.tags["result"] == "kept"


def test_corrupt_sqlite_store_spools_and_the_stage_goes_on(workspace, caplog):
    db = workspace / "mlflow.db"
    db.write_bytes(b"this is not a database" * 300)
    (workspace / "in.txt").write_text("input\n")
    note = workspace / "note.txt"
    note.write_text("hello\n")
    with caplog.at_level(logging.INFO, logger="mmaudio.tracking"):
        with StageRun("corrupt_stage", load_params(), inputs=["in.txt"]) as run:
            run.log_metrics({"loss": 0.5}, step=1)
            run.log_artifact(note, artifact_path="notes")
            note.unlink()  # a temporary file: the run keeps its own copy
            run.log_params({"late": 3})
    assert run.incomplete and run.spool.is_file()
    assert "unreachable (DatabaseError: (sqlite3.DatabaseError) file is not a database)" in caplog.text
    assert run.hashes == {"in.txt": run.hashes["in.txt"]} and len(run.hashes["in.txt"]) == 32  # the stage's own work

    # the user repairs the store (here: a fresh file; MLflow keeps the corrupt one open in this process)
    fresh = f"sqlite:///{workspace / 'repaired.db'}"
    run_id = replay_spool(run.spool, uri=fresh)
    client = mlflow.MlflowClient(tracking_uri=fresh)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.params["late"] == "3"
    assert r.data.params["data.in.in.txt"] == run.hashes["in.txt"]
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]


def _spool_with(folder: Path, record: dict) -> Path:
    spool = folder / "mlflow_spool" / "evil.jsonl"
    spool.parent.mkdir(parents=True)
    lines = [{"op": "header", "uri": "sqlite:///unused.db", "stage": "x", "run_id": None},
             {"op": "start", "experiment": "evil", "run_name": "x", "artifact_location": None,
              "resume_run_id": None, "time_ms": 0}, record]
    spool.write_text("".join(json.dumps(r) + "\n" for r in lines))
    spool.with_suffix(".files").mkdir()
    return spool


@pytest.mark.parametrize("record, reason", [
    ({"op": "artifact", "path": "../../../../etc/hostname", "name": "hostname", "artifact_path": None, "spooled": True},
     r"path '\.\./\.\./\.\./\.\./etc/hostname' leaves the spool folder"),
    ({"op": "artifact", "path": "/etc/hostname", "name": "hostname", "artifact_path": None, "spooled": True},
     r"path '/etc/hostname' leaves the spool folder"),
    ({"op": "artifact", "path": "/etc/hostname", "name": "hostname", "artifact_path": None},
     r"names a file outside the spool"),
    ({"op": "artifact", "path": "000001/a.txt", "name": "a.txt", "artifact_path": "../../outside", "spooled": True},
     r"artifact path '\.\./\.\./outside' leaves the run's artifact folder"),
])
def test_spool_records_pointing_outside_the_spool_are_refused_and_nothing_is_sent(tmp_path, record, reason):
    spool = _spool_with(tmp_path, record)
    (spool.with_suffix(".files") / "000001").mkdir()
    (spool.with_suffix(".files") / "000001" / "a.txt").write_text("a\n")
    store = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(SpoolError, match=reason):
        replay_spool(spool, uri=store)
    assert spool.is_file()  # kept for inspection
    assert mlflow.MlflowClient(tracking_uri=store).get_experiment_by_name("evil") is None  # not even the start


def test_secret_query_values_and_passwords_are_redacted():
    text = "https://alice:pw1@host/api?token=abc123&run=7 and s3://b/k?X-Amz-Signature=f00d&X-Amz-Date=1 tok@h"
    out = redact_credentials(text)
    assert out == "https://alice:***@host/api?token=***&run=7 and s3://b/k?X-Amz-Signature=***&X-Amz-Date=1 tok@h"


def test_run_id_file_binds_the_run_to_its_weights(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"trained weights")
    record = write_run_id_file(tmp_path / "mlflow_run_id.txt", "0123456789abcdef0123456789abcdef", weights)
    assert record.read_text().splitlines()[0] == "0123456789abcdef0123456789abcdef"
    assert run_id_for_weights(record, weights) == "0123456789abcdef0123456789abcdef"

    weights.write_bytes(b"other weights")  # retrained without the run-id file, or copied from elsewhere
    with pytest.raises(StaleRunIdError, match=rf"^{record}: run 0123456789abcdef0123456789abcdef made a weights\.pth "
                                              rf"with SHA-256 [0-9a-f]{{16}}\.\.\., but {weights} has [0-9a-f]{{16}}\.\.\.: "
                                              r"the run-id file is stale or from another run"):
        run_id_for_weights(record, weights)

    record.write_text("0123456789abcdef0123456789abcdef\n")  # an id alone, as written before the binding
    with pytest.raises(StaleRunIdError, match="records no weights hash"):
        run_id_for_weights(record, weights)
    record.write_text("'; DROP TABLE runs; --\n")
    with pytest.raises(StaleRunIdError, match="is not an MLflow run id"):
        run_id_for_weights(record, weights)
    record.write_text("\n")  # tracking was off: a new run
    assert run_id_for_weights(record, weights) is None
    assert run_id_for_weights(tmp_path / "absent.txt", weights) is None
