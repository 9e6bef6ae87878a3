"""MLflow tracking shared by every stage: one run per stage execution, started on rank 0 only.

A run records the params the stage reads (as dvc.yaml declares them, flattened), the DVC-style content hash of every input and
output (as params ``data.in.<path>`` / ``data.out.<path>`` and as MLflow dataset inputs with context
``input`` / ``output``), and tags: git commit, dirty flag, DVC experiment name and stage, weight
profile. mlflow is imported lazily so that GPU-only code paths run without it installed.

Store: ``tracking.uri`` in params.yaml, else $MLFLOW_TRACKING_URI, else ``sqlite:///<root>/mlflow.db``
with artifacts in ``<root>/mlartifacts``, where root is $DVC_ROOT (set by DVC, also when it runs an
experiment in a temporary copy) or the repository root.

Tracking faults never stop a stage or lose what it logs. The stage's calls only queue records (an
artifact is copied first); one background thread per run sends them through the MLflow client with
the run id (no global "active run"), so a slow or stuck store never holds up a training loop. At the
end of the stage the thread gets ``$MMAUDIO_TRACKING_FLUSH_S`` seconds (default 60) to finish, then
spools what is left. If the store cannot be reached (connection refused, timeout, a 5xx answer, a
SQLite file that is corrupt or locked by another process) the record and every later one are
appended to a spool file,
``<root>/mlflow_spool/<stage>-<time>-<pid>.jsonl`` (artifacts copied beside it), and a warning says
what could not be sent. At most every ``$MMAUDIO_TRACKING_RETRY_S`` seconds (default 30) a later call
tries to send the spool, in order, and deletes it once everything has gone through; at the end of the
stage a few more bounded tries are made. If the store never returns, the spool stays, the run is
reported incomplete (``StageRun.incomplete``, an error in the log naming the file) and
``python -m mmaudio.tracking replay <spool>`` sends it later. For an HTTP store the client is made to
fail fast: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` defaults to 0 and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` to
10 s unless already set. A local SQLite store takes the same path with no extra cost (no spool is
written unless a call fails to reach the store).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmaudio.config import Params, find_repo_root
from mmaudio.hashing import file_sha256, input_hashes, relpath
from mmaudio.stage_params import stage_flat_params

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
SPOOL_DIR = "mlflow_spool"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own tag for a nested (child) run
INCOMPLETE_TAG = "mmaudio.tracking.incomplete"  # set on a run whose records arrived late (replayed)
_EXIT_ATTEMPTS = 3  # tries to send the spool when the stage ends, RETRY_S apart (at most 5 s)
# MLflow 3's UI shows an experiment of this kind as "Machine learning" (runs, charts), not as a GenAI
# app (traces). The UI's mode switch is per browser (the `workflowType` URL parameter, else the last
# choice, else GenAI): the README's URL carries workflowType=machine_learning for a first visit.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
# `scheme://user:password@host` or `scheme://token@host`: a server, database or git URI may carry a
# secret, which must not reach the MLflow store (anyone who can read runs could read it) or the logs.
_URI_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]+)@")
# `?token=...`, `&X-Amz-Signature=...`, `;password=...`: query values whose name says they are secret
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&;#\s]*(?:token|secret|passw|pwd|sig|key|auth|cred|session)[^=&;#\s]*=)[^&;#\s]+", re.IGNORECASE)
_DB_UNAVAILABLE = re.compile(r"\((?:sqlite3|psycopg2?|pymysql|MySQLdb)\.(?:errors\.)?\w*(?:OperationalError|DatabaseError|InterfaceError)\)")


def redact_credentials(text: str) -> str:
    """``text`` with every URI's password (``user:***@``) or bare token (``***@``) hidden, and the
    values of query parameters named like secrets (``?token=***``, ``&X-Amz-Signature=***``)."""

    def hide(m: re.Match) -> str:
        user, has_password, _ = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:***@" if has_password else f"{m['scheme']}***@"

    return _SECRET_QUERY.sub(r"\g<key>***", _URI_USERINFO.sub(hide, text))


def uri_has_credentials(uri: str) -> bool:
    """True if ``uri`` carries a password, a token before ``@`` or a secret-named query value."""
    return redact_credentials(uri) != uri


def tracking_root() -> Path:
    root = os.environ.get("DVC_ROOT")
    return Path(root).resolve() if root else find_repo_root()


def resolve_tracking_uri(configured: str | None) -> tuple[str, bool]:
    """(uri, is_default_store)."""
    if configured:
        return configured, False
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], False
    return f"sqlite:///{tracking_root() / DB_NAME}", True


def git_state(repo: Path) -> dict[str, str]:
    """Commit, dirty flag and the changed tracked paths of the workspace ``repo``."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return out.stdout if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD").strip() or "unknown"
    # porcelain lines are "XY path"; the leading status column may be a space
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return {
        "git.commit": commit,
        "git.dirty": str(bool(changed)).lower(),
        "git.changed": ",".join(changed)[:_MAX_PARAM_CHARS] if changed else "",
    }


