"""Weight-free proxy metrics on synthetic signals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmaudio.evaluation.proxies import (
    OnsetConfig,
    detect_onsets,
    events_in_window,
    match_onsets,
    proxy_fd_crepe,
    proxy_fd_logmel,
    proxy_logmel_frames,
    proxy_onset_scores,
    proxy_onset_sync,
    read_event_times,
)

CLICK_TIMES = [0.3, 0.9, 1.55, 2.2, 2.35]


def click_train(times: list[float], sample_rate: int, duration_sec: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Decaying noise bursts (12 ms, like the example set's clicks) over a faint noise floor."""
    rng = np.random.default_rng(seed)
    wave = 0.003 * rng.standard_normal(int(duration_sec * sample_rate))
    n = int(0.012 * sample_rate)
    for t in times:
        start = int(round(t * sample_rate))
        wave[start : start + n] += 0.8 * np.exp(-np.arange(n) / (0.002 * sample_rate)) * rng.uniform(-1, 1, n)
    return torch.from_numpy(wave).float()


def tone(freq: float, sample_rate: int, duration_sec: float = 1.0, seed: int = 0) -> torch.Tensor:
    t = torch.arange(int(duration_sec * sample_rate), dtype=torch.float64) / sample_rate
    noise = 0.003 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (0.5 * torch.sin(2 * math.pi * freq * t) + noise).float()


# ----------------------------------------------------------------------------------------------
# Onset detection and matching


def test_onsets_of_a_click_train_are_found_at_the_click_times():
    onsets = detect_onsets(click_train(CLICK_TIMES, 16000), 16000)
    assert len(onsets) == len(CLICK_TIMES)
    np.testing.assert_allclose(onsets, CLICK_TIMES, atol=0.015)


def test_onsets_survive_resampling_and_stereo():
    stereo = click_train(CLICK_TIMES, 44100, seed=1).repeat(2, 1) * torch.tensor([[1.0], [0.5]])
    onsets = detect_onsets(stereo, 44100)
    assert len(onsets) == len(CLICK_TIMES)
    np.testing.assert_allclose(onsets, CLICK_TIMES, atol=0.015)


def test_silence_a_steady_tone_and_a_short_clip_have_no_onsets():
    assert len(detect_onsets(torch.zeros(16000), 16000)) == 0
    assert len(detect_onsets(tone(440.0, 16000, duration_sec=2.0), 16000)) == 0  # nor at its cut ends
    assert len(detect_onsets(torch.ones(100), 16000)) == 0  # shorter than one window


def test_closer_clicks_than_the_wait_merge():
    onsets = detect_onsets(click_train([0.5, 0.53], 16000), 16000, OnsetConfig(wait_sec=0.05))
    assert len(onsets) == 1 and abs(onsets[0] - 0.5) < 0.015


def test_matching_is_one_to_one_within_tolerance():
    m = match_onsets(np.array([0.1, 0.5, 0.52, 2.0]), np.array([0.12, 0.5, 1.0]), tolerance_sec=0.1)
    assert m.num_matched == 2
    assert m.precision == pytest.approx(2 / 4) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    np.testing.assert_allclose(m.offsets_sec, [0.02, 0.0], atol=1e-12)
    # Earliest-free assignment keeps both pairs; pairing the nearest first (0.08 with 0.1) would leave
    # 0.0 and 0.19 unmatched.
    assert match_onsets(np.array([0.08, 0.19]), np.array([0.0, 0.1]), tolerance_sec=0.1).num_matched == 2


def test_empty_sides_of_a_match():
    nothing = match_onsets(np.array([]), np.array([]))
    assert (nothing.precision, nothing.recall, nothing.f1) == (1.0, 1.0, 1.0)
    missed = match_onsets(np.array([]), np.array([1.0]))
    assert (missed.precision, missed.recall, missed.f1) == (1.0, 0.0, 0.0)


