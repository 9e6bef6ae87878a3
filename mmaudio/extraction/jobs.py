"""Jobs: what an extraction stage extracts, resolved from params (rows, decoder, settings, paths),
the encoders it builds, and what it reports."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmaudio.config import ConfigError, Params, find_repo_root
from mmaudio.distributed import DistContext
from mmaudio.extraction.pipeline import Encoders, extract_features
from mmaudio.extraction.settings import ExtractResult, ExtractSettings
from mmaudio.extraction.shards import code_fingerprint, paths_fingerprint, work_dir_for
from mmaudio.modes import mode_spec
from mmaudio.tables import log_reject_summary
from mmaudio.segments import AudioClipDataset, ClipRow, RowList, VideoClipDataset, audio_rows, video_rows


@dataclass
class ExtractJob:
    """One dataset's extraction, resolved from params: rows, decoder, settings, paths."""

    name: str
    kind: str
    rows: list[ClipRow]
    carried_rejects: list[tuple[str, str]]  # from earlier stages' rejects manifests
    listing_rejects: list[tuple[str, str]]  # rows this stage cannot list (no caption, no file)
    dataset: Dataset
    settings: ExtractSettings
    out_dir: Path
    inputs: list[str]  # data the job reads, for tracking
    info: dict[str, object]  # extra info.json entries


def _settings(params: Params, kind: str, device: torch.device, weights: Sequence[str | os.PathLike], extra: Mapping[str, Any]) -> ExtractSettings:
    e = params.extract
    spec = mode_spec(e.mode)
    return ExtractSettings(
        kind=kind,
        mode=e.mode,
        storage_dtype=e.storage_dtype,
        batch_size=e.batch_size,
        shard_size=e.shard_size,
        num_workers=e.num_workers,
        fingerprint_settings={
            "kind": kind,
            "mode": e.mode,
            "sample_rate": spec.sample_rate,
            "num_samples": spec.num_audio_samples,
            "duration_sec": spec.duration_sec,
            "storage_dtype": e.storage_dtype,
            "batch_size": e.batch_size,  # batch composition can change GPU arithmetic
            "device_type": device.type,
            "tf32": e.allow_tf32 and device.type == "cuda",
            "amp": e.amp,
            "profile": params.profile,
            "weights": paths_fingerprint(weights),
            "code": code_fingerprint(),
            **extra,
        },
    )


def _job(params: Params, name: str, kind: str, listed: RowList, dataset: Dataset, device: torch.device,
         weights: Sequence[str | os.PathLike], normalize_audio: bool, inputs: list[str], info: dict[str, object]) -> ExtractJob:
    spec = mode_spec(params.extract.mode)
    return ExtractJob(
        name=name,
        kind=kind,
        rows=listed.rows,
        carried_rejects=listed.carried,
        listing_rejects=listed.rejects,
        dataset=dataset,
        settings=_settings(params, kind, device, weights, {"normalize_audio": normalize_audio}),
        out_dir=Path(params.extract.out_dir) / name,
        inputs=inputs,
        info={"dataset": name, **info, "profile": params.profile, "sample_rate": spec.sample_rate,
              "num_samples": spec.num_audio_samples},
    )


def _dataset_entry(params: Params, kind: str, name: str):
    datasets = params.audio_datasets if kind == "audio" else params.video_datasets
    if name not in datasets:
        raise ConfigError(f"no {kind} dataset {name!r} in params.yaml (have {sorted(datasets)})")
    return datasets[name]


def audio_job(params: Params, name: str, device: torch.device, weights: Sequence[str | os.PathLike] = ()) -> ExtractJob:
    """The extraction of audio dataset ``name`` (``weights``: files the encoders read, for the fingerprint)."""
    ds = _dataset_entry(params, "audio", name)
    listed = audio_rows(ds)
    spec = mode_spec(params.extract.mode)
    dataset = AudioClipDataset(listed.rows, sample_rate=spec.sample_rate, num_samples=spec.num_audio_samples)
    return _job(params, name, "audio", listed, dataset, device, weights, normalize_audio=True,
                inputs=[ds.media_dir, ds.captions_tsv, ds.clips_tsv, ds.rejects_tsv], info={})


def video_job(params: Params, name: str, device: torch.device, weights: Sequence[str | os.PathLike] = ()) -> ExtractJob:
    """The extraction of video dataset ``name``."""
    ds = _dataset_entry(params, "video", name)
    listed = video_rows(ds)
    spec = mode_spec(params.extract.mode)
    dataset = VideoClipDataset(listed.rows, sample_rate=spec.sample_rate, num_samples=spec.num_audio_samples,
                               duration_sec=spec.duration_sec, normalize_audio=ds.normalize_audio)
    return _job(params, name, "video", listed, dataset, device, weights, normalize_audio=ds.normalize_audio,
                inputs=[ds.media_dir, ds.index_tsv, ds.rejects_tsv],
                info={"split": ds.split, "normalize_audio": ds.normalize_audio})


