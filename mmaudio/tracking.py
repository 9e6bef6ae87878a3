"""MLflow tracking shared by every stage: one run per stage execution, started on rank 0 only.

A run records the resolved config (flattened params), the DVC-style content hash of every input and
output (as params ``data.in.<path>`` / ``data.out.<path>`` and as MLflow dataset inputs with context
``input`` / ``output``), and tags: git commit, dirty flag, DVC experiment name and stage, weight
profile. mlflow is imported lazily so that GPU-only code paths run without it installed.

Store: ``tracking.uri`` in params.yaml, else $MLFLOW_TRACKING_URI, else ``sqlite:///<root>/mlflow.db``
with artifacts in ``<root>/mlartifacts``, where root is $DVC_ROOT (set by DVC, also when it runs an
experiment in a temporary copy) or the repository root.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmaudio.config import Params, find_repo_root, to_flat_dict
from mmaudio.hashing import dvc_hash

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


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


def relpath(path: str | os.PathLike, root: Path) -> str:
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


class StageRun:
    """Context manager around one MLflow run for one stage execution.

    On ranks other than 0 every method is a no-op, so callers never branch on rank.
    """

    def __init__(
        self,
        stage: str,
        params: Params,
        *,
        inputs: Sequence[str | os.PathLike] = (),
        rank: int = 0,
        run_id: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ):
        self.stage = stage
        self.params = params
        self.inputs = list(inputs)
        self.active = rank == 0
        self.resume_run_id = run_id
        self.extra_params = dict(extra_params or {})
        self.workspace = find_repo_root()
        self.run_id: str | None = None
        self.hashes: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "StageRun":
        if not self.active:
            return self
        import mlflow

        uri, is_default = resolve_tracking_uri(self.params.tracking.uri)
        mlflow.set_tracking_uri(uri)
        exp_name = self.params.tracking.experiment
        if mlflow.get_experiment_by_name(exp_name) is None:
            artifact_location = (tracking_root() / ARTIFACTS_DIR).as_uri() if is_default else None
            mlflow.create_experiment(exp_name, artifact_location=artifact_location)
        mlflow.set_experiment(exp_name)
        exp = os.environ.get("DVC_EXP_NAME", "")
        run_name = f"{self.stage}" + (f" [{exp}]" if exp else "")
        run = mlflow.start_run(run_id=self.resume_run_id, run_name=None if self.resume_run_id else run_name)
        self.run_id = run.info.run_id
        tags = {
            "mmaudio.stage": self.stage,
            "mmaudio.profile": self.params.profile,
            "dvc.stage": os.environ.get("DVC_STAGE", ""),
            "dvc.exp_name": exp,
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
            **git_state(self.workspace),
        }
        mlflow.set_tags(tags)
        if self.resume_run_id is None:
            flat = {k: _param_value(v) for k, v in to_flat_dict(self.params).items()}
            flat.update({k: _param_value(v) for k, v in self.extra_params.items()})
            mlflow.log_params(flat)
        self._log_paths(self.inputs, "in")
        log.info("MLflow run %s (%s) at %s", self.run_id, run_name, uri)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.active or self.run_id is None:
            return
        import mlflow

        mlflow.end_run(status="FAILED" if exc_type is not None else "FINISHED")

    # -- logging -----------------------------------------------------------------------------

    def log_outputs(self, outputs: Sequence[str | os.PathLike]) -> dict[str, str]:
        """Hash outputs after they are written; logs ``data.out.<path>`` params and datasets."""
        if not self.active:
            return {}
        return self._log_paths(outputs, "out")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_params({k: _param_value(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def _log_paths(self, paths, direction: str) -> dict[str, str]:
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset

        logged: dict[str, str] = {}
        for p in paths:
            rel = relpath(p, self.workspace)
            digest = dvc_hash(p)
            logged[rel] = digest
            mlflow.log_param(f"data.{direction}.{rel}", digest)
            ds = MetaDataset(source=_local_source(Path(p).resolve()), name=rel, digest=digest)
            mlflow.log_input(ds, context="input" if direction == "in" else "output")
        self.hashes.update(logged)
        return logged


def _local_source(path: Path):
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        # MLflow registers the local-file source class twice and warns that the choice is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(str(path))


def _param_value(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= _MAX_PARAM_CHARS else s[: _MAX_PARAM_CHARS - 3] + "..."