def test_onset_scores_average_clips_and_pool_offsets():
    est = {"a": np.array([0.1, 0.5]), "b": np.array([1.0])}
    ref = {"a": np.array([0.12, 0.5]), "b": np.array([2.0]), "unused": np.array([0.0])}
    scores = proxy_onset_scores(est, ref, tolerance_sec=0.1)
    assert scores["proxy_onset_precision"] == pytest.approx((1.0 + 0.0) / 2)
    assert scores["proxy_onset_recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert scores["proxy_onset_f1"] == pytest.approx(0.5)
    assert scores["proxy_onset_mean_abs_offset_sec"] == pytest.approx(0.01, abs=1e-12)
    assert scores["proxy_onset_num_clips"] == 2.0
    with pytest.raises(KeyError, match="no reference onsets"):
        proxy_onset_scores({"c": np.array([1.0])}, ref)
    with pytest.raises(ValueError, match="proxy_"):
        proxy_onset_scores(est, ref, prefix="onset")
    unmatched = proxy_onset_scores({"b": np.array([1.0])}, ref)
    assert math.isnan(unmatched["proxy_onset_mean_abs_offset_sec"])


def test_onset_sync_against_ground_truth_audio_and_events():
    sr = 16000
    gt = {"x": click_train(CLICK_TIMES, sr, seed=3)}
    same = {"x": click_train(CLICK_TIMES, sr, seed=4)}
    late = {"x": click_train([t + 0.3 for t in CLICK_TIMES[:-1]], sr, seed=5)}
    events = {"x": np.array(CLICK_TIMES)}

    good = proxy_onset_sync(same, sr, gt_waves=gt, event_times=events)
    assert good["proxy_onset_gt_f1"] == 1.0 and good["proxy_onset_event_f1"] == 1.0
    assert good["proxy_onset_event_mean_abs_offset_sec"] < 0.015
    assert all(k.startswith("proxy_") for k in good)

    bad = proxy_onset_sync(late, sr, event_times=events)
    # clicks at 0.6, 1.2, 1.85, 2.5 s: the nearest events are 0.3, 0.3, 0.3 and 0.15 s away
    assert bad["proxy_onset_event_f1"] == 0.0
    assert "proxy_onset_gt_f1" not in bad
    with pytest.raises(ValueError, match="gt_waves or event_times"):
        proxy_onset_sync(same, sr)


def test_event_times_are_read_per_id_and_filtered_by_kind(tmp_path):
    tsv = tmp_path / "events.tsv"
    tsv.write_text(
        "id\tkind\ttime_sec\n"
        "clip_a\tflash_click\t1.5000\nclip_a\tflash_click\t0.2500\n"
        "clip_b\tturn\t3.0000\nclip_c\timpact\t9.1000\n"
    )
    times = read_event_times(tsv)
    assert set(times) == {"clip_a", "clip_c"}
    np.testing.assert_array_equal(times["clip_a"], [0.25, 1.5])
    assert set(read_event_times(tsv, kinds=None)) == {"clip_a", "clip_b", "clip_c"}
    np.testing.assert_allclose(events_in_window(np.array([0.5, 2.0, 9.9, 10.0]), 2.0, 8.0), [0.0, 7.9])


# ----------------------------------------------------------------------------------------------
# Frechet distances on weight-free and packaged features


def test_logmel_frames_have_the_documented_shape():
    frames = proxy_logmel_frames(torch.zeros(32000), 32000)  # 1 s -> 16000 samples at 16 kHz
    assert frames.shape == (16000 // 160 + 1, 64)
    assert torch.allclose(frames, torch.full_like(frames, math.log(1e-5)))  # silence sits at the floor


def test_logmel_fd_is_zero_for_identical_audio_and_positive_otherwise():
    sr = 16000
    clips = [click_train(CLICK_TIMES, sr, seed=s) for s in range(2)] + [tone(330.0, sr, 2.0)]
    identical = proxy_fd_logmel(clips, [c.clone() for c in clips], sr)
    assert set(identical) == {"proxy_fd_logmel"}
    assert abs(identical["proxy_fd_logmel"]) < 1e-6
    different = proxy_fd_logmel([tone(880.0, sr, 2.0, seed=s) for s in range(3)], clips, sr)["proxy_fd_logmel"]
    assert different > 10.0
    # closer audio scores lower: a 10% louder copy is nearer than a different sound
    louder = proxy_fd_logmel([1.1 * c for c in clips], clips, sr)["proxy_fd_logmel"]
    assert 0 < louder < different


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # tiny CREPE has dead channels: singular cov
def test_crepe_fd_is_zero_for_identical_audio_and_positive_otherwise():
    pytest.importorskip("torchcrepe")
    sr = 16000
    clips = [tone(220.0, sr, seed=s) for s in range(2)] + [click_train(CLICK_TIMES[:2], sr, duration_sec=1.0)]
    kwargs = dict(model="tiny", hop_sec=0.02)
    identical = proxy_fd_crepe(clips, [c.clone() for c in clips], sr, **kwargs)
    assert set(identical) == {"proxy_fd_crepe"}
    assert abs(identical["proxy_fd_crepe"]) < 1e-6
    other = [tone(660.0, sr, seed=s) for s in range(3)]
    different = proxy_fd_crepe(other, clips, sr, **kwargs)["proxy_fd_crepe"]
    near = [tone(230.0, sr, seed=5), tone(230.0, sr, seed=6)]
    near.append(click_train(CLICK_TIMES[:2], sr, duration_sec=1.0, seed=9))
    similar = proxy_fd_crepe(near, clips, sr, **kwargs)["proxy_fd_crepe"]
    assert 0.1 < similar < different
