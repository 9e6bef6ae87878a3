"""Waveform -> log-mel spectrogram, exactly as MMAudio's audio VAE was trained on.

Two presets, one per sample rate. Both use a Hann-windowed STFT without centring: the waveform is
reflect-padded by ``(n_fft - hop) / 2`` on each side instead, so ``num_samples / hop`` frames come
out (8 s at 16 kHz: 128000 samples -> 500 frames; 44.1 kHz: 353280 samples -> 690 frames).
The magnitude gets a tiny floor inside the square root (its gradient stays finite at zero), the
mel projection uses librosa's default filterbank (Slaney mel scale, Slaney area normalisation),
and values are clamped at 1e-5 before the log (log10 at 16 kHz, natural log at 44.1 kHz: the two
official VAEs were trained on different logs, so this is part of the contract, not a choice).

librosa is not a dependency: :func:`slaney_mel_filterbank` computes the same matrix, rounding to
float32 at the same points librosa does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.modes import AudioMode, mode_spec

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_LINEAR_HZ_PER_MEL = 200.0 / 3  # 66.67 Hz per mel up to the break point
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL  # 15 mels
_LOG_MEL_STEP = math.log(6.4) / 27.0  # 27 mels per factor 6.4 above the break

_MAGNITUDE_FLOOR = 1e-9  # added to |X|^2 before the sqrt
_LOG_CLAMP = 1e-5  # mel energies are clamped here before the log


@dataclass(frozen=True)
class MelPreset:
    """STFT and mel parameters of one sample rate."""

    sample_rate: int  # Hz
    n_fft: int
    n_mels: int
    hop_length: int  # samples between frames
    win_length: int  # Hann window length in samples
    fmin: float  # Hz, lowest filter edge
    fmax: float  # Hz, highest filter edge
    log: Literal["log10", "ln"]

    @property
    def pad(self) -> int:
        """Reflect padding on each side, in samples (replaces STFT centring)."""
        return (self.n_fft - self.hop_length) // 2

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Mel frames produced from a waveform of ``num_samples`` samples."""
        return (num_samples + 2 * self.pad - self.n_fft) // self.hop_length + 1


def _mode_mel(mode: AudioMode, **rest) -> MelPreset:
    # rate and hop are the mode's primary numbers (mmaudio.modes); the rest is the converter's own
    spec = mode_spec(mode)
    return MelPreset(sample_rate=spec.sample_rate, hop_length=spec.spectrogram_hop, **rest)


MEL_PRESETS: dict[str, MelPreset] = {
    AudioMode.K16.value: _mode_mel(AudioMode.K16, n_fft=1024, n_mels=80, win_length=1024, fmin=0.0, fmax=8_000.0, log="log10"),
    AudioMode.K44.value: _mode_mel(AudioMode.K44, n_fft=2048, n_mels=128, win_length=2048, fmin=0.0, fmax=22_050.0, log="ln"),
}


def get_mel_preset(preset: str | MelPreset) -> MelPreset:
    if isinstance(preset, MelPreset):
        return preset
    if preset not in MEL_PRESETS:
        raise KeyError(f"unknown mel preset '{preset}' (known: {sorted(MEL_PRESETS)})")
    return MEL_PRESETS[preset]


def hz_to_mel_slaney(hz: torch.Tensor) -> torch.Tensor:
    """Frequencies in Hz -> Slaney mels (float64 in, float64 out for exactness)."""
    linear = hz / _LINEAR_HZ_PER_MEL
    # clamp keeps log() finite on the linear branch, whose value where() discards anyway
    logarithmic = _BREAK_MEL + torch.log(hz.clamp(min=_BREAK_HZ) / _BREAK_HZ) / _LOG_MEL_STEP
    return torch.where(hz >= _BREAK_HZ, logarithmic, linear)


def mel_to_hz_slaney(mel: torch.Tensor) -> torch.Tensor:
    """Slaney mels -> Hz, the inverse of :func:`hz_to_mel_slaney`."""
    linear = mel * _LINEAR_HZ_PER_MEL
    logarithmic = _BREAK_HZ * torch.exp(_LOG_MEL_STEP * (mel - _BREAK_MEL))
    return torch.where(mel >= _BREAK_MEL, logarithmic, linear)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """Triangular mel filters (n_mels, n_fft // 2 + 1), float32, equal to librosa.filters.mel defaults.

    Filter i rises from edge i to edge i+1 and falls to edge i+2, with n_mels + 2 edges evenly
    spaced in Slaney mels between fmin and fmax; each filter is scaled by 2 / (its width in Hz) so
    that all filters have equal area. librosa evaluates the triangles in float64, stores them in a
    float32 array, then scales that array in place; the two roundings are reproduced here.
    """
    # both grids are built as numpy builds them (index * step + start), not with torch.linspace,
    # whose different rounding would move some weights by one float32 ulp
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (1.0 / (n_fft * (1.0 / sample_rate)))  # (F,) Hz
    mel_lo = float(hz_to_mel_slaney(torch.tensor(float(fmin), dtype=torch.float64)))
    mel_hi = float(hz_to_mel_slaney(torch.tensor(float(fmax), dtype=torch.float64)))
    edges_mel = torch.arange(n_mels + 2, dtype=torch.float64) * ((mel_hi - mel_lo) / (n_mels + 1)) + mel_lo
    edges_mel[-1] = mel_hi
    edges = mel_to_hz_slaney(edges_mel)  # (n_mels + 2,) Hz
    widths = edges[1:] - edges[:-1]  # (n_mels + 1,)
    offsets = edges[:, None] - freqs[None, :]  # (n_mels + 2, F) edge minus bin frequency
    rising = -offsets[:-2] / widths[:-1, None]  # (n_mels, F)
    falling = offsets[2:] / widths[1:, None]  # (n_mels, F)
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)
    area_norm = 2.0 / (edges[2:] - edges[:-2])  # (n_mels,)
    return (triangles.to(torch.float64) * area_norm[:, None]).to(torch.float32)


class MelConverter(nn.Module):
    """Waveform (B, L) in [-1, 1] -> log-mel (B, n_mels, T), T = preset.num_frames(L).

    ``mel_basis`` and ``hann_window`` are (persistent) buffers, so this module's state dict has
    the same two keys as upstream's converter; no official file stores them, they are recomputed.
    """

    def __init__(self, preset: str | MelPreset = "16k") -> None:
        super().__init__()
        self.preset = get_mel_preset(preset)
        p = self.preset
        self.register_buffer("mel_basis", slaney_mel_filterbank(p.sample_rate, p.n_fft, p.n_mels, p.fmin, p.fmax))
        self.register_buffer("hann_window", torch.hann_window(p.win_length))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 2:
            raise ValueError(f"MelConverter expects a waveform batch (B, L), got shape {tuple(waveform.shape)}")
        p = self.preset
        x = waveform.clamp(min=-1.0, max=1.0)
        x = F.pad(x.unsqueeze(1), [p.pad, p.pad], mode="reflect").squeeze(1)  # (B, L + 2 * pad)
        spec = torch.stft(x, p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window=self.hann_window,
                          center=False, normalized=False, onesided=True, return_complex=True)  # (B, F, T)
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + _MAGNITUDE_FLOOR)  # (B, F, T)
        mel = torch.matmul(self.mel_basis, magnitude).clamp(min=_LOG_CLAMP)  # (B, n_mels, T)
        return torch.log10(mel) if p.log == "log10" else torch.log(mel)
