"""The evaluation stage: sample a feature set with the trained network, score it, log into the train run.

Output folder (``evaluate.out_dir``)::

    samples/{id}.flac           generated audio of the trained network (model rate, mono)
    baseline_samples/{id}.flac  the same with the untrained network (evaluate.baseline)
    gt/{id}.flac                the ground truth, cut as extraction cut it (first 8 s, mono, not normalised)
    scores.json                 DVC metrics: every score; the baseline's as baseline_<key>

Official av-benchmark metrics need pretrained extractor files (:mod:`mmaudio.evaluation.resolver`);
each metric whose file is absent is skipped with its reason logged and tagged on the MLflow run
(``eval.skipped.<metric>``). The ``proxy_*`` metrics need no downloads and are always computed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mmaudio.clip_sources import video_rows
from mmaudio.config import Params, find_repo_root
from mmaudio.distributed import DistContext, barrier
from mmaudio.evaluation.proxies import (
    events_in_window,
    proxy_fd_crepe,
    proxy_fd_logmel,
    proxy_onset_sync,
    read_event_times,
)
from mmaudio.evaluation.resolver import MissingWeightError, resolve_weight
from mmaudio.evaluation.sampling import (
    SamplingOptions,
    decode_waveforms,
    load_trained_network,
    sample_feature_set,
    untrained_network,
    write_flac,
)
from mmaudio.features import FeatureSet
from mmaudio.media import load_video_clip
from mmaudio.hashing import dvc_hash
from mmaudio.tracking import StageRun, relpath

log = logging.getLogger(__name__)

STAGE = "evaluate"
CLIP_SECONDS = 8.0
SCORES_JSON = "scores.json"
CREPE_MODEL = "tiny"
CREPE_HOP_SEC = 0.05  # 20 embeddings per second: 160 per 8 s clip, ample for a 32-dim covariance; keeps CPU cost low
# official metric -> the extractor file it needs (av-benchmark's names)
OFFICIAL_METRICS: dict[str, str] = {
    "fd_panns": "Cnn14_16k_mAP=0.438.pth",
    "kl_panns": "Cnn14_16k_mAP=0.438.pth",
    "isc_panns": "Cnn14_16k_mAP=0.438.pth",
    "fd_vgg": "vggish-10086976.pth",
    "fd_passt": "passt-s-f128-p16-s10-ap.476-swa.pt",
    "kl_passt": "passt-s-f128-p16-s10-ap.476-swa.pt",
    "isc_passt": "passt-s-f128-p16-s10-ap.476-swa.pt",
    "desync": "synchformer_state_dict.pth",
    "ib_score": "imagebind_huge.pth",
}


def official_metric_status(ext_dir: str | os.PathLike) -> dict[str, str | None]:
    """``{metric: None if its weights are present, else the reason it is skipped}``."""
    status: dict[str, str | None] = {}
    for metric, filename in OFFICIAL_METRICS.items():
        try:
            resolve_weight(filename, ext_dir=ext_dir)
        except MissingWeightError as e:
            status[metric] = f"weights absent: {str(e).split('. ')[0]}"
            continue
        # The extractor modules exist (mmaudio.evaluation.extractors) but this stage does not run them yet.
        status[metric] = f"weights present ({filename}) but the evaluate stage does not run this extractor yet"
    return status


def ground_truth_audio(params: Params, ids: list[str], sample_rate: int, num_samples: int) -> dict[str, torch.Tensor]:
    """``{id: (num_samples,)}``: each video's first 8 s of audio, mono, at ``sample_rate``, not
    normalised, exactly as extraction cut it for a val/test set."""
    ds = params.video_datasets[params.evaluate.dataset]
    paths = {r.id: r.path for r in video_rows(ds).rows}
    missing = [i for i in ids if i not in paths]
    if missing:
        raise KeyError(f"{ds.index_tsv}: no rows for feature ids {missing[:10]}")
    out = {}
    for i in ids:
        clip = load_video_clip(paths[i], duration_sec=CLIP_SECONDS, specs=(), audio_rate=sample_rate,
                               audio_samples=num_samples)
        out[i] = clip.audio.float()
    return out


def event_references(events_tsv: str | os.PathLike, ids: list[str]) -> dict[str, np.ndarray]:
    """Known onset times inside each clip's window ([0, 8 s) of the file) for the ids that have events."""
    times = read_event_times(events_tsv)
    return {i: events_in_window(times[i], 0.0, CLIP_SECONDS) for i in ids if i in times}


