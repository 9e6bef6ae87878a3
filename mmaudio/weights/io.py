"""Safe reading and writing of weight files.

Every weight file is read with ``torch.load(..., weights_only=True)``: a file that carries a pickled
object (code) is refused, never executed. Errors name the file and what is wrong with it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class WeightFileError(RuntimeError):
    """A weight file exists but cannot be used (corrupt, truncated, unsafe, wrong layout)."""


def load_weight_file(path: str | os.PathLike, *, subkey: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` safely; ``subkey`` selects a nested dict (e.g. 'generator')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightFileError(f"weight file is empty (0 bytes): {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        raise WeightFileError(
            f"weight file {path} holds objects that are not plain tensors/containers and was refused "
            f"(loading it could run code): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightFileError(f"weight file {path} is corrupt or truncated: {str(e).splitlines()[0]}") from e
    if subkey is not None:
        if not isinstance(obj, Mapping) or subkey not in obj:
            have = sorted(map(str, obj.keys()))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise WeightFileError(f"weight file {path} has no entry '{subkey}' (has: {have})")
        obj = obj[subkey]
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"weight file {path} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightFileError(f"weight file {path}: entries are not tensors: {bad[:5]}")
    # A meta tensor loads without error (map_location does not apply to it) but has no values.
    hollow = [k for k, v in obj.items() if v.is_meta]
    if hollow:
        raise WeightFileError(f"weight file {path}: entries hold no data (meta tensors): {hollow[:5]}")
    # one NaN weight makes every feature and every later checkpoint NaN without any error
    non_finite = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise WeightFileError(f"weight file {path}: entries hold NaN or inf values: {non_finite[:5]}")
    return dict(obj)


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str | os.PathLike) -> None:
    """``module.load_state_dict(strict=True)`` with an error that names the file and every mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:5]})")
        raise WeightFileError(f"weight file {source} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def save_weight_file(obj: Mapping, path: str | os.PathLike) -> Path:
    """Write ``obj`` with torch.save to a temp file in the same folder, then rename (atomic).

    torch.save is given an open file, not a path: with a path it names the zip's top folder after
    the (random) temp file, so the same tensors would give different bytes; through a file object
    the folder is always 'archive' and equal inputs give byte-identical files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def build_module(factory, *, device: str | torch.device = "cpu", seed: int | None = None):
    """``factory()`` built on ``device`` (``'meta'`` for key/shape checks only); with ``seed`` its random
    initialisation comes from that seed without disturbing the caller's global RNG."""
    device = torch.device(device)
    if seed is None:
        with device:
            return factory()
    with torch.random.fork_rng(devices=[]), device:
        torch.manual_seed(seed)
        return factory()
