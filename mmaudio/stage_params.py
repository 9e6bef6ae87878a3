"""The params a stage reads, as dvc.yaml declares them: what its MLflow run logs.

dvc.yaml is the one place that says which params each stage reads (DVC reruns the stage when one of
them changes), so a stage's MLflow run logs exactly those keys, flattened, instead of the whole
config: ``partition@examples_audio`` logs ``partition.*`` and ``audio_datasets.examples_audio.*``.
A stage that dvc.yaml does not declare (a test, a benchmark) logs the whole config.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from mmaudio.config import Params, to_flat_dict

DVC_FILE = "dvc.yaml"


@functools.lru_cache(maxsize=8)
def _stages(dvc_file: Path, mtime: float) -> dict[str, Any]:
    doc = yaml.safe_load(dvc_file.read_text()) or {}
    return doc.get("stages") or {}


def declared_params(stage: str, root: Path) -> list[str] | None:
    """The params.yaml keys (sections or dotted keys) that dvc.yaml lists for ``stage``
    (``name`` or ``name@item``); None when dvc.yaml or the stage is absent."""
    path = Path(root) / DVC_FILE
    if not path.is_file():
        return None
    name, _, item = stage.partition("@")
    entry = _stages(path, path.stat().st_mtime).get(name)
    if entry is None:
        return None
    body = entry.get("do", entry)
    keys: list[str] = []
    for p in body.get("params") or []:
        if isinstance(p, str):
            keys.append(p.replace("${key}", item))
        elif isinstance(p, dict):  # {params.yaml: [keys]} or another params file
            for file, names in p.items():
                if Path(file).name == "params.yaml":
                    keys.extend(str(n).replace("${key}", item) for n in names or [])
    return keys


def stage_flat_params(stage: str, params: Params, root: Path) -> dict[str, Any]:
    """The flattened params ``stage`` reads (see the module docstring)."""
    flat = to_flat_dict(params)
    keys = declared_params(stage, root)
    if keys is None:
        return flat
    return {k: v for k, v in flat.items() if any(k == d or k.startswith(f"{d}.") for d in keys)}