def score_audio(
    pred: Mapping[str, torch.Tensor],
    gt: Mapping[str, torch.Tensor],
    sample_rate: int,
    *,
    events: Mapping[str, np.ndarray] | None = None,
    crepe: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """(proxy scores, skipped proxies with reasons) of generated clips against the ground truth."""
    ids = list(pred)
    scores = proxy_fd_logmel([pred[i] for i in ids], [gt[i] for i in ids], sample_rate)
    scores |= proxy_onset_sync({i: pred[i] for i in ids}, sample_rate, gt_waves={i: gt[i] for i in ids})
    skipped: dict[str, str] = {}
    with_events = [i for i in ids if events and i in events]
    if with_events:
        scores |= proxy_onset_sync({i: pred[i] for i in with_events}, sample_rate,
                                   event_times={i: events[i] for i in with_events})
    else:
        skipped["proxy_onset_event"] = "no clip of this set has known event times"
    if crepe:
        scores |= proxy_fd_crepe([pred[i] for i in ids], [gt[i] for i in ids], sample_rate,
                                 model=CREPE_MODEL, hop_sec=CREPE_HOP_SEC)
    else:
        skipped["proxy_fd_crepe"] = "evaluate.crepe is false"
    return scores, skipped


def _json_value(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN; DVC shows null as missing


def evaluate(
    params: Params,
    ctx: DistContext | None = None,
    *,
    weights: str | os.PathLike | None = None,
    run_id: str | None = None,
) -> dict[str, float]:
    """Sample ``evaluate.dataset`` with the trained (and untrained) network, score, write, log.

    ``weights`` defaults to ``<train.out_dir>/weights.pth`` and ``run_id`` to the id in
    ``<train.out_dir>/mlflow_run_id.txt`` (a new run when that file is absent or empty). Returns the
    scores on rank 0 (an empty dict elsewhere).
    """
    cfg = params.evaluate
    ctx = ctx or DistContext(0, 1, 0, torch.device("cpu"))
    root = find_repo_root()
    train_dir = Path(params.train.out_dir)
    weights = Path(weights) if weights is not None else train_dir / "weights.pth"
    if run_id is None:
        id_file = train_dir / "mlflow_run_id.txt"
        run_id = (id_file.read_text().strip() or None) if id_file.is_file() else None
    out_dir = Path(cfg.out_dir)
    features = FeatureSet.open(Path(params.extract.out_dir) / cfg.dataset, mode=params.extract.mode)
    options = SamplingOptions(solver=cfg.solver, num_steps=cfg.num_steps, cfg_strength=cfg.cfg_strength,
                              seed=cfg.seed, batch_size=cfg.batch_size)
    inputs = [weights, features.path] + ([cfg.events_tsv] if cfg.events_tsv else [])
    # MLflow params are write-once, and the train run already holds its own: a re-evaluation logging
    # data.in/data.out params into it would be refused, so content hashes go to (mutable) tags instead
    with StageRun(STAGE, params, rank=ctx.rank, run_id=run_id) as run:
        run.set_tags({f"eval.in.{relpath(p, root)}": dvc_hash(p) for p in inputs})
        net = load_trained_network(params.train.network, weights, ctx.device)
        nets = {"": net}
        if cfg.baseline:
            nets["baseline_"] = untrained_network(params.train.network, params.train.seed, net, ctx.device)
        latents = {prefix: sample_feature_set(n, features, options, ctx) for prefix, n in nets.items()}
        if not ctx.is_main:
            barrier()
            return {}
        scores = _score_and_write(params, features, latents, out_dir, run, root)
        barrier()
    return scores


def _score_and_write(
    params: Params,
    features: FeatureSet,
    latents: Mapping[str, Mapping[str, torch.Tensor]],
    out_dir: Path,
    run: StageRun,
    root: Path,
) -> dict[str, float]:
    from mmaudio.encoders.facade import FeatureEncoders

    cfg = params.evaluate
    encoders = FeatureEncoders(params.profile, features.mode, root=root, components=("audio", "vocoder"))
    rate = encoders.sample_rate
    ids = list(features.ids)
    gt = ground_truth_audio(params, ids, rate, encoders.clip_samples)
    events = event_references(cfg.events_tsv, ids) if cfg.events_tsv else None
    for i in ids:
        write_flac(out_dir / "gt" / f"{i}.flac", gt[i], rate)

    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for prefix, lat in latents.items():
        waves = decode_waveforms(encoders, lat, cfg.batch_size)
        folder = out_dir / f"{prefix}samples"
        for i in ids:
            write_flac(folder / f"{i}.flac", waves[i], rate)
        s, k = score_audio(waves, gt, rate, events=events, crepe=cfg.crepe)
        scores |= {f"{prefix}{key}": v for key, v in s.items()}
        if not prefix:
            skipped |= k
        for i in ids[: cfg.num_logged_samples]:
            run.log_artifact(folder / f"{i}.flac", artifact_path=f"evaluate/{prefix}samples")

    for metric, reason in official_metric_status(root / "ext_weights").items():
        if reason is not None:
            skipped[metric] = reason
    for metric, reason in sorted(skipped.items()):
        log.info("skipped %s: %s", metric, reason)

    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {k: _json_value(v) for k, v in sorted(scores.items())}
    (out_dir / SCORES_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    # baseline keys go to MLflow as baseline.<key>, the trained ones under their own names
    run.log_metrics({(f"baseline.{k[len('baseline_'):]}" if k.startswith("baseline_") else k): v
                     for k, v in finite.items()})
    run.set_tags({f"eval.skipped.{m}": r for m, r in skipped.items()})
    run.set_tags({"eval.dataset": cfg.dataset, "eval.solver": cfg.solver, "eval.num_steps": cfg.num_steps,
                  "eval.seed": cfg.seed, "eval.rows": len(ids)})
    run.set_tags({f"eval.out.{relpath(out_dir / SCORES_JSON, root)}": dvc_hash(out_dir / SCORES_JSON)})
    log.info("scores: %s", json.dumps(doc))
    return scores
