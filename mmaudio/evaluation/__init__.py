"""Evaluation: av-benchmark's metric math (:mod:`.metrics`), weight-free proxy metrics
(:mod:`.proxies`) and the resolver for the extractors' pretrained files (:mod:`.resolver`)."""

from mmaudio.evaluation.metrics import (
    FrechetDistanceError,
    InceptionScore,
    abs_offsets_from_logits,
    clap_score,
    desync_from_window_logits,
    desync_score,
    embedding_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    imagebind_score,
    inception_score,
    kl_divergence,
    mean_cosine_similarity,
    pair_by_id,
    sync_offset_grid,
)
from mmaudio.evaluation.resolver import EVALUATION_WEIGHTS, MissingWeightsError, WeightSource, resolve_weight

__all__ = [
    "EVALUATION_WEIGHTS",
    "FrechetDistanceError",
    "InceptionScore",
    "MissingWeightsError",
    "WeightSource",
    "abs_offsets_from_logits",
    "clap_score",
    "desync_from_window_logits",
    "desync_score",
    "embedding_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "imagebind_score",
    "inception_score",
    "kl_divergence",
    "mean_cosine_similarity",
    "pair_by_id",
    "resolve_weight",
    "sync_offset_grid",
]
