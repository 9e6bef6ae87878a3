"""Proxy metrics that need no downloaded weights: cheap stand-ins for FD and sync scores.

They are *not* av-benchmark's metrics and are never to be compared with published numbers; their
names and keys carry the ``proxy_`` prefix so that no table mixes them up. They exist so that the
tiny profile and offline machines still get scores that move when the audio gets better or worse.

- ``proxy_fd_logmel``: Frechet distance between the sets of log-mel *frames* of all generated clips
  and of all ground-truth clips. Audio is mixed to mono and resampled to 16 kHz (the project's Kaiser
  sinc resampler); frames come from a 1024-point Hann STFT every 160 samples (10 ms, centred,
  reflect-padded), power spectrum through a 64-band HTK mel filterbank over 0-8 kHz (no filter
  normalisation), then natural log after clamping at 1e-5. Each frame is one 64-dim sample.
- ``proxy_fd_crepe``: the same Frechet distance over CREPE embeddings (torchcrepe, whose weights ship
  inside the package): 16 kHz mono audio, one 1024-sample frame every ``hop_sec``, the output of
  CREPE's fifth conv block (C channels x 8 positions) averaged over the 8 positions, giving one
  C-dim vector per frame (C = 256 for ``full``, 32 for ``tiny``). A pitch/timbre proxy.
- ``proxy_onset_*``: onsets found by a spectral-flux detector (see :class:`OnsetConfig`: 16 kHz
  mono, 512-point Hann windows every 10 ms inside the clip, summed rise of log(1 + |X|), peaks
  picked as librosa's ``peak_pick`` does plus a floor of 3x the clip's median novelty) in each
  generated clip are matched one-to-one to reference times (ground-truth-audio onsets, or known
  event times) within a tolerance (0.1 s): precision, recall and F1 per clip averaged over clips
  (as MMAudio's ``eval_onsets.py`` averages per file), and the mean absolute offset over all
  matched pairs. The upstream idea is ``eval_onsets.py`` (librosa onsets, NMS, AP/F1); this is a
  re-derivation without librosa, not a reproduction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchaudio

from mmaudio.evaluation.metrics import frechet_distance
from mmaudio.media import resample
from mmaudio.tables import finite_float, read_tsv

PROXY_SAMPLE_RATE = 16000
ONSET_EVENT_KINDS = ("flash_click", "impact")  # event kinds of the example set that are sound onsets


# ----------------------------------------------------------------------------------------------
# Shared audio preparation


def to_mono_16k(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(T,) or (C, T) audio at ``sample_rate`` -> (T',) float32 mono at 16 kHz."""
    if wave.dim() == 2:
        wave = wave.mean(dim=0)
    elif wave.dim() != 1:
        raise ValueError(f"audio must be (T,) or (C, T), got {tuple(wave.shape)}")
    return resample(wave.float(), sample_rate, PROXY_SAMPLE_RATE)


# ----------------------------------------------------------------------------------------------
# FD on log-mel frames


@dataclass(frozen=True)
class LogMelConfig:
    n_fft: int = 1024
    hop_length: int = 160  # 10 ms at 16 kHz
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5  # power below this is clamped before the log (silence -> log(1e-5))


@lru_cache(maxsize=4)
def _mel_transform(config: LogMelConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=PROXY_SAMPLE_RATE,
        n_fft=config.n_fft,
        win_length=config.n_fft,
        hop_length=config.hop_length,
        f_min=config.f_min,
        f_max=config.f_max,
        n_mels=config.n_mels,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    )


def proxy_logmel_frames(wave: torch.Tensor, sample_rate: int, config: LogMelConfig = LogMelConfig()) -> torch.Tensor:
    """Log-mel frames (num_frames, n_mels) of one clip."""
    mel = _mel_transform(config)(to_mono_16k(wave, sample_rate))  # (n_mels, num_frames)
    return mel.clamp(min=config.log_floor).log().T


