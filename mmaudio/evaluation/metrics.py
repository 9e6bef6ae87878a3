"""The metric math of av-benchmark (hkchengrex/av-benchmark), as plain functions of features.

Each function reproduces the definition av-benchmark's ``evaluate.py`` reports, from features that
an extractor (PANNs, VGGish, PaSST, ImageBind, Synchformer, CLAP) has already produced; running the
extractors is not this module's business. Where av-benchmark has a quirk it is kept and said so,
because scores are only comparable with published ones if they are computed the same way:

- FD (FD-VGG, FD-PANN, FD-PaSST): ``mu`` is the mean in the features' own dtype (float32 from the
  extractors), ``sigma = np.cov(x, rowvar=False)`` (unbiased, ddof=1, float64), the product's square
  root by ``scipy.linalg.sqrtm``, retried with ``1e-6 * I`` added to both covariances when the root
  is not finite, and the real part taken once the imaginary part of its diagonal is within 1e-3.
- KL (KL-PANNS-softmax, KL-PASST-softmax): KL(gt || pred) per pair over a softmax of the 527
  AudioSet logits, summed over classes, averaged over pairs. The sigmoid variant keeps only the
  positive-class terms (no ``1 - p`` complement), as av-benchmark does.
- IS (ISC-PANNS, ISC-PASST): float64 softmax of the logits, rows shuffled by
  ``np.random.RandomState(2020).permutation``, 10 splits, ``exp(mean KL(p || mean p))`` per split,
  then the mean and the population std (ddof=0) of the splits.
- IB-score and CLAP score: mean cosine similarity of paired embeddings (raw, not scaled by 100).
- DeSync: the Synchformer head's 21 classes are offsets ``linspace(-2, 2, 21)`` s (float32); the
  absolute offset of the argmax class is taken for the first and the last 14 segments (4.8 s) of
  each clip, and all 2N values are averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

FD_EPS = 1e-6  # added to both covariance diagonals when sqrtm of their product is not finite
FD_IMAG_ATOL = 1e-3  # largest |imag| allowed on the diagonal of sqrtm before the result is refused
IS_SPLITS = 10
IS_SEED = 2020
SYNC_OFFSET_MIN_SEC = -2.0
SYNC_OFFSET_MAX_SEC = 2.0
SYNC_NUM_CLASSES = 21  # offsets -2.0, -1.8, ..., 2.0 s
# 14 Synchformer segments of 16 frames every 8 frames at 25 fps: (14 - 1) * 8 + 16 = 120 frames = 4.8 s
SYNC_WINDOW_SEGMENTS = 14
SYNC_BATCH_SIZE = 16


class FrechetDistanceError(ValueError):
    """sqrtm of the covariance product has a significant imaginary part (inputs are not PSD)."""


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# Pairing predictions with ground truth by id


def pair_by_id(
    gt: Mapping[str, torch.Tensor],
    pred: Mapping[str, torch.Tensor],
    *,
    pred_to_gt_id: Callable[[str], str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the ground truth and prediction of every id present in both.

    Rows follow ``pred``'s order. ``pred_to_gt_id`` maps a prediction's id to its ground-truth id
    (av-benchmark hard-codes a VGGSound file-name rule there; the identity here, as our ids are file
    stems). Returns ``(gt, pred, unpaired)`` where ``unpaired`` are the ids present on one side only
    (symmetric difference, sorted), which the caller must report.
    """
    to_gt = pred_to_gt_id or (lambda name: name)
    mapped = {key: to_gt(key) for key in pred}
    unpaired = set(gt) ^ set(mapped.values())
    gt_rows, pred_rows = [], []
    for key, gt_id in mapped.items():
        if gt_id in unpaired:
            continue
        gt_rows.append(gt[gt_id])
        pred_rows.append(pred[key])
    if not pred_rows:
        raise ValueError(f"no id is present in both ground truth ({len(gt)} ids) and predictions ({len(pred)} ids)")
    return torch.stack(gt_rows), torch.stack(pred_rows), sorted(unpaired)


