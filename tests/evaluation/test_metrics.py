"""av-benchmark's metric definitions against closed forms and hand-computed values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from mmaudio.evaluation.metrics import (
    FrechetDistanceError,
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
    pair_by_id,
    sync_offset_grid,
)

# ----------------------------------------------------------------------------------------------
# Frechet distance


def test_statistics_use_unbiased_covariance_and_keep_the_mean_dtype():
    x = np.array([[0.0, 1.0], [2.0, 5.0]], dtype=np.float32)
    mu, sigma = embedding_statistics(x)
    assert mu.dtype == np.float32 and sigma.dtype == np.float64
    np.testing.assert_array_equal(mu, [1.0, 3.0])
    # ddof=1: var([0, 2]) = 2, var([1, 5]) = 8, cov = (-1 * -2 + 1 * 2) / 1 = 4
    np.testing.assert_array_equal(sigma, [[2.0, 4.0], [4.0, 8.0]])


def test_fd_of_identical_sets_is_zero():
    x = np.random.default_rng(0).standard_normal((300, 6))
    assert abs(frechet_distance(x, x)) < 1e-9
    assert abs(frechet_distance(torch.from_numpy(x), torch.from_numpy(x))) < 1e-9


def test_fd_one_dimensional_closed_form():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    fd = frechet_distance_from_statistics(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert fd == pytest.approx(4.0 + 1.0, abs=1e-12)


def test_fd_diagonal_covariances_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    fd = frechet_distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b))
    expected = 1.0 + 0.0 + 4.0 + sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a, b))  # 5 + 4 + 1 + 0
    assert fd == pytest.approx(expected, abs=1e-10)
    assert expected == 10.0


def test_fd_full_covariances_closed_form():
    rng = np.random.default_rng(1)
    # Commuting covariances (shared eigenvectors): the FD is sum (sqrt a_i - sqrt b_i)^2 in that basis.
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 2.0, 0.5, 1.0])
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.zeros(4), np.array([0.0, 0.0, 3.0, 4.0])
    fd = frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)
    assert fd == pytest.approx(25.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-10)

    # General full covariances: Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) through symmetric eigensolves.
    m1, m2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(4), m2 @ m2.T + 0.1 * np.eye(4)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert frechet_distance_from_statistics(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, rel=1e-9)


def test_fd_of_sampled_gaussians_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(20000, 2))
    y = rng.normal(2.0, 3.0, size=(20000, 2))
    # 2 * (2^2) + 2 * (3 - 1)^2 = 16
    assert frechet_distance(y, x) == pytest.approx(16.0, rel=0.03)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # scipy's own note on the singular product
def test_fd_retries_with_a_ridge_when_the_root_is_not_finite(caplog):
    # [[0, 1], [0, 0]] @ I has no square root (sqrtm returns inf); with 1e-6 on both diagonals the
    # product is [[a, 1 + eps], [0, a]], a = eps (1 + eps), whose root has trace 2 sqrt(a).
    eps = 1e-6
    sigma1, sigma2 = np.array([[0.0, 1.0], [0.0, 0.0]]), np.eye(2)
    with caplog.at_level(logging.WARNING, logger="mmaudio.evaluation.metrics"):
        fd = frechet_distance_from_statistics(np.zeros(2), sigma1, np.zeros(2), sigma2, eps=eps)
    assert fd == pytest.approx(0.0 + 2.0 - 4.0 * math.sqrt(eps * (1 + eps)), abs=1e-9)
    assert "not finite" in caplog.text


def test_fd_refuses_a_root_with_an_imaginary_diagonal():
    with pytest.raises(FrechetDistanceError, match="imaginary component"):
        frechet_distance_from_statistics(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))


def test_fd_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="mean vectors"):
        frechet_distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------------------------
# KL


def _logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def test_kl_is_gt_to_pred_and_averaged_over_pairs():
    gt = _logits([0.9, 0.1], [0.3, 0.7])
    pred = _logits([0.5, 0.5], [0.3, 0.7])
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(gt || pred) of pair 0 = 0.36806
    backward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL(pred || gt) = 0.51083
    assert kl_divergence(pred, gt) == pytest.approx(forward / 2, abs=1e-12)  # pair 1 is identical: 0
    assert kl_divergence(gt, pred) == pytest.approx(backward / 2, abs=1e-12)
    assert abs(forward - backward) > 0.1


def test_kl_sigmoid_keeps_only_positive_class_terms():
    gt = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    pred = torch.tensor([[1.0, -1.0]], dtype=torch.float64)

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = sum(sig(g) * (math.log(sig(g)) - math.log(sig(p))) for g, p in [(0.0, 1.0), (2.0, -1.0)])
    assert kl_divergence(pred, gt, activation="sigmoid") == pytest.approx(expected, abs=1e-12)


def test_kl_is_invariant_to_a_logit_shift_and_zero_for_identical_rows():
    gt = torch.randn(5, 527, generator=torch.Generator().manual_seed(0))
    assert kl_divergence(gt + 3.0, gt) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="paired"):
        kl_divergence(gt[:4], gt)


# ----------------------------------------------------------------------------------------------
# Inception score


def test_is_of_identical_predictions_is_one():
    logits = torch.tensor([[2.0, -1.0, 0.5]]).repeat(40, 1)
    mean, std = inception_score(logits)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_of_n_distinct_one_hots_is_n():
    n = 7
    logits = 1000.0 * torch.eye(n)  # softmax is exactly one-hot in float64
    assert inception_score(logits, splits=1).mean == pytest.approx(n, abs=1e-12)


def test_is_splits_follow_the_seeded_shuffle():
    # 20 one-hot rows alternating between 2 classes, 10 splits of 2 rows: a split scores 2 when its
    # rows differ in class and 1 when they agree; which rows share a split is set by seed 2020.
    # (Logit 30, not 1000: an exactly zero marginal makes 0 * log 0 = NaN, in av-benchmark too.)
    logits = 30.0 * torch.eye(2)[torch.arange(20) % 2]
    perm = np.random.RandomState(2020).permutation(20)
    per_split = [2.0 if perm[2 * k] % 2 != perm[2 * k + 1] % 2 else 1.0 for k in range(10)]
    mean, std = inception_score(logits)
    assert mean == pytest.approx(np.mean(per_split), abs=1e-10)
    assert std == pytest.approx(np.std(per_split), abs=1e-10)
    assert len(set(per_split)) == 2  # both kinds of split occur, so the test sees the shuffle
    unshuffled = inception_score(logits, shuffle=False)
    assert unshuffled.mean == pytest.approx(2.0, abs=1e-10) and unshuffled.std == pytest.approx(0.0, abs=1e-10)


def test_is_needs_enough_samples_for_its_splits():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(5, 3))


# ----------------------------------------------------------------------------------------------
# Cosine scores and pairing


def test_ib_and_clap_scores_are_mean_cosines():
    video = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    audio = torch.tensor([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0]])
    expected = (0.0 + 1.0 + 24.0 / 25.0) / 3
    assert imagebind_score(video, audio) == pytest.approx(expected, abs=1e-7)
    assert clap_score(video, audio) == pytest.approx(expected, abs=1e-7)
    assert imagebind_score(video, -video) == pytest.approx(-1.0, abs=1e-7)


def test_pair_by_id_follows_prediction_order_and_reports_unpaired():
    gt = {"a": torch.tensor([1.0]), "b": torch.tensor([2.0]), "c": torch.tensor([3.0])}
    pred = {"c": torch.tensor([30.0]), "a": torch.tensor([10.0]), "d": torch.tensor([40.0])}
    g, p, unpaired = pair_by_id(gt, pred)
    assert g.flatten().tolist() == [3.0, 1.0] and p.flatten().tolist() == [30.0, 10.0]
    assert unpaired == ["b", "d"]

    renamed = {"a-0": torch.tensor([10.0])}
    g, p, unpaired = pair_by_id(gt, renamed, pred_to_gt_id=lambda k: k.split("-")[0])
    assert g.flatten().tolist() == [1.0] and unpaired == ["b", "c"]
    with pytest.raises(ValueError, match="no id"):
        pair_by_id(gt, {"z": torch.tensor([0.0])})


# ----------------------------------------------------------------------------------------------
# DeSync


def test_sync_grid_is_21_offsets_from_minus_2_to_2_seconds():
    grid = sync_offset_grid()
    assert grid.dtype == torch.float32 and grid.shape == (21,)
    assert grid[0].item() == -2.0 and grid[10].item() == 0.0 and grid[20].item() == 2.0
    assert grid[1].item() == pytest.approx(-1.8, abs=1e-6) and grid[13].item() == pytest.approx(0.6, abs=1e-6)


def _one_hot_logits(classes: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), 21).float()


def test_offsets_are_absolute_values_of_the_argmax_class():
    offsets = abs_offsets_from_logits(_one_hot_logits([0, 10, 13, 20]))
    np.testing.assert_allclose(offsets.numpy(), [2.0, 0.0, 0.6, 2.0], atol=1e-6)


def test_desync_averages_both_windows_of_every_clip():
    first = _one_hot_logits([10, 12])  # 0.0, 0.4 s
    last = _one_hot_logits([10, 5])  # 0.0, 1.0 s
    assert desync_from_window_logits(first, last) == pytest.approx((0.0 + 0.4 + 0.0 + 1.0) / 4, abs=1e-7)


def test_desync_score_takes_the_first_and_last_14_segments_in_batches():
    n_clips, n_segments = 3, 24
    # video feature = segment index, audio feature = clip index; (N, S, t=1, D=1)
    video = torch.arange(n_segments, dtype=torch.float32).view(1, n_segments, 1, 1).repeat(n_clips, 1, 1, 1)
    audio = torch.arange(n_clips, dtype=torch.float32).view(n_clips, 1, 1, 1).repeat(1, n_segments, 1, 1)
    seen = []

    def fake_sync_logits(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        seen.append((v[0, :, 0, 0].tolist(), v.shape[0]))
        classes = (v[:, 0, 0, 0] + a[:, 0, 0, 0]).long()  # first segment index + clip index
        return _one_hot_logits(classes.tolist())

    score = desync_score(fake_sync_logits, video, audio, batch_size=2)
    assert seen[0] == (list(range(14)), 2) and seen[1] == (list(range(10, 24)), 2)
    assert seen[2][1] == 1 and len(seen) == 4  # the last batch holds the third clip
    # first windows: classes 0, 1, 2 -> 2.0, 1.8, 1.6 s; last windows: 10, 11, 12 -> 0, 0.2, 0.4 s
    assert score == pytest.approx((2.0 + 1.8 + 1.6 + 0.0 + 0.2 + 0.4) / 6, abs=1e-7)
