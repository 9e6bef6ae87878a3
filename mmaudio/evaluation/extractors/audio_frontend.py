"""Waveform preparation shared by the PANNs, VGGish and PaSST extractors, as av-benchmark does it.

av-benchmark reads every generated or reference file through ``AudioDataset.read_from_file``
(av_bench/data/audio_dataset.py:124-141) and only then hands a batch to each model:

1. channels are averaged to mono (line 126);
2. the mono signal's own mean is subtracted, over the whole file, before anything else (line 127);
3. it is resampled with ``torchaudio.transforms.Resample(sample_rate, sr)`` at its default settings
   (lines 132-137), skipped when the rates already match (line 129);
4. it is cut to ``int(sr * audio_length)`` samples, 8 s by default (av_bench/extract.py:47,
   audio_dataset.py:139). Shorter clips are *not* padded here.

PANNs and VGGish get ``sr=16000`` (extract.py:60); PaSST gets ``sr=32000`` (extract.py:159) and then a
zero pad (or cut) to its 10 s window of 320000 samples (extract.py:166-169).

The resampler is *not* the project's resampler (DESIGN.md: ``sinc_interp_kaiser``, width 64, rolloff
0.9476): torchaudio's ``Resample`` defaults are ``sinc_interp_hann``, ``lowpass_filter_width=6``,
``rolloff=0.99``, with the kernel computed in float64 and cached in float32 (which is also why the
transform and ``torchaudio.functional.resample`` on float32 input differ in the last bits). Scores
are only comparable with av-benchmark's if this exact resampler is used, so it is reproduced here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio

AV_BENCH_DURATION_SEC = 8.0  # av_bench/extract.py:47, the clip length every model sees


def to_mono_batch(wave: torch.Tensor) -> torch.Tensor:
    """(T,), (B, T) or (B, C, T) -> (B, T) float32, channels averaged as av-benchmark does."""
    if wave.ndim == 1:
        wave = wave[None]
    elif wave.ndim == 3:
        wave = wave.mean(dim=1)
    elif wave.ndim != 2:
        raise ValueError(f"waveform must be (T,), (B, T) or (B, C, T), got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"waveform must be floating point in [-1, 1], got dtype {wave.dtype}")
    return wave.float()


_RESAMPLERS: dict[tuple[int, int, str], torchaudio.transforms.Resample] = {}


def resample_av_bench(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """(..., T) at ``orig_rate`` -> (..., T') at ``new_rate`` with torchaudio's default ``Resample``."""
    if int(orig_rate) != orig_rate or int(new_rate) != new_rate or orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_rate} -> {new_rate}")
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return wave
    key = (orig_rate, new_rate, str(wave.device))
    if key not in _RESAMPLERS:  # the kernel only depends on the two rates; build it once per device
        _RESAMPLERS[key] = torchaudio.transforms.Resample(orig_rate, new_rate).to(wave.device)
    return _RESAMPLERS[key](wave)


def prepare_av_bench_waveform(
    wave: torch.Tensor,
    sample_rate: int,
    target_rate: int,
    duration_sec: float = AV_BENCH_DURATION_SEC,
) -> torch.Tensor:
    """Waveform(s) at ``sample_rate`` -> (B, <= duration_sec * target_rate) as av-benchmark feeds them.

    Mono, minus its mean (taken over the full input, before resampling), resampled to
    ``target_rate``, cut to ``int(target_rate * duration_sec)`` samples; never padded.
    """
    x = to_mono_batch(wave)  # (B, T)
    x = x - x.mean(dim=-1, keepdim=True)
    x = resample_av_bench(x, sample_rate, target_rate)
    return x[:, : int(target_rate * duration_sec)]


def pad_or_cut(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B, T) -> (B, num_samples): zeros appended at the end, or the tail dropped."""
    if wave.shape[-1] >= num_samples:
        return wave[..., :num_samples]
    return F.pad(wave, (0, num_samples - wave.shape[-1]))