# ----------------------------------------------------------------------------------------------
# Frechet distance


def embedding_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a feature set (N, D): the mean keeps the input dtype, the covariance is
    ``np.cov(rowvar=False)`` (ddof=1, float64), as av-benchmark's ``calculate_embd_statistics``."""
    x = _as_numpy(features)
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


def frechet_distance_from_statistics(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, *, eps: float = FD_EPS
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)).

    Raises :class:`FrechetDistanceError` when sqrt(sigma1 sigma2) has a diagonal imaginary part
    above 1e-3 (av-benchmark's ``compute_fd`` turns that error into a score of -1).
    """
    mu1, mu2 = np.atleast_1d(_as_numpy(mu1)), np.atleast_1d(_as_numpy(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_numpy(sigma1)), np.atleast_2d(_as_numpy(sigma2))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2

    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # A (nearly) singular product can have no finite root; a small ridge makes it regular.
        log.warning("FD: sqrtm of the covariance product is not finite; adding %g to both diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))

    # Round-off gives a PSD product's root a small imaginary part; a large one means bad inputs.
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=FD_IMAG_ATOL):
            largest = float(np.max(np.abs(covmean.imag)))
            raise FrechetDistanceError(f"FD: sqrt(sigma1 sigma2) has an imaginary component of {largest:g}")
        covmean = covmean.real

    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance(pred_features: ArrayLike, gt_features: ArrayLike, *, eps: float = FD_EPS) -> float:
    """FD between two feature sets (N1, D) and (N2, D), statistics of ``pred`` first as upstream."""
    mu_pred, sigma_pred = embedding_statistics(pred_features)
    mu_gt, sigma_gt = embedding_statistics(gt_features)
    return frechet_distance_from_statistics(mu_pred, sigma_pred, mu_gt, sigma_gt, eps=eps)


# ----------------------------------------------------------------------------------------------
# KL divergence between paired class predictions


def kl_divergence(
    pred_logits: torch.Tensor,
    gt_logits: torch.Tensor,
    *,
    activation: Literal["softmax", "sigmoid"] = "softmax",
) -> float:
    """Mean over pairs of KL(gt || pred), from logits (N, C) whose rows are paired.

    softmax: sum_c p_gt,c (log p_gt,c - log p_pred,c) with p = softmax(logits), summed over all
    rows and divided by N. sigmoid: the same sum with p = sigmoid(logits) per class (positive-class
    terms only, as av-benchmark's ``kl_sigmoid``). Computed in the logits' dtype.
    """
    if pred_logits.shape != gt_logits.shape or pred_logits.dim() != 2:
        raise ValueError(
            f"KL needs paired (N, C) logits; got pred {tuple(pred_logits.shape)}, gt {tuple(gt_logits.shape)}"
        )
    if activation == "softmax":
        log_pred, log_gt = F.log_softmax(pred_logits, dim=1), F.log_softmax(gt_logits, dim=1)
    elif activation == "sigmoid":
        log_pred, log_gt = F.logsigmoid(pred_logits), F.logsigmoid(gt_logits)
    else:
        raise ValueError(f"unknown KL activation {activation!r} (softmax or sigmoid)")
    # kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q): KL(p || q), p = gt.
    total = F.kl_div(log_pred, log_gt, reduction="sum", log_target=True)
    return float(total / len(pred_logits))


# ----------------------------------------------------------------------------------------------
# Inception score


class InceptionScore(NamedTuple):
    mean: float
    std: float


def inception_score(
    logits: torch.Tensor, *, splits: int = IS_SPLITS, shuffle: bool = True, seed: int = IS_SEED
) -> InceptionScore:
    """IS of class logits (N, C): mean and population std over ``splits`` contiguous chunks."""
    if logits.dim() != 2:
        raise ValueError(f"inception_score needs (N, C) logits, got {tuple(logits.shape)}")
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"inception_score: {n} samples cannot fill {splits} splits")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n), :]
    logits = logits.double()
    p = logits.softmax(dim=1)
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_p_chunk = p[lo:hi], log_p[lo:hi]
        marginal = p_chunk.mean(dim=0, keepdim=True)  # (1, C)
        kl = (p_chunk * (log_p_chunk - marginal.log())).sum(dim=1)  # (n_chunk,)
        scores.append(kl.mean().exp().item())
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)))


# ----------------------------------------------------------------------------------------------
# Cosine scores of paired embeddings


def mean_cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over pairs of cos(a_i, b_i) along the last dim (torch's eps=1e-8)."""
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(torch.cosine_similarity(a, b, dim=-1).mean())


def imagebind_score(video_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> float:
    """IB-score: mean cosine of paired ImageBind video (ground truth) and audio (generated) embeddings."""
    return mean_cosine_similarity(video_embeddings, audio_embeddings)


def clap_score(text_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> float:
    """CLAP score (LAION or MS): mean cosine of paired text and generated-audio embeddings."""
    return mean_cosine_similarity(text_embeddings, audio_embeddings)


# ----------------------------------------------------------------------------------------------
# DeSync


def sync_offset_grid(
    min_sec: float = SYNC_OFFSET_MIN_SEC, max_sec: float = SYNC_OFFSET_MAX_SEC, num_classes: int = SYNC_NUM_CLASSES
) -> torch.Tensor:
    """Offset (s) of each Synchformer class: float64 linspace cast to float32, as upstream."""
    return torch.from_numpy(np.linspace(min_sec, max_sec, num_classes)).float()


def abs_offsets_from_logits(logits: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
    """|offset| (s) of the argmax class of each row of (B, num_classes) logits."""
    grid = sync_offset_grid() if grid is None else grid
    if logits.shape[-1] != grid.shape[0]:
        raise ValueError(f"sync logits have {logits.shape[-1]} classes, the offset grid {grid.shape[0]}")
    return grid[logits.argmax(dim=-1).cpu()].abs()


def desync_from_window_logits(
    first_logits: torch.Tensor, last_logits: torch.Tensor, grid: torch.Tensor | None = None
) -> float:
    """DeSync from the logits of the first and the last window of every clip, (N, 21) each: the mean
    of the 2N absolute offsets (= mean over clips of the two windows' average)."""
    offsets = torch.cat([abs_offsets_from_logits(first_logits, grid), abs_offsets_from_logits(last_logits, grid)])
    # Upstream averages the float32 grid values as Python floats, i.e. in float64.
    return float(np.mean(offsets.double().numpy()))


def desync_score(
    sync_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    video_features: torch.Tensor,
    audio_features: torch.Tensor,
    *,
    window_segments: int = SYNC_WINDOW_SEGMENTS,
    batch_size: int = SYNC_BATCH_SIZE,
    grid: torch.Tensor | None = None,
) -> float:
    """DeSync of paired Synchformer segment features (N, S, t, D), S = 24 for 8 s.

    ``sync_logits(video, audio) -> (B, 21)`` is Synchformer's ``compare_v_a``; it is called on the
    first and the last ``window_segments`` segments of each clip.
    """
    if video_features.shape[:2] != audio_features.shape[:2]:
        raise ValueError(
            f"video and audio sync features disagree on (N, S): {tuple(video_features.shape[:2])} vs "
            f"{tuple(audio_features.shape[:2])}"
        )
    first, last = [], []
    for i in range(0, video_features.shape[0], batch_size):
        video, audio = video_features[i : i + batch_size], audio_features[i : i + batch_size]
        first.append(sync_logits(video[:, :window_segments], audio[:, :window_segments]).cpu())
        last.append(sync_logits(video[:, -window_segments:], audio[:, -window_segments:]).cpu())
    return desync_from_window_logits(torch.cat(first), torch.cat(last), grid)