RUN_ID_FILE = "mlflow_run_id.txt"
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids: uuid4 hex


class StaleRunIdError(RuntimeError):
    """A run-id file does not belong to the weights beside it; the message names both files."""



def write_run_id_file(path: str | os.PathLike, run_id: str | None, weights: str | os.PathLike) -> Path:
    """``path``: the run id on the first line, ``<weights file name> sha256 <hex>`` on the second, so a
    later stage logs into this run only while the weights are the ones this run made. An empty first
    line: no run (tracking off or the store unreachable)."""
    path, weights = Path(path), Path(weights)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{run_id or ''}\n{weights.name} sha256 {file_sha256(weights)}\n")
    os.replace(tmp, path)
    return path


def run_id_for_weights(path: str | os.PathLike, weights: str | os.PathLike) -> str | None:
    """The run recorded in the run-id file ``path`` if it made ``weights``; None if the file is absent
    or names no run; StaleRunIdError if it records another file's hash (a stale file, or one copied
    from elsewhere), no hash at all, or no valid run id."""
    path, weights = Path(path), Path(weights)
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines()
    run_id = lines[0].strip() if lines else ""
    if not run_id:
        return None
    if not _RUN_ID.fullmatch(run_id):
        raise StaleRunIdError(f"{path}: first line {run_id[:80]!r} is not an MLflow run id (32 hex digits)")
    bound = re.fullmatch(r"(\S+) sha256 ([0-9a-f]{64})", lines[1].strip()) if len(lines) > 1 else None
    fix = f"rerun the train stage, or delete {path} to log into a new run"
    if bound is None:
        raise StaleRunIdError(f"{path}: run {run_id} records no weights hash ('<file> sha256 <hex>' line), so it "
                              f"cannot be tied to {weights}; {fix}")
    if not weights.is_file():
        raise StaleRunIdError(f"{path}: run {run_id} made {bound[1]}, but {weights} does not exist")
    sha = file_sha256(weights)
    if sha != bound[2]:
        raise StaleRunIdError(
            f"{path}: run {run_id} made a {bound[1]} with SHA-256 {bound[2][:16]}..., but {weights} has "
            f"{sha[:16]}...: the run-id file is stale or from another run; {fix}")
    return run_id


def run_in_store(params: Params, run_id: str | None, what: str) -> str | None:
    """``run_id`` if the tracking store holds it as a live run, or cannot be asked now (records for it
    are spooled as usual). None, after one warning naming ``what`` (the file that named the run), if
    the store answers that it has no such run or that the run was deleted: a new store, a cleared
    mlflow.db. The caller then logs into a new run, at its start, instead of failing at its end."""
    if run_id is None or not params.tracking.enabled:
        return run_id
    from mlflow.exceptions import MlflowException

    uri, _ = resolve_tracking_uri(params.tracking.uri)
    _fail_fast_http(uri)
    try:
        from mlflow import MlflowClient

        info = MlflowClient(tracking_uri=uri).get_run(run_id).info
    except Exception as e:  # noqa: BLE001 - only "unreachable" and "no such run" are handled; the rest re-raise
        if _is_unreachable(e):
            return run_id
        if not (isinstance(e, MlflowException) and e.error_code == "RESOURCE_DOES_NOT_EXIST"):
            raise
        state = "not"
    else:
        if info.lifecycle_stage == "active":
            return run_id
        state = "deleted"
    log.warning("MLflow run %s named by %s is %s in the store %s; logging into a new run instead",
                run_id, what, state, redact_credentials(uri))
    return None


class SpoolError(ValueError):
    """A spool record is malformed or points outside its spool folder; the message names it."""


