"""Training checkpoints: one file per saved step, written aside and renamed, the last K kept.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (so ``torch.load`` with
``weights_only=True`` reads it): the unwrapped, uncompiled network's state dict, the EMA averages,
the optimizer and scheduler states, the loader position, every RNG state as a uint8 tensor, the
step, the metric history and the resolved config. :mod:`mmaudio.training.state` defines the keys.

Each checkpoint ``ckpt-<step>.pt`` has a sidecar ``ckpt-<step>.pt.sum`` (JSON: size in bytes and
SHA-256), written aside and renamed after the checkpoint itself. Resuming takes the newest checkpoint
whose size and hash match its sidecar, that loads and holds every key; a damaged one (truncated by a
disk fault, overwritten by another program) is reported with a warning naming the file and the
reason, and the next older one is tried. A checkpoint without a sidecar (the process was killed
between the two renames) is still whole, since it was renamed into place complete; it is used if it
loads.
"""

from __future__ import annotations

import logging
import os
import hashlib
import json
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mmaudio.weights import save_weight_file

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^ckpt-(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


def load_plain_file(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict written by this package. ``mmap`` maps the tensors
    from the file instead of reading them (for read-only use: an optimizer must not keep them)."""
    path = Path(path)
    if not path.is_file():
        # e.g. a resume on several nodes whose train.out_dir is not one shared filesystem: rank 0
        # chose a checkpoint the other nodes cannot see
        raise CheckpointError(
            f"{path} does not exist on this machine (multi-node runs need train.out_dir on a filesystem "
            "every node shares)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers: {_line(e)}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {_line(e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a dict (found {type(obj).__name__})")
    return obj


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:09d}.pt"


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sum")


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def write_sidecar(path: str | os.PathLike) -> Path:
    """Record ``path``'s size and hash in its sidecar, written to a temp name and renamed (atomic)."""
    size, sha = file_digest(path)
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps({"file": Path(path).name, "bytes": size, "sha256": sha}) + "\n")
    os.replace(tmp, side)
    return side


def verify_sidecar(path: str | os.PathLike) -> bool:
    """True if ``path`` matches its sidecar, False if it has none; CheckpointError naming the file if
    the size or hash differ (a truncated or overwritten file) or the sidecar is unreadable."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        return False
    try:
        rec = json.loads(side.read_text())
        want_size, want_sha = int(rec["bytes"]), str(rec["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{side}: unreadable size/hash record ({_line(e)})") from e
    size = path.stat().st_size
    if size != want_size:
        raise CheckpointError(f"{path} is {size} bytes, its record {side.name} says {want_size} (truncated?)")
    _, sha = file_digest(path)
    if sha != want_sha:
        raise CheckpointError(f"{path} has SHA-256 {sha[:16]}..., its record {side.name} says {want_sha[:16]}...")
    return True


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name)))


def save_checkpoint(folder: str | os.PathLike, state: Mapping[str, Any], keep_last: int) -> Path:
    """Write ``state`` (which holds ``step``) as ``folder/ckpt-<step>.pt``, then delete all but the
    newest ``keep_last`` checkpoints. A kill at any moment leaves the previous files whole."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    path = save_weight_file(dict(state), checkpoint_path(folder, int(state["step"])))
    write_sidecar(path)
    for _, old in list_checkpoints(folder)[:-keep_last]:
        old.unlink()
        sidecar_path(old).unlink(missing_ok=True)
    return path


def load_latest_checkpoint(folder: str | os.PathLike, required: Sequence[str] = ()) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint in ``folder`` (one that holds every ``required`` key; the training
    checkpoint's are :data:`mmaudio.training.state.REQUIRED_CHECKPOINT_KEYS`) and its path, or None."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            if not verify_sidecar(path):
                log.info("%s has no size/hash record (killed right after writing it); checking that it loads", path)
            state = load_plain_file(path)
            missing = [k for k in required if k not in state]
            if missing:
                raise CheckpointError(f"{path} lacks {missing}")
            if int(state["step"]) != step:
                raise CheckpointError(f"{path} holds step {state['step']} but is named for step {step}")
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint, trying the previous one: %s", e)
            continue
        return state, path
    return None


def rng_states(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """The process's RNG states as uint8 tensors: torch's CPU RNG, every CUDA device's, and ``generators``."""
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng_states(state: Mapping[str, Any], generators: Mapping[str, torch.Generator], source: str) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda: Sequence[torch.Tensor] = state["torch_cuda"]
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            log.warning("%s: saved %d CUDA RNG states, this machine has %d devices; not restored",
                        source, len(cuda), torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all(list(cuda))
    saved = state["generators"]
    if set(saved) != set(generators):
        raise CheckpointError(f"{source}: generator states {sorted(saved)} do not match {sorted(generators)}")
    for name, g in generators.items():
        g.set_state(saved[name])