def proxy_fd_logmel(
    pred_waves: Iterable[torch.Tensor],
    gt_waves: Iterable[torch.Tensor],
    sample_rate: int,
    config: LogMelConfig = LogMelConfig(),
) -> dict[str, float]:
    """``{'proxy_fd_logmel': FD}`` between the pooled log-mel frames of two sets of clips."""
    pred = torch.cat([proxy_logmel_frames(w, sample_rate, config) for w in pred_waves])  # (F_pred, n_mels)
    gt = torch.cat([proxy_logmel_frames(w, sample_rate, config) for w in gt_waves])  # (F_gt, n_mels)
    return {"proxy_fd_logmel": frechet_distance(pred.double(), gt.double())}


# ----------------------------------------------------------------------------------------------
# FD on CREPE embeddings


def proxy_crepe_frames(
    wave: torch.Tensor,
    sample_rate: int,
    *,
    model: str = "full",
    hop_sec: float = 0.01,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """CREPE embeddings (num_frames, C) of one clip: the fifth conv block pooled over its 8 positions."""
    import torchcrepe  # imported here: it pulls librosa, which only this proxy needs

    audio = to_mono_16k(wave, sample_rate)[None]  # (1, T) at CREPE's own rate, so it does not resample
    hop_length = int(round(hop_sec * PROXY_SAMPLE_RATE))
    with torch.inference_mode():
        # torchcrepe returns (1, frames, 32, -1), a reshape of the block output (frames, C, 8, 1)
        embedding = torchcrepe.embed(audio, PROXY_SAMPLE_RATE, hop_length, model, batch_size, str(device))
    num_frames = embedding.shape[1]
    return embedding.reshape(num_frames, -1, 8).mean(dim=-1).cpu()  # (frames, C)


def proxy_fd_crepe(
    pred_waves: Iterable[torch.Tensor],
    gt_waves: Iterable[torch.Tensor],
    sample_rate: int,
    *,
    model: str = "full",
    hop_sec: float = 0.01,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """``{'proxy_fd_crepe': FD}`` between the pooled CREPE frame embeddings of two sets of clips."""
    kwargs = dict(model=model, hop_sec=hop_sec, batch_size=batch_size, device=device)
    pred = torch.cat([proxy_crepe_frames(w, sample_rate, **kwargs) for w in pred_waves])
    gt = torch.cat([proxy_crepe_frames(w, sample_rate, **kwargs) for w in gt_waves])
    return {"proxy_fd_crepe": frechet_distance(pred.double(), gt.double())}


# ----------------------------------------------------------------------------------------------
# Onsets


@dataclass(frozen=True)
class OnsetConfig:
    """Spectral-flux onset detection at 16 kHz; peak picking after librosa's ``peak_pick`` rules."""

    n_fft: int = 512  # 32 ms Hann window: clicks are located within about 10 ms
    hop_length: int = 160  # 10 ms per novelty frame
    log_gain: float = 1.0  # compression log(1 + gain * |X|) before differencing
    pre_max_sec: float = 0.03  # an onset is the maximum of [t - pre_max, t + post_max],
    post_max_sec: float = 0.03
    pre_avg_sec: float = 0.1  # exceeds the mean of [t - pre_avg, t + post_avg] by delta
    post_avg_sec: float = 0.1
    delta: float = 0.1  # (on the novelty curve scaled to [0, 1] per clip)
    # and is at least this many times the clip's median novelty: the [0, 1] scaling alone would blow
    # the ripple of a steady sound up to full scale and call it onsets.
    min_ratio_to_median: float = 3.0
    wait_sec: float = 0.05  # minimum gap between onsets (eval_onsets.py's NMS window)


def spectral_flux(wave: torch.Tensor, sample_rate: int, config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Novelty curve (num_frames,): summed positive change of the log-magnitude spectrum.

    Only windows that lie fully inside the clip are used (no padding): a padded edge reads as a
    spectral change, so every clip would show an onset at its start or end. Frame t spans samples
    [t * hop, t * hop + n_fft); its value compares it with frame t - 1 (frame 0 gets 0), and it is
    timed at the window centre (see :func:`onset_frame_times`).
    """
    audio = to_mono_16k(wave, sample_rate).double()
    if audio.shape[0] < config.n_fft:
        return np.zeros(0)
    window = torch.hann_window(config.n_fft, dtype=torch.float64)
    spec = torch.stft(audio, config.n_fft, config.hop_length, window=window, center=False, return_complex=True)
    log_mag = torch.log1p(config.log_gain * spec.abs())  # (freq, frames)
    rise = (log_mag[:, 1:] - log_mag[:, :-1]).clamp(min=0).sum(dim=0)  # (frames - 1,)
    return torch.cat([rise.new_zeros(1), rise]).numpy()


def onset_frame_times(frames: np.ndarray, config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Time (s) of novelty frames: the centre of their window."""
    return (np.asarray(frames) * config.hop_length + config.n_fft / 2) / PROXY_SAMPLE_RATE


def pick_peaks(novelty: np.ndarray, frame_rate: float, config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Frame indices of onsets in a novelty curve (see :class:`OnsetConfig`)."""
    low, high = float(novelty.min()), float(novelty.max())
    if high - low <= 1e-12:  # flat curve (e.g. silence): nothing starts anywhere
        return np.zeros(0, dtype=np.int64)
    env = (novelty - low) / (high - low)
    floor = config.min_ratio_to_median * float(np.median(novelty))

    def frames(sec: float) -> int:
        return int(round(sec * frame_rate))

    pre_max, post_max = frames(config.pre_max_sec), frames(config.post_max_sec)
    pre_avg, post_avg, wait = frames(config.pre_avg_sec), frames(config.post_avg_sec), frames(config.wait_sec)
    peaks: list[int] = []
    for t in range(len(env)):
        if novelty[t] < floor or env[t] < env[max(0, t - pre_max) : t + post_max + 1].max():
            continue
        if env[t] < env[max(0, t - pre_avg) : t + post_avg + 1].mean() + config.delta:
            continue
        if peaks and t - peaks[-1] <= wait:
            continue
        peaks.append(t)
    return np.asarray(peaks, dtype=np.int64)


def detect_onsets(wave: torch.Tensor, sample_rate: int, config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Onset times (s, ascending) in a clip."""
    novelty = spectral_flux(wave, sample_rate, config)
    if len(novelty) == 0:
        return np.zeros(0)
    frame_rate = PROXY_SAMPLE_RATE / config.hop_length
    return onset_frame_times(pick_peaks(novelty, frame_rate, config), config)


@dataclass(frozen=True)
class OnsetMatch:
    num_estimated: int
    num_reference: int
    offsets_sec: np.ndarray  # |estimate - reference| of each matched pair

    @property
    def num_matched(self) -> int:
        return len(self.offsets_sec)

    @property
    def precision(self) -> float:
        return self.num_matched / self.num_estimated if self.num_estimated else 1.0  # nothing claimed: none wrong

    @property
    def recall(self) -> float:
        return self.num_matched / self.num_reference if self.num_reference else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def match_onsets(estimated: np.ndarray, reference: np.ndarray, tolerance_sec: float = 0.1) -> OnsetMatch:
    """One-to-one matching with |estimate - reference| <= tolerance, as many pairs as possible.

    Both lists sorted, each reference takes the earliest free estimate in its window: for windows of
    equal width this greedy sweep finds a maximum matching.
    """
    est, ref = np.sort(np.asarray(estimated, float)), np.sort(np.asarray(reference, float))
    offsets, j = [], 0
    for r in ref:
        while j < len(est) and est[j] < r - tolerance_sec:
            j += 1  # too early for this reference, hence for every later one
        if j < len(est) and est[j] <= r + tolerance_sec:
            offsets.append(abs(est[j] - r))
            j += 1
    return OnsetMatch(len(est), len(ref), np.asarray(offsets, dtype=float))


def proxy_onset_scores(
    estimated: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    tolerance_sec: float = 0.1,
    prefix: str = "proxy_onset",
) -> dict[str, float]:
    """Scores of estimated onset times against reference times, paired by clip id.

    Every estimated id must have a reference (an empty array for a clip without events); a missing
    one is an error rather than a silently smaller average. Keys: ``{prefix}_precision``,
    ``_recall``, ``_f1`` (means over clips), ``_mean_abs_offset_sec`` (over all matched pairs; NaN
    when nothing matched) and ``_num_clips``.
    """
    if not prefix.startswith("proxy_"):
        raise ValueError(f"proxy metric keys must start with 'proxy_', got prefix {prefix!r}")
    missing = sorted(set(estimated) - set(reference))
    if missing:
        raise KeyError(f"no reference onsets for {len(missing)} clip(s): {missing[:10]}")
    if not estimated:
        raise ValueError("no clips to score")
    matches = [match_onsets(estimated[k], reference[k], tolerance_sec) for k in estimated]
    offsets = np.concatenate([m.offsets_sec for m in matches])
    return {
        f"{prefix}_precision": float(np.mean([m.precision for m in matches])),
        f"{prefix}_recall": float(np.mean([m.recall for m in matches])),
        f"{prefix}_f1": float(np.mean([m.f1 for m in matches])),
        f"{prefix}_mean_abs_offset_sec": float(offsets.mean()) if len(offsets) else math.nan,
        f"{prefix}_num_clips": float(len(matches)),
    }


def proxy_onset_sync(
    pred_waves: Mapping[str, torch.Tensor],
    sample_rate: int,
    *,
    gt_waves: Mapping[str, torch.Tensor] | None = None,
    gt_sample_rate: int | None = None,
    event_times: Mapping[str, np.ndarray] | None = None,
    tolerance_sec: float = 0.1,
    config: OnsetConfig = OnsetConfig(),
) -> dict[str, float]:
    """Onset sync of generated clips against ground-truth-audio onsets (``proxy_onset_gt_*``) and/or
    known event times (``proxy_onset_event_*``), all keyed by clip id."""
    if gt_waves is None and event_times is None:
        raise ValueError("proxy_onset_sync needs gt_waves or event_times to compare with")
    estimated = {k: detect_onsets(w, sample_rate, config) for k, w in pred_waves.items()}
    scores: dict[str, float] = {}
    if gt_waves is not None:
        rate = gt_sample_rate or sample_rate
        gt_onsets = {k: detect_onsets(w, rate, config) for k, w in gt_waves.items()}
        scores |= proxy_onset_scores(estimated, gt_onsets, tolerance_sec=tolerance_sec, prefix="proxy_onset_gt")
    if event_times is not None:
        scores |= proxy_onset_scores(estimated, event_times, tolerance_sec=tolerance_sec, prefix="proxy_onset_event")
    return scores


def read_event_times(path: str | Path, kinds: Sequence[str] | None = ONSET_EVENT_KINDS) -> dict[str, np.ndarray]:
    """Event times (s, sorted) per file id from an ``id, kind, time_sec`` TSV (the example set's
    ``events.tsv``), keeping only ``kinds`` (default: the kinds that are sound onsets)."""
    times: dict[str, list[float]] = {}
    for row in read_tsv(path, ("id", "kind", "time_sec"), unique=False, checks={"time_sec": finite_float}):
        if kinds is None or row["kind"] in kinds:
            times.setdefault(row["id"], []).append(float(row["time_sec"]))
    return {k: np.sort(np.asarray(v)) for k, v in times.items()}


def events_in_window(times: np.ndarray, start_sec: float, duration_sec: float) -> np.ndarray:
    """Event times inside [start, start + duration), relative to ``start`` (a clip cut from a file)."""
    times = np.asarray(times, dtype=float)
    inside = (times >= start_sec) & (times < start_sec + duration_sec)
    return times[inside] - start_sec