class TrackingUnreachable(RuntimeError):
    """The tracking store could not be reached; the message says which call and why."""


def _is_unreachable(e: BaseException) -> bool:
    """True for transport failures (the store is down or slow), False for errors of the call itself
    (a changed param value, a bad key) which must still raise."""
    import requests
    from mlflow.exceptions import MlflowException

    import sqlalchemy.exc

    if isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    # a database store that is corrupt, locked by another process or gone: the same as a server away
    if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
            isinstance(e, sqlalchemy.exc.DatabaseError) and not isinstance(e, sqlalchemy.exc.IntegrityError)):
        return True
    # the REST client wraps connection errors, timeouts and non-2xx answers after its retries in this form
    if isinstance(e, MlflowException):
        text = str(e)
        if "API request to" in text and "failed with" in text:
            code = re.search(r"error code (\d{3})", text)
            return code is None or code.group(1).startswith("5")
        if _DB_UNAVAILABLE.match(text):  # the SQL store wraps some driver errors (sqlite "database is locked")
            return True
    return False


def _retry_interval() -> float:
    return float(os.environ.get("MMAUDIO_TRACKING_RETRY_S", "30"))


def _flush_wait() -> float:
    """Seconds the end of a stage waits for its records to reach the store before spooling the rest."""
    return float(os.environ.get("MMAUDIO_TRACKING_FLUSH_S", "60"))


def _request_timeout() -> float:
    return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"))


def _fail_fast_http(uri: str) -> None:
    """Retries with backoff and a 120 s timeout (MLflow's defaults) would stall the stage for minutes
    per call while the server is down; the spool does the retrying instead. MLflow's own "View run
    ... at: <uri>" line is switched off: it prints the URI with any password in it (our log line
    names the run with the password hidden) and costs one more request per run."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _describe(op: Mapping[str, Any]) -> str:
    kind = op["op"]
    if kind in ("params", "tags"):
        return f"{kind} {sorted(op['data'])[:5]}{' ...' if len(op['data']) > 5 else ''}"
    if kind == "metrics":
        return f"metrics {sorted(op['data'])} at step {op['step']}"
    if kind == "artifact":
        return f"artifact {op['name']}"
    if kind == "input":
        return f"dataset {op['context']} {op['name']}"
    if kind == "end":
        return f"end of run ({op['status']})"
    return "start of run"


class _Sender:
    """Performs spooled operations against one store; ``run_id`` is set by the start operation."""

    def __init__(self, uri: str, run_id: str | None, spool_files: Path | None = None):
        _fail_fast_http(uri)
        self.uri = uri
        self._client = None
        self.run_id = run_id
        self.experiment_id: str | None = None
        self.files = spool_files

    @property
    def client(self):
        """Made at the first call: making it opens the store (a corrupt SQLite file fails here), and
        that failure must take the same path as every other one."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def send(self, op: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, kind = self.client, op["op"]
        if kind == "start":
            self._start(op)
            return
        if self.run_id is None:
            raise RuntimeError(f"{_describe(op)}: no run to send it to (the start of the run was not recorded)")
        if kind == "params":
            c.log_batch(self.run_id, params=[Param(k, v) for k, v in op["data"].items()])
        elif kind == "tags":
            c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in op["data"].items()])
        elif kind == "metrics":
            c.log_batch(self.run_id, metrics=[Metric(k, v, op["time_ms"], op["step"] or 0) for k, v in op["data"].items()])
        elif kind == "input":
            self._input(op)
        elif kind == "artifact":
            c.log_artifact(self.run_id, str(self._artifact_file(op)), artifact_path=op["artifact_path"])
        elif kind == "end":
            c.set_terminated(self.run_id, status=op["status"], end_time=op["time_ms"])
        else:
            raise ValueError(f"unknown spooled operation {kind!r}")

    def _artifact_file(self, op: Mapping[str, Any]) -> Path:
        """The file of an artifact record. A spooled record names a file inside the spool's ``.files``
        folder; a spool file is data a user may have been handed, so a path that leaves that folder
        (absolute, ``..``, a symlink out) is refused rather than uploaded."""
        path = Path(op["path"])
        if not op.get("spooled"):
            return path
        if self.files is None:
            raise SpoolError(f"{_describe(op)}: a spooled artifact without its spool folder")
        inside = (self.files / path).resolve()
        if path.is_absolute() or not inside.is_relative_to(self.files.resolve()):
            raise SpoolError(f"{_describe(op)}: path {op['path']!r} leaves the spool folder {self.files}; refused")
        dest = op.get("artifact_path") or ""
        if Path(dest).is_absolute() or ".." in Path(dest).parts:
            raise SpoolError(f"{_describe(op)}: artifact path {dest!r} leaves the run's artifact folder; refused")
        return inside

    def _start(self, op: Mapping[str, Any]) -> None:
        from mlflow.tracking.context.registry import resolve_tags

        c = self.client
        exp = c.get_experiment_by_name(op["experiment"])
        exp_id = exp.experiment_id if exp is not None else c.create_experiment(
            op["experiment"], artifact_location=op["artifact_location"], tags=EXPERIMENT_TAGS)
        if exp is not None and any(exp.tags.get(k) != v for k, v in EXPERIMENT_TAGS.items()):
            from mlflow.exceptions import MlflowException

            for k, v in EXPERIMENT_TAGS.items():
                try:
                    c.set_experiment_tag(exp_id, k, v)
                except MlflowException:
                    # two runs starting together (evaluate opens the training run and its own) both add
                    # the tag, and SQLite refuses the second insert: what counts is that the tag holds v
                    if c.get_experiment(exp_id).tags.get(k) != v:
                        raise
        self.experiment_id = exp_id
        if op["resume_run_id"]:
            self.run_id = op["resume_run_id"]
            c.update_run(self.run_id, status="RUNNING")
            return
        # the same default tags (user, source, git) as mlflow.start_run would add
        # (a git remote URL among them may carry a token: hidden like every other value we log)
        tags = {k: redact_credentials(str(v)) for k, v in resolve_tags({}).items()}
        parent = op.get("parent_run_id")
        if parent:
            # the UI nests a run under the one this tag names, within that run's experiment
            exp_id = c.get_run(parent).info.experiment_id
            tags[MLFLOW_PARENT_RUN_ID] = parent
            self.experiment_id = exp_id
        run = c.create_run(exp_id, start_time=op["time_ms"], run_name=op["run_name"], tags=tags)
        self.run_id = run.info.run_id

    def _input(self, op: Mapping[str, Any]) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        ds = MetaDataset(source=_local_source(Path(op["source"])), name=op["name"], digest=op["digest"])
        self.client.log_inputs(self.run_id, datasets=[
            DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, op["context"])])])


