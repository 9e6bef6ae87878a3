"""The evaluation stage: sample a feature set with the trained network, score it, log it to MLflow.

MLflow: each evaluation is a run of its own nested under the training run (the id in
``<train.out_dir>/mlflow_run_id.txt``), with the resolved params (so ``evaluate.cfg_strength`` etc. of
this evaluation), the input hashes, the scores and the sample flac files. The training run gets the
scores too (the latest evaluation's) and an ``eval.run_id`` tag naming that child run.

Output folder (``evaluate.out_dir``)::

    samples/{id}.flac           generated audio of the trained network (model rate, mono)
    baseline_samples/{id}.flac  the same with the untrained network (evaluate.baseline)
    shuffled_samples/{id}.flac  the trained network given another clip's video features of the same kind
                                (evaluate.shuffled_control; mmaudio.evaluation.sync)
    spectrograms/{prefix}{id}.png  log-mel of the logged samples, known events (red) and detected onsets (white)
    gt/{id}.flac                the ground truth, cut as extraction cut it (first 8 s, mono, not normalised)
    scores.json                 DVC metrics: the headline scores (test.<key>, baseline.<key>, shuffled.<key>); all in MLflow

Official av-benchmark metrics (fd_panns, fd_passt, fd_vgg, kl_panns, kl_passt, isc_panns = IS,
isc_passt, ib_score, desync; :mod:`mmaudio.evaluation.official`) are computed by the extractors whose
files are found in ``evaluate.extractor_dir`` (``evaluate.extractor_preset`` says which architecture
they hold); each metric whose file is absent is skipped with its reason logged and tagged on the MLflow
run (``eval.skipped.<metric>``). The ``proxy_*`` metrics need no downloads and are always computed.
The baseline is scored by the same metrics (``baseline_<key>``) and cached per configuration
(:mod:`mmaudio.evaluation.baseline_cache`). MLflow names: ``test/<key>`` for the trained network,
``baseline/<key>`` for the untrained one, ``shuffled/<key>`` for the shuffled-video control, in both runs.

:class:`TrainingEvaluation` runs the same scoring on the validation set during training
(``train.eval_interval``), logging ``val/<key>`` metrics at the training step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmaudio.segments import video_rows
from mmaudio.config import Params, find_repo_root
from mmaudio.distributed import DistContext, barrier
from mmaudio.evaluation.proxies import (
    detect_onsets,
    events_in_window,
    proxy_fd_crepe,
    proxy_fd_logmel,
    proxy_onset_sync,
    read_event_times,
)
from mmaudio.evaluation.baseline_cache import BaselineCache, baseline_key
from mmaudio.evaluation.official import OFFICIAL_METRICS, OfficialExtractors, flac_roundtrip, stack_video_features
from mmaudio.evaluation.sampling import (
    sampling_options,
    decode_waveforms,
    load_trained_network,
    sample_feature_set,
    untrained_network,
    write_flac,
)
from mmaudio.evaluation.sync import ShuffledVideo, encode_png, spectrogram_image
from mmaudio.features import FeatureSet
from mmaudio.model.network import MMAudioNetwork
from mmaudio.media import FrameSpec, load_video_clip
from mmaudio.hashing import dvc_hash
from mmaudio.locks import exclusive_folder
from mmaudio.tracking import RUN_ID_FILE, StageRun, relpath, run_id_for_weights, run_in_store, tracking_root

log = logging.getLogger(__name__)

STAGE = "evaluate"
CLIP_SECONDS = 8.0
SCORES_JSON = "scores.json"
CREPE_MODEL = "tiny"
SHUFFLED_PREFIX = "shuffled_"
CONTROL_PREFIXES = ("baseline_", SHUFFLED_PREFIX)  # logged to MLflow as baseline/<key> / shuffled/<key>
_NETWORK_NAMES = {"": "trained network", "baseline_": "untrained network", SHUFFLED_PREFIX: "trained network on shuffled video"}
ONSET_TOLERANCE_SEC = 0.1  # proxy_onset_*: an onset within +-100 ms of a reference counts as matched
CREPE_HOP_SEC = 0.05  # 20 embeddings per second: 160 per 8 s clip, ample for a 32-dim covariance; keeps CPU cost low


def extractor_dir(params: Params, root: Path) -> Path:
    """``evaluate.extractor_dir``, a relative path taken from the repo root."""
    path = Path(params.evaluate.extractor_dir)
    return path if path.is_absolute() else root / path


def _video_paths(params: Params, ids: list[str], dataset: str | None) -> dict[str, str]:
    name = dataset or params.evaluate.dataset
    if name not in params.video_datasets:
        raise KeyError(f"'{name}' is not in video_datasets: evaluation needs a video set (its source clips)")
    ds = params.video_datasets[name]
    paths = {r.id: r.path for r in video_rows(ds).rows}
    missing = [i for i in ids if i not in paths]
    if missing:
        raise KeyError(f"{ds.index_tsv}: no rows for feature ids {missing[:10]}")
    return paths


def ground_truth_audio(
    params: Params, ids: list[str], sample_rate: int, num_samples: int, dataset: str | None = None
) -> dict[str, torch.Tensor]:
    """``{id: (num_samples,)}``: each video's first 8 s of audio, mono, at ``sample_rate``, not
    normalised, exactly as extraction cut it for a val/test set (``dataset``, default evaluate.dataset)."""
    paths = _video_paths(params, ids, dataset)
    out = {}
    for i in ids:
        clip = load_video_clip(paths[i], duration_sec=CLIP_SECONDS, specs=(), audio_rate=sample_rate,
                               audio_samples=num_samples)
        out[i] = clip.audio.float()
    return out


def source_video_features(
    params: Params, ids: list[str], extractors: OfficialExtractors, dataset: str | None = None
) -> dict[str, torch.Tensor]:
    """Video-side features (rows in ``ids`` order) of the source clips, for the present extractors that
    need frames (DeSync: 25 fps 224 crop; IB-score: 0.5 fps native size), decoded one clip at a time so
    that only features stay in memory."""
    specs: tuple[FrameSpec, ...] = extractors.frame_specs
    if not specs:
        return {}
    paths = _video_paths(params, ids, dataset)
    per_clip = []
    for i in ids:
        clip = load_video_clip(paths[i], duration_sec=CLIP_SECONDS, specs=specs)
        per_clip.append(extractors.video_features(clip.frames))
    return stack_video_features(per_clip)


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
    scores |= proxy_onset_sync({i: pred[i] for i in ids}, sample_rate, gt_waves={i: gt[i] for i in ids},
                               tolerance_sec=ONSET_TOLERANCE_SEC)
    skipped: dict[str, str] = {}
    with_events = [i for i in ids if events and i in events]
    if with_events:
        scores |= proxy_onset_sync({i: pred[i] for i in with_events}, sample_rate,
                                   event_times={i: events[i] for i in with_events}, tolerance_sec=ONSET_TOLERANCE_SEC)
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


class SetScorer:
    """Scores generated audio for the rows of one video feature set; everything about the reference
    side is computed once: the ground-truth audio, the known events, the extractors whose files are
    present and their features of the ground truth and of the source videos.

    ``dataset`` names the ``video_datasets`` entry of the rows' media (default ``evaluate.dataset``).
    """

    def __init__(
        self,
        params: Params,
        features: FeatureSet,
        *,
        root: Path,
        batch_size: int,
        device: torch.device | str = "cpu",
        dataset: str | None = None,
    ) -> None:
        from mmaudio.encoders.feature_encoders import FeatureEncoders

        cfg = params.evaluate
        self.crepe = cfg.crepe
        self.batch_size = batch_size  # clips per decoder / extractor call: the sampling settings' batch
        self.encoders = FeatureEncoders(params.profile, features.mode, root=root, device=device,
                                        components=("audio", "vocoder"))
        self.sample_rate = self.encoders.sample_rate
        self.ids = list(features.ids)
        self.gt = ground_truth_audio(params, self.ids, self.sample_rate, self.encoders.clip_samples, dataset)
        self.events = event_references(cfg.events_tsv, self.ids) if cfg.events_tsv else None
        self.extractors = OfficialExtractors(extractor_dir(params, root), cfg.extractor_preset, device)
        self.gt_features: dict[str, torch.Tensor] = {}
        self.video_features: dict[str, torch.Tensor] = {}
        if self.extractors:
            # av-benchmark reads the FLAC files: score what they hold
            self.gt_features = self.extractors.audio_features(
                [flac_roundtrip(self.gt[i]) for i in self.ids], self.sample_rate, self.batch_size)
            self.video_features = source_video_features(params, self.ids, self.extractors, dataset)

    @property
    def skipped_official(self) -> dict[str, str]:
        """Official metrics whose extractor file is absent -> the reason (names the file and its source)."""
        return self.extractors.skipped

    def decode(self, latents: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return decode_waveforms(self.encoders, latents, self.batch_size)

    def score(self, waves: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
        """(scores, skipped proxies -> reason, notes on official metrics) of ``{id: (L,)}`` generated clips."""
        scores, skipped = score_audio(waves, self.gt, self.sample_rate, events=self.events, crepe=self.crepe)
        notes: dict[str, str] = {}
        if self.extractors:
            pred = self.extractors.audio_features([flac_roundtrip(waves[i]) for i in self.ids], self.sample_rate,
                                                  self.batch_size)
            official, notes = self.extractors.scores(pred, self.gt_features, self.video_features)
            scores |= official
        return scores, skipped, notes


def evaluate(
    params: Params,
    ctx: DistContext | None = None,
    *,
    weights: str | os.PathLike | None = None,
    run_id: str | None = None,
) -> dict[str, float]:
    """Sample ``evaluate.dataset`` with the trained (and untrained) network, score, write, log.

    ``weights`` defaults to ``<train.out_dir>/weights.pth`` and ``run_id`` to the id in
    ``<train.out_dir>/mlflow_run_id.txt`` (a new run when that file is absent or empty; an error when it
    records other weights than ``weights``: see :func:`mmaudio.tracking.run_id_for_weights`; a new run,
    with a warning, when the store no longer holds that run: :func:`mmaudio.tracking.run_in_store`). Returns the
    scores on rank 0 (an empty dict elsewhere).
    """
    cfg = params.evaluate
    ctx = ctx or DistContext(0, 1, 0, torch.device("cpu"))
    root = find_repo_root()
    train_dir = Path(params.train.out_dir)
    weights = Path(weights) if weights is not None else train_dir / "weights.pth"
    if run_id is None:
        # only the training run that made these very weights: a stale or copied file is an error
        run_id = run_id_for_weights(train_dir / RUN_ID_FILE, weights)
        if ctx.rank == 0:  # a store that lost the run (a new mlflow.db): a new run now, not an error at the end
            run_id = run_in_store(params, run_id, str(train_dir / RUN_ID_FILE))
    out_dir = Path(cfg.out_dir)
    features = FeatureSet.open(Path(params.extract.out_dir) / cfg.dataset, mode=params.extract.mode)
    options = sampling_options(params.evaluate)
    inputs = [weights, features.path] + ([cfg.events_tsv] if cfg.events_tsv else [])
    # MLflow params are write-once, and the train run already holds its own: a re-evaluation logging
    # data.in/data.out params into it would be refused, so content hashes go to (mutable) tags instead
    # Each evaluation is its own run, nested under the training run and holding this evaluation's
    # params (evaluate.* included), so evaluations of one training with different settings sit side
    # by side in the MLflow UI. The training run also gets the scores, so training runs compare by
    # them; its params (write-once) stay those of training.
    with contextlib.ExitStack() as stack:
        if ctx.rank == 0:  # one evaluation at a time writes evaluate.out_dir
            stack.enter_context(exclusive_folder(out_dir, "evaluation run"))
        train_run = stack.enter_context(StageRun(STAGE, params, rank=ctx.rank, run_id=run_id)) if run_id else None
        run = stack.enter_context(StageRun(STAGE, params, rank=ctx.rank, inputs=inputs, parent_run_id=run_id))
        if train_run is not None:
            train_run.set_tags({f"eval.in.{relpath(p, root)}": dvc_hash(p) for p in inputs})
            if run.run_id is not None:
                train_run.set_tags({"eval.run_id": run.run_id})  # the latest evaluation's own run
        net = load_trained_network(params.train.network, weights, ctx.device)
        runs = {"": (net, features)}
        cache = None
        if cfg.baseline:
            cache = _baseline_cache(params, net, features, root, ctx)
            if cache.hit is None:
                runs["baseline_"] = (untrained_network(params.train.network, params.train.seed, net, ctx.device), features)
        if cfg.shuffled_control:  # the trained network with another clip's video (mmaudio.evaluation.sync)
            runs[SHUFFLED_PREFIX] = (net, ShuffledVideo(features))
        latents = {}
        for prefix, (n, f) in runs.items():
            log.info("sampling %d rows of %s with the %s (%s, %d steps)", len(features), cfg.dataset,
                     _NETWORK_NAMES[prefix], cfg.solver, cfg.num_steps)
            latents[prefix] = sample_feature_set(n, f, options, ctx)
        if not ctx.is_main:
            barrier()
            return {}
        scores = _score_and_write(params, features, latents, out_dir, [r for r in (run, train_run) if r], root,
                                  ctx.device, cache)
        barrier()
    return scores


class _CacheState:
    def __init__(self, cache: BaselineCache | None, hit: dict[str, float] | None):
        self.cache, self.hit = cache, hit


def _baseline_cache(params: Params, net: MMAudioNetwork, features: FeatureSet, root: Path,
                    ctx: DistContext) -> _CacheState:
    """Rank 0 looks the baseline up (mmaudio.evaluation.baseline_cache); every rank learns whether
    it must sample it."""
    from mmaudio.encoders.profiles import get_profile

    state = _CacheState(None, None)
    if ctx.is_main:
        key = baseline_key(params, net, features.path, extractor_dir(params, root),
                           root / get_profile(params.profile).root, ctx.device)
        state = _CacheState(BaselineCache(tracking_root(), key), None)
        state.hit = state.cache.load(list(features.ids))
        if state.hit is not None:
            log.info("baseline: reusing the untrained network's samples and scores from %s", state.cache.dir)
    if ctx.world_size > 1 and torch.distributed.is_initialized():
        box = [state.hit is not None]
        torch.distributed.broadcast_object_list(box, src=0)
        if not ctx.is_main and box[0]:
            state.hit = {}  # rank 0 holds the scores; the others only skip the sampling
    return state


def _score_and_write(
    params: Params,
    features: FeatureSet,
    latents: Mapping[str, Mapping[str, torch.Tensor]],
    out_dir: Path,
    runs: Sequence[StageRun],
    root: Path,
    device: torch.device | str = "cpu",
    cache: _CacheState | None = None,
) -> dict[str, float]:
    """Decode, score, write the flac files and scores.json; ``runs[0]`` (the evaluation's own run) gets
    the sample artifacts, every run the scores and tags. A ``cache`` hit supplies the baseline's samples
    and scores; a miss stores the baseline just scored."""
    cfg = params.evaluate
    run = _Fanout(runs)
    scorer = SetScorer(params, features, root=root, batch_size=cfg.batch_size, device=device)
    rate, ids = scorer.sample_rate, scorer.ids
    for i in ids:
        write_flac(out_dir / "gt" / f"{i}.flac", scorer.gt[i], rate)
    run.set_tags({f"eval.in.{relpath(p, root)}": dvc_hash(p) for p in scorer.extractors.paths.values()})

    scores: dict[str, float] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    for prefix, lat in latents.items():
        log.info("decoding and scoring the %s's %d samples", _NETWORK_NAMES[prefix], len(ids))
        waves = scorer.decode(lat)
        folder = out_dir / f"{prefix}samples"
        for i in ids:
            write_flac(folder / f"{i}.flac", waves[i], rate)
        s, k, n = scorer.score(waves)
        scores |= {f"{prefix}{key}": v for key, v in s.items()}
        if not prefix:
            skipped |= k
        notes |= {f"{prefix}{key}": v for key, v in n.items()}
        logged = _logged_ids(ids, scorer.events, cfg.num_logged_samples)
        storing = prefix == "baseline_" and cache is not None and cache.cache is not None
        # a stored baseline keeps every id's spectrogram, so a later hit writes the very files this
        # run writes, whatever evaluate.num_logged_samples it has
        pngs = {i: _spectrogram_png(waves[i], rate, scorer.events, i) for i in (ids if storing else logged)}
        if storing:
            cache.cache.store(s, folder, ids, pngs)
        for i in logged:
            runs[0].log_artifact(folder / f"{i}.flac", artifact_path=f"evaluate/{prefix}samples")
            png = out_dir / "spectrograms" / f"{prefix}{i}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(pngs[i])
            runs[0].log_artifact(png, artifact_path=f"evaluate/{prefix}spectrograms")

    if cache is not None and cache.hit is not None:
        cache.cache.copy_samples(ids, out_dir / "baseline_samples")
        scores |= {f"baseline_{key}": v for key, v in cache.hit.items()}
        for i in _logged_ids(ids, scorer.events, cfg.num_logged_samples):
            runs[0].log_artifact(out_dir / "baseline_samples" / f"{i}.flac", artifact_path="evaluate/baseline_samples")
            png = cache.cache.copy_spectrogram(i, out_dir / "spectrograms" / f"baseline_{i}.png")
            runs[0].log_artifact(png, artifact_path="evaluate/baseline_spectrograms")
    skipped |= scorer.skipped_official
    for reason, metrics in _by_reason(skipped).items():  # one line per missing file, not per metric
        files = {OFFICIAL_METRICS.get(m) for m in metrics}
        if None in files:
            log.info("skipped %s: %s", ", ".join(metrics), reason.splitlines()[0])
        else:  # the full reason (where it was looked for, where to get it) is the eval.skipped.<metric> tag
            log.info("skipped %s: %s not found in %s (where to get it: README \"Evaluation\", or the run's tag "
                     "eval.skipped.%s)", ", ".join(metrics), ", ".join(sorted(files)), cfg.extractor_dir, metrics[0])
    for metric, note in sorted(notes.items()):
        log.warning("%s: %s", metric, note)

    out_dir.mkdir(parents=True, exist_ok=True)
    doc = headline_scores(scores)
    (out_dir / SCORES_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    # every score goes to MLflow, grouped: test/<key> for the trained network, baseline/<key> for the
    # untrained one, shuffled/<key> for the shuffled-video control
    run.log_metrics({_mlflow_key(k): v for k, v in finite.items()})
    run.set_tags({f"eval.skipped.{m}": r for m, r in skipped.items()})
    run.set_tags({f"eval.note.{m}": r for m, r in notes.items()})
    run.set_tags({"eval.dataset": cfg.dataset, "eval.solver": cfg.solver, "eval.num_steps": cfg.num_steps,
                  "eval.seed": cfg.seed, "eval.rows": len(ids), "eval.extractor_preset": cfg.extractor_preset,
                  "eval.onset_tolerance_sec": ONSET_TOLERANCE_SEC})
    run.set_tags({f"eval.out.{relpath(out_dir / SCORES_JSON, root)}": dvc_hash(out_dir / SCORES_JSON)})
    log.info("evaluate: %d rows of %s; %s (all %d scores in MLflow run %s)", len(ids), cfg.dataset,
             ", ".join(f"{k} {v:.4g}" for k, v in _flat(doc).items() if v is not None), len(finite), runs[0].run_id)
    return scores


# The few scores scores.json keeps, so that `dvc exp show --only-changed` of two experiments fits 200
# columns whichever official files are present (tests/test_exp_show.py moves all three groups, as an
# experiment on train.seed or evaluate.seed does); every score goes to MLflow. One score per
# family, quality (FD) and timing (sync): the official one where its files are present (FD_PaSST,
# DeSync), else the proxy that stands in for it: for sync, onsets against the known event times where
# the set has them (they say when the video says a sound happens), else against the ground-truth
# audio's onsets. The shuffled-video control is there to show that the timing comes from the video,
# so only its sync score is a headline.
SYNC_FAMILY = ("desync", "proxy_onset_event_f1", "proxy_onset_gt_f1")
HEADLINE_FAMILIES = (("fd_passt", "proxy_fd_logmel"), SYNC_FAMILY)
SHUFFLED_HEADLINE_FAMILIES = (SYNC_FAMILY,)


def headline_scores(scores: Mapping[str, float]) -> dict[str, dict[str, float | None]]:
    """``{"test": {...}, "baseline": {...}, "shuffled": {...}}``: per :data:`HEADLINE_FAMILIES` (for the
    shuffled control :data:`SHUFFLED_HEADLINE_FAMILIES`), the first of its scores present in ``scores``."""
    doc: dict[str, dict[str, float | None]] = {}
    for group, prefix in (("test", ""), *((c[:-1], c) for c in CONTROL_PREFIXES)):
        families = SHUFFLED_HEADLINE_FAMILIES if prefix == SHUFFLED_PREFIX else HEADLINE_FAMILIES
        chosen = [next((k for k in family if prefix + k in scores), None) for family in families]
        picked = {k: _json_value(scores[prefix + k]) for k in chosen if k is not None}
        if picked:
            doc[group] = picked
    return doc


def _flat(doc: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    return {f"{group}/{k}": v for group, values in doc.items() for k, v in values.items()}


def _by_reason(skipped: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for metric, reason in sorted(skipped.items()):
        out.setdefault(reason, []).append(metric)
    return out


def _mlflow_key(key: str) -> str:
    for prefix in CONTROL_PREFIXES:
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"test/{key}"


def _spectrogram_png(wave: torch.Tensor, rate: int, events: Mapping[str, np.ndarray] | None, i: str) -> bytes:
    """PNG of a clip's log-mel with its known events (red) and detected onsets (white)."""
    return encode_png(spectrogram_image(wave, rate, events.get(i) if events else None, detect_onsets(wave, rate)))


def _logged_ids(ids: list[str], events: Mapping[str, np.ndarray] | None, n: int) -> list[str]:
    """The first ``n`` clips, those with known events first (their spectrograms show the sync)."""
    with_events = [i for i in ids if events and len(events.get(i, ())) > 0]
    return (with_events + [i for i in ids if i not in with_events])[:n]


class _Fanout:
    """The scores and tags of one evaluation, logged alike into several runs."""

    def __init__(self, runs: Sequence[StageRun]) -> None:
        self.runs = list(runs)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        for r in self.runs:
            r.log_metrics(metrics)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for r in self.runs:
            r.set_tags(tags)


# -- during training ---------------------------------------------------------------------------------


TRAIN_METRIC_PREFIX = "val/"  # the validation set's scores, next to val/loss


class TrainingEvaluation:
    """The evaluate stage's scores of the validation set, for use inside the training loop.

    Samples ``dataset`` (default ``train.val_dataset``, a video feature set) with the network given at
    each call, using the ``train.sampling.*`` settings (solver, steps, CFG, seed, batch size) and the
    evaluate stage's metrics (proxies; official ones whose extractor files are present), and logs every finite
    score as ``val/<key>`` at the training step. The reference side (ground truth, extractors, their
    features) is built at the first call and reused; building it leaves the global RNG states as they
    were, so the training stream does not depend on ``train.eval_interval``.

    With a distributed ``ctx``, every rank must call it (sampling is sharded, rank 0 scores and logs);
    with ``ctx=None`` it runs in the calling process alone (e.g. rank 0 with the EMA network).
    """

    def __init__(
        self,
        params: Params,
        ctx: DistContext | None = None,
        *,
        dataset: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        name = dataset or params.train.val_dataset
        if name is None:
            raise ValueError("train.eval_interval > 0 needs train.val_dataset (a video feature set) to evaluate")
        if name not in params.video_datasets:
            raise ValueError(f"train.val_dataset '{name}' is not in video_datasets: evaluation needs source videos")
        self.params, self.ctx, self.dataset = params, ctx, name
        self.features = FeatureSet.open(Path(params.extract.out_dir) / name, mode=params.extract.mode)
        self.options = sampling_options(params.train.sampling)
        self.device = torch.device(device) if device is not None else (ctx.device if ctx else torch.device("cpu"))
        self.scorer: SetScorer | None = None

    @property
    def is_main(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def _scorer(self, run: StageRun) -> SetScorer:
        if self.scorer is None:
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                self.scorer = SetScorer(self.params, self.features, root=find_repo_root(),
                                        batch_size=self.options.batch_size, device=self.device, dataset=self.dataset)
            skipped = self.scorer.skipped_official
            run.set_tags({f"train.eval.skipped.{m}": r for m, r in skipped.items()}
                              | {"train.eval.dataset": self.dataset, "train.eval.rows": len(self.scorer.ids)})
        return self.scorer

    def __call__(self, net: MMAudioNetwork, step: int, run: StageRun) -> dict[str, float]:
        """Scores of ``net`` (unwrapped: no DDP / compile wrapper) at ``step``, logged to ``run``; {} on
        ranks other than 0."""
        latents = sample_feature_set(net, self.features, self.options, self.ctx)
        if not self.is_main:
            return {}
        scorer = self._scorer(run)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            scores, _, notes = scorer.score(scorer.decode(latents))
        finite = {f"{TRAIN_METRIC_PREFIX}{k}": v for k, v in scores.items() if math.isfinite(v)}
        run.log_metrics(finite, step=step)
        if notes:
            run.set_tags({f"train.eval.note.{k}": v for k, v in notes.items()})
        log.info("step %d eval: %s", step, json.dumps({k: round(v, 6) for k, v in sorted(finite.items())}))
        return scores
