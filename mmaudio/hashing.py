"""Content hashes computed the way DVC computes them, so MLflow and dvc.lock agree.

A file's hash is the md5 of its bytes. A directory's hash is the md5 of the JSON list
``[{"md5": ..., "relpath": ...}, ...]`` sorted by relpath (json.dumps with sorted keys), plus the
suffix ``.dir`` -- dvc_data's Tree.digest(). Files DVC would ignore (.dvcignore) are not handled:
the pipeline's outs hold none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def file_md5(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: where a hash must resist a crafted collision (weights bound to a run,
    media and shard contents), not DVC's md5."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dir_md5(path: str | os.PathLike) -> str:
    root = Path(path)
    entries = [
        {"md5": file_md5(p), "relpath": p.relative_to(root).as_posix()}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def dvc_hash(path: str | os.PathLike) -> str:
    """DVC's md5 of a file or a directory; raises FileNotFoundError naming the path."""
    p = Path(path)
    if p.is_dir():
        return dir_md5(p)
    if p.is_file():
        return file_md5(p)
    raise FileNotFoundError(f"cannot hash {p}: no such file or directory")


def relpath(path: str | os.PathLike, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), or its absolute path when it lies outside ``root``."""
    p = Path(path).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def input_hashes(paths: Iterable[str | os.PathLike], root: Path) -> dict[str, str]:
    """``{path relative to root: dvc_hash}`` of every input: what a run's identity (the train stage's
    run key) and its MLflow record (``data.in.<path>``) are both computed from."""
    return {relpath(p, root): dvc_hash(p) for p in paths}