JOB_BUILDERS: dict[str, Callable[..., ExtractJob]] = {"audio": audio_job, "video": video_job}


def run_job(job: ExtractJob, make_encoders: Callable[[], Encoders], ctx: DistContext, progress: bool = True) -> ExtractResult | None:
    """Extract ``job`` on this rank; rank 0 returns the merged result, the others None."""
    return extract_features(
        job.rows,
        job.dataset,
        make_encoders,
        job.settings,
        ctx,
        out_dir=job.out_dir,
        carried_rejects=job.carried_rejects,
        listing_rejects=job.listing_rejects,
        info=job.info,
        progress=progress,
    )


def result_metrics(result: ExtractResult) -> dict[str, float]:
    """What a stage logs to MLflow about an extraction."""
    return {
        "rows": result.rows,
        "clips": result.clips,
        "rejects": len(result.rejects),
        "rejects_extract": result.new_rejects,
        "rejects_carried": len(result.rejects) - result.new_rejects,
        "shards": result.shards,
        "shards_resumed": result.shards_resumed,
        "clips_encoded": result.clips_encoded,
        "clips_per_sec": result.clips_per_sec,
        "extract_seconds": result.seconds,
    }


def log_rejects(logger: logging.Logger, result: ExtractResult) -> None:
    """The first rejects one per line, then counts per kind of reason (rejects.tsv has them all)."""
    log_reject_summary(logger, result.rejects)
    if result.clips == 0 and result.rejects:
        logger.error("every row was rejected (%d; reasons above): the feature set is empty", len(result.rejects))


# -- encoders ---------------------------------------------------------------------------------------

_COMPONENTS = {"audio": ("audio", "text"), "video": ("audio", "clip", "sync", "text")}


def encoder_weight_paths(params: Params, kind: str) -> list[Path]:
    """The weight files the encoders of ``kind`` read under ``params.profile``, for fingerprints and
    tracking. Raises MissingWeightsError listing every absent file (with where to get it) up front."""
    from mmaudio.encoders.profiles import check_weights, weight_paths

    root = find_repo_root()
    check_weights(params.profile, params.extract.mode, _COMPONENTS[kind], root=root)
    return weight_paths(params.profile, params.extract.mode, _COMPONENTS[kind], root=root)


def encoder_factory(params: Params, kind: str, device: torch.device) -> Callable[[], Encoders]:
    """A callable that builds the encoders ``kind`` needs (called only when there is work)."""

    def make() -> Encoders:
        from mmaudio.encoders.feature_encoders import FeatureEncoders

        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = params.extract.allow_tf32
            torch.backends.cudnn.allow_tf32 = params.extract.allow_tf32
        return FeatureEncoders(
            params.profile, params.extract.mode, root=find_repo_root(), device=device, components=_COMPONENTS[kind],
            amp=params.extract.amp,
        )

    return make


# what the stage itself reads (and declares); every other input of the pipeline (list TSVs among them)
# is protected by mmaudio.paths.pipeline_sources
_DATASET_PATH_KEYS = {"audio": ("media_dir", "captions_tsv", "clips_tsv", "rejects_tsv"),
                      "video": ("media_dir", "index_tsv", "rejects_tsv")}


def check_extract_paths(params: Params, job: ExtractJob, weights: Sequence[str | os.PathLike]) -> None:
    """Refuse an extract.out_dir whose feature set (or its work folder) would land on an input, the
    repository or the weights, before any decoding; and refuse to start unless the set fits on disk."""
    from mmaudio.features import feature_set_bytes
    from mmaudio.paths import check_free_space, check_stage_paths

    section = f"{job.kind}_datasets"
    ds = getattr(params, section)[job.name]
    reads = {f"{section}.{job.name}.{f}": getattr(ds, f) for f in _DATASET_PATH_KEYS[job.kind]}
    reads |= {f"the {params.profile} weights' {Path(w).name}": w for w in weights}
    key = "extract.out_dir"
    check_stage_paths(params, {key: job.out_dir}, reads=reads)
    check_stage_paths(params, {key: work_dir_for(job.out_dir)}, reads=reads)
    # the shards and the merged set are on disk together until the merge ends; finished shards count
    work = work_dir_for(job.out_dir)
    done = sum(f.stat().st_size for f in work.glob("shard-*.pt")) if work.is_dir() else 0
    need = 2 * feature_set_bytes(job.settings.mode, job.kind, len(job.rows), job.settings.storage_dtype) - done
    check_free_space(job.out_dir.parent, need, f"extraction of {job.name} (shards in {work_dir_for(job.out_dir)} and the set)")
