"""Typed configuration: params.yaml composed through Hydra, validated against dataclasses.

params.yaml at the repository root is the single source of truth (DVC tracks it, `dvc exp run -S`
edits it). Every stage calls :func:`load_params` with its command-line overrides; the result is a
tree of dataclasses that
callers treat as read-only (OmegaConf cannot merge into frozen dataclasses). An unknown key or a value of the wrong type raises :class:`ConfigError`
naming the key. Derived values are properties, never written back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml or an override is invalid; the message names the key."""


@dataclass
class ExamplesConfig:
    """The example-media generator (stage `make_examples`)."""

    seed: int = 0
    out_dir: str = "data/examples"


@dataclass
class PartitionConfig:
    """Upstream's clip partitioning (training/partition_clips.py), made explicit."""

    min_duration_sec: float = 8.1  # shorter files are skipped (into the rejects manifest)
    segment_sec: float = 8.1  # each clip; 0.1 s of slack over the 8 s the model sees
    max_segments: int = 5  # evenly spaced over the file


@dataclass
class AudioDatasetConfig:
    """An audio-only dataset: a folder of flac/wav files and a captions TSV keyed by file stem."""

    media_dir: str = "???"
    captions_tsv: str = "???"
    clips_tsv: str = "???"  # written by the partition stage
    rejects_tsv: str = "???"  # files the partition stage could not use, with the reason


@dataclass
class VideoDatasetConfig:
    """A video dataset: a folder of videos and a list TSV (`id, label`) of one split."""

    media_dir: str = "???"
    list_tsv: str = "???"
    index_tsv: str = "???"  # written by the index_videos stage: the usable rows with stream facts
    rejects_tsv: str = "???"  # rows the index stage could not use, with the reason
    split: str = "train"
    normalize_audio: bool = True  # peak-normalise training audio (upstream), not val/test


@dataclass
class IndexConfig:
    """Header checks of video lists (stage `index_videos`)."""

    min_duration_sec: float = 8.0  # the clip length the model trains on


@dataclass
class TrackingConfig:
    """MLflow. `uri: null` means a SQLite file at the repo root (or $MLFLOW_TRACKING_URI if set)."""

    uri: str | None = None
    experiment: str = "mmaudio"


@dataclass
class Params:
    """The whole of params.yaml."""

    profile: str = "tiny"  # weight profile: tiny (generated, default) | official (ext_weights/)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    audio_datasets: dict[str, AudioDatasetConfig] = field(default_factory=dict)
    video_datasets: dict[str, VideoDatasetConfig] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


PROFILES = ("tiny", "official")


def find_repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) that holds params.yaml.

    DVC runs stage commands in the workspace it is reproducing (a temporary copy for queued
    experiments), so the params.yaml found from cwd is the one this run must use.
    """
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / PARAMS_FILE).is_file():
            return d
    raise ConfigError(f"no {PARAMS_FILE} found in {here} or any parent folder")


def load_params(overrides: Sequence[str] = (), root: str | os.PathLike | None = None) -> Params:
    """Compose ``root/params.yaml`` with Hydra-style ``overrides`` into a validated :class:`Params`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    root = Path(root).resolve() if root is not None else find_repo_root()
    path = root / PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        with initialize_config_dir(config_dir=str(root), version_base=None):
            raw = compose(config_name=Path(PARAMS_FILE).stem, overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_describe(e)}") from e
    return validate(raw, source=str(path))


def validate(raw: DictConfig | dict[str, Any], source: str = PARAMS_FILE) -> Params:
    """Merge ``raw`` onto the dataclass schema; unknown keys and wrong types name the key."""
    schema = OmegaConf.structured(Params)
    try:
        merged = OmegaConf.merge(schema, raw)
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_describe(e)}") from e
    _check_values(params, source)
    return params


def _check_values(p: Params, source: str) -> None:
    if p.profile not in PROFILES:
        raise ConfigError(f"{source}: key 'profile' must be one of {PROFILES}, got {p.profile!r}")
    if p.index.min_duration_sec <= 0:
        raise ConfigError(f"{source}: key 'index.min_duration_sec' must be > 0, got {p.index.min_duration_sec}")
    for name in [*p.audio_datasets, *p.video_datasets]:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{source}: dataset name {name!r} must be a plain name")
    if p.partition.max_segments < 1:
        raise ConfigError(f"{source}: key 'partition.max_segments' must be >= 1, got {p.partition.max_segments}")
    if p.partition.segment_sec <= 0:
        raise ConfigError(f"{source}: key 'partition.segment_sec' must be > 0, got {p.partition.segment_sec}")
    if p.partition.min_duration_sec < p.partition.segment_sec:
        raise ConfigError(
            f"{source}: key 'partition.min_duration_sec' ({p.partition.min_duration_sec}) must be >= "
            f"'partition.segment_sec' ({p.partition.segment_sec})"
        )


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = _first_line(e)
    return f"key '{key}': {msg}" if key else msg


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config (dataclasses / dicts) into dotted keys, for MLflow params."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(to_flat_dict(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}