class StageRun:
    """Context manager around one MLflow run for one stage execution.

    On ranks other than 0 every method is a no-op, so callers never branch on rank. A store that
    cannot be reached never raises here: see the module docstring. Every record is handed to a
    background thread that sends it (or spools it), so a slow or stuck store never holds up the
    stage's own thread; ``__exit__`` waits for that thread, bounded by ``$MMAUDIO_TRACKING_FLUSH_S``.

    ``run_id`` logs into an existing run (its params stay as they are: MLflow params are write-once).
    ``parent_run_id`` starts a new run nested under that one, with this stage's own params: the
    evaluate stage records each evaluation's settings this way beside the training run's.
    """

    def __init__(
        self,
        stage: str,
        params: Params,
        *,
        inputs: Sequence[str | os.PathLike] = (),
        rank: int = 0,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
        hashes: Mapping[str, str] | None = None,
    ):
        if run_id is not None and parent_run_id is not None:
            raise ValueError(f"stage {stage}: a run is either resumed (run_id) or nested (parent_run_id), not both")
        self.stage = stage
        self.params = params
        self.inputs = list(inputs)
        self.is_rank0 = rank == 0
        self.active = self.is_rank0 and params.tracking.enabled
        self.resume_run_id = run_id
        self.parent_run_id = parent_run_id
        self.extra_params = dict(extra_params or {})
        self.workspace = find_repo_root()
        # content hashes of inputs the caller already computed with mmaudio.hashing.input_hashes (the
        # train stage's run key needs them before the run starts): not hashed a second time
        self.hashes: dict[str, str] = dict(hashes or {})
        self.spool: Path | None = None  # the spool file while something is unsent
        self.incomplete = False  # True after exit if records could not be sent
        self.deferred = 0  # operations that went through the spool in this run
        self._pending: list[dict[str, Any]] = []
        self._retry_at = 0.0
        self._sender: _Sender | None = None
        self._uri = ""
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._started = threading.Event()  # the start record was sent or spooled
        self._give_up = False  # set by __exit__ after its wait: spool what is left without trying
        self._refused: BaseException | None = None  # the first record the store refused (re-raised at exit)
        self._staging: Path | None = None  # copies of artifacts handed to the worker
        self._staged = 0

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id; None while the store has not been reached (or off this rank)."""
        if self._sender is None:
            return None
        if self._worker is not None and not self._started.is_set():
            self._started.wait(_request_timeout() + 5)  # the start is the first record the worker sends
        return self._sender.run_id

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "StageRun":
        if not self.active:
            return self
        uri, is_default = resolve_tracking_uri(self.params.tracking.uri)
        self._uri = uri
        self._sender = _Sender(uri, None)
        self._staging = Path(tempfile.mkdtemp(prefix=f"mmaudio-{self.stage}-artifacts-"))
        self._worker = threading.Thread(target=self._work, name=f"mlflow-{self.stage}", daemon=True)
        self._worker.start()
        exp = os.environ.get("DVC_EXP_NAME", "")
        run_name = f"{self.stage}" + (f" [{exp}]" if exp else "")
        self._submit({
            "op": "start", "experiment": self.params.tracking.experiment, "run_name": run_name,
            "artifact_location": (tracking_root() / ARTIFACTS_DIR).as_uri() if is_default else None,
            "resume_run_id": self.resume_run_id, "parent_run_id": self.parent_run_id,
            "time_ms": int(time.time() * 1000),
        })
        tags = {
            "mmaudio.stage": self.stage,
            "mmaudio.profile": self.params.profile,
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
            "dvc.exp_name": exp,
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
            **git_state(self.workspace),
        }
        if self.resume_run_id is not None:
            # a later stage logging into an earlier stage's run (evaluate into train) keeps that
            # run's own tags and adds its own under its stage name
            tags = {f"{self.stage}.{k}": v for k, v in tags.items()}
        self.set_tags(tags)
        if self.resume_run_id is None:
            # the params dvc.yaml declares for the stage, not the whole config (mmaudio.stage_params)
            flat = {k: _param_value(v) for k, v in stage_flat_params(self.stage, self.params, self.workspace).items()}
            flat.update({k: _param_value(v) for k, v in self.extra_params.items()})
            self._submit({"op": "params", "data": flat})
        self._log_paths(self.inputs, "in")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.active:
            return
        self._submit({"op": "end", "status": "FAILED" if exc_type is not None else "FINISHED",
                      "time_ms": int(time.time() * 1000)})
        self._queue.put(None)  # the worker's last item: it makes its final tries and returns
        self._worker.join(_flush_wait())
        if self._worker.is_alive():
            log.warning("MLflow store %s has not taken the stage's records within %.0f s "
                        "($MMAUDIO_TRACKING_FLUSH_S); spooling the rest", redact_credentials(self._uri), _flush_wait())
            self._give_up = True
            self._worker.join(_request_timeout() + 5)  # at most the call in flight
        if self._worker.is_alive():
            log.error("MLflow: the tracking thread of %s is stuck in a call to %s; records after it may be lost",
                      self.stage, redact_credentials(self._uri))
        else:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._pending:
            self.incomplete = True
            log.error(
                "MLflow run of %s is INCOMPLETE: %d records could not be sent to %s (%s); they are kept in %s. "
                "Send them with: python -m mmaudio.tracking replay %s",
                self.stage, len(self._pending), redact_credentials(self._uri),
                ", ".join(_describe(op) for op in self._pending[:4]) + (" ..." if len(self._pending) > 4 else ""),
                self.spool, self.spool)
        if self._refused is not None and exc_type is None:
            # an error of the call itself (a param changed within a run, a bad key): a bug to fix, as
            # it was when records were sent from the stage's thread
            raise self._refused

    # -- the worker thread: sending, or spooling when the store is away --------------------------

    def _submit(self, op: dict[str, Any]) -> None:
        if op["op"] == "artifact":
            # the caller may delete or rewrite the file once this returns (a temporary sample)
            self._staged += 1
            dest = self._staging / f"{self._staged:06d}" / Path(op["path"]).name
            dest.parent.mkdir()
            shutil.copy2(op["path"], dest)
            op = {**op, "path": str(dest)}
        self._queue.put(op)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every record handed in so far was sent or spooled (False: ``timeout`` passed first)."""
        if self._worker is None:
            return True
        done = threading.Event()
        self._queue.put({"op": "sync", "done": done})
        return done.wait(timeout)

    def _work(self) -> None:
        while (op := self._queue.get()) is not None:
            if op["op"] == "sync":
                op["done"].set()
                continue
            try:
                self._process(op)
            except Exception as e:  # noqa: BLE001 - the thread must outlive one bad record; __exit__ re-raises it
                log.error("MLflow refused %s: %s", _describe(op), redact_credentials(_first_line(e)))
                if self._refused is None:
                    self._refused = e
            finally:
                if op["op"] == "start":
                    self._started.set()
                    # the experiment id completes the README's UI link: #/experiments/<id>?workflowType=machine_learning
                    log.info("MLflow run %s (%s) in experiment %s at %s",
                             self._sender.run_id or "(not started yet: store unreachable)", op["run_name"],
                             self._sender.experiment_id, redact_credentials(self._uri))
        pause = min(_retry_interval(), 5.0)
        for attempt in range(_EXIT_ATTEMPTS):
            if not self._pending or self._give_up:
                break
            if attempt:
                time.sleep(pause)
            self._flush()

    def _process(self, op: dict[str, Any]) -> None:
        if self._give_up:
            if self.spool is None:
                self._go_offline(op, TimeoutError("the stage ended before the store answered"))
            self._spool(op)
            return
        if self._pending and time.monotonic() >= self._retry_at:
            self._flush()
        if not self._pending:
            try:
                self._sender.send(op)
                if op["op"] == "artifact":
                    Path(op["path"]).unlink()  # the staged copy
                return
            except Exception as e:  # noqa: BLE001 - only transport failures are kept; the rest re-raise
                if not _is_unreachable(e):
                    raise
                self._go_offline(op, e)
        self._spool(op)

    def _go_offline(self, op: Mapping[str, Any], e: BaseException) -> None:
        if self.spool is None:
            folder = tracking_root() / SPOOL_DIR
            folder.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.stage)
            self.spool = folder / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"
        self._retry_at = time.monotonic() + _retry_interval()
        log.warning("MLflow store %s unreachable (%s): could not send %s; buffering it and later records in %s, "
                    "retrying in %.0f s", redact_credentials(self._uri), redact_credentials(_first_line(e)),
                    _describe(op), self.spool, _retry_interval())

    def _spool(self, op: dict[str, Any]) -> None:
        if op["op"] == "artifact" and not op.get("spooled"):
            # the file may be a temporary one: keep a copy beside the spool
            files = self.spool.with_suffix(".files")
            dest = files / f"{len(self._pending):06d}" / Path(op["path"]).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(op["path"], dest)
            op = {**op, "path": dest.relative_to(files).as_posix(), "spooled": True}
        self._pending.append(op)
        self.deferred += 1
        log.info("MLflow store unreachable: buffered %s", _describe(op))
        with open(self.spool, "a") as f:
            if f.tell() == 0:
                f.write(json.dumps(self._header()) + "\n")
            f.write(json.dumps(op) + "\n")

    def _header(self) -> dict[str, Any]:
        return {"op": "header", "uri": redact_credentials(self._uri), "stage": self.stage, "run_id": self._sender.run_id}

    def _flush(self) -> bool:
        """Send the spooled records in order; True when none is left. Stops at the first transport failure."""
        self._sender.files = self.spool.with_suffix(".files")
        while self._pending:
            op = self._pending[0]
            try:
                self._sender.send(op)
            except Exception as e:  # noqa: BLE001 - see _submit
                if not _is_unreachable(e):
                    # the store refuses this record (it would have raised had it been sent at once);
                    # raising now would stop the stage at an unrelated call, so say so and go on
                    log.error("MLflow refused buffered %s: %s", _describe(op), redact_credentials(_first_line(e)))
                    self._pending.pop(0)
                    continue
                self._retry_at = time.monotonic() + _retry_interval()
                log.warning("MLflow store %s still unreachable (%s); %d records wait in %s",
                            redact_credentials(self._uri), redact_credentials(_first_line(e)), len(self._pending), self.spool)
                self._rewrite_spool()
                return False
            self._pending.pop(0)
        log.warning("MLflow store %s is back: sent the %d buffered records of run %s", redact_credentials(self._uri),
                    self.deferred, self._sender.run_id)
        try:
            self._sender.send({"op": "tags", "data": {"mmaudio.tracking.deferred_records": str(self.deferred)}})
        except Exception as e:  # noqa: BLE001 - a note only; everything the stage logged is already sent
            if not _is_unreachable(e):
                raise
        self.spool.unlink(missing_ok=True)
        shutil.rmtree(self.spool.with_suffix(".files"), ignore_errors=True)
        self.spool = None
        return True

    def _rewrite_spool(self) -> None:
        tmp = self.spool.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in [self._header(), *self._pending]))
        os.replace(tmp, self.spool)

    # -- logging -----------------------------------------------------------------------------

    def log_outputs(self, outputs: Sequence[str | os.PathLike]) -> dict[str, str]:
        """Hash outputs after they are written; logs ``data.out.<path>`` params and datasets."""
        if not self.active:
            return {}
        return self._log_paths(outputs, "out")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        self._submit({"op": "metrics", "data": {k: float(v) for k, v in metrics.items()}, "step": step,
                      "time_ms": int(time.time() * 1000)})

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        self._submit({"op": "params", "data": {k: _param_value(v) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        self._submit({"op": "tags", "data": {k: redact_credentials(str(v)) for k, v in tags.items()}})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        self._submit({"op": "artifact", "path": str(Path(path).resolve()), "name": Path(path).name,
                      "artifact_path": artifact_path})

    def _log_paths(self, paths, direction: str) -> dict[str, str]:
        known = self.hashes if direction == "in" else {}
        computed = input_hashes([p for p in paths if relpath(p, self.workspace) not in known], self.workspace)
        logged: dict[str, str] = {}
        for p in paths:
            rel = relpath(p, self.workspace)
            digest = logged[rel] = known[rel] if rel in known else computed[rel]
            self._submit({"op": "params", "data": {f"data.{direction}.{rel}": digest}})
            self._submit({"op": "input", "name": rel, "digest": digest, "source": str(Path(p).resolve()),
                          "context": "input" if direction == "in" else "output"})
        self.hashes.update(logged)
        return logged


def replay_spool(path: str | os.PathLike, uri: str | None = None) -> str:
    """Send the records of a spool file left by an incomplete run; returns the run id. The run gets
    the tag ``mmaudio.tracking.incomplete`` = ``replayed``. The file is deleted once all went through."""
    path = Path(path)
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("op") != "header":
        raise ValueError(f"{path}: not a tracking spool file (no header line)")
    header, ops = lines[0], lines[1:]
    files = path.with_suffix(".files")
    for i, op in enumerate(ops):  # all checked before any is sent: a hostile file sends nothing
        if op.get("op") == "artifact":
            if not op.get("spooled"):
                raise SpoolError(f"{path}: record {i + 1} ({_describe(op)}) names a file outside the spool; refused")
            _Sender("file:///unused", None, files)._artifact_file(op)
    target = uri or header["uri"]
    if "***@" in target:
        raise ValueError(f"{path}: the recorded URI {target} had credentials removed; pass the URI")
    sender = _Sender(target, header["run_id"], files)
    for i, op in enumerate(ops):
        try:
            sender.send(op)
        except Exception as e:  # noqa: BLE001 - name the record that failed, keep the file
            raise TrackingUnreachable(f"{path}: record {i + 1} of {len(ops)} ({_describe(op)}) not sent: {_first_line(e)}") from e
    sender.send({"op": "tags", "data": {INCOMPLETE_TAG: "replayed"}})
    path.unlink()
    shutil.rmtree(path.with_suffix(".files"), ignore_errors=True)
    return sender.run_id


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _local_source(path: Path):
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        # MLflow registers the local-file source class twice and warns that the choice is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(str(path))


def _param_value(v: Any) -> str:
    s = "null" if v is None else redact_credentials(str(v))
    return s if len(s) <= _MAX_PARAM_CHARS else s[: _MAX_PARAM_CHARS - 3] + "..."


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mmaudio.tracking", description="Send spooled MLflow records.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("replay", help="send the records of spool files left by incomplete runs")
    rp.add_argument("spool", nargs="+", type=Path)
    rp.add_argument("--uri", default=None, help="tracking URI (default: the one recorded in the file)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for path in args.spool:
        log.info("%s: sent to run %s", path, replay_spool(path, args.uri))


if __name__ == "__main__":
    main(sys.argv[1:])
