"""Anti-aliased periodic activations used by BigVGAN (plain torch, no CUDA kernel).

A pointwise nonlinearity creates harmonics above Nyquist. BigVGAN therefore upsamples 2x with a
Kaiser-windowed sinc low-pass, applies Snake / SnakeBeta at the doubled rate, low-passes again and
drops every other sample. The filter taps are persistent buffers: the official checkpoints carry
them (``*.upsample.filter``, ``*.downsample.lowpass.filter``), so they are part of the key layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_SNAKE_EPS = 1e-9  # keeps 1 / beta finite when a magnitude parameter reaches zero


def kaiser_sinc_lowpass(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Windowed-sinc low-pass taps, shape (1, 1, kernel_size), summing to 1.

    ``cutoff`` and ``half_width`` are in cycles per sample (0.5 = Nyquist). The Kaiser beta follows
    the usual attenuation estimate for a transition band of width ``2 * half_width``.
    """
    if not 0.0 < cutoff <= 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5] cycles/sample, got {cutoff}")
    half_size = kernel_size // 2
    even = kernel_size % 2 == 0
    attenuation_db = 2.285 * (half_size - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation_db > 50.0:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db >= 21.0:
        beta = 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    # an even-length filter is centred between two samples
    t = torch.arange(-half_size, half_size) + 0.5 if even else torch.arange(kernel_size) - half_size
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    taps = taps / taps.sum()  # unit DC gain: a constant input passes unchanged
    return taps.view(1, 1, kernel_size)


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass with replicate padding, optionally strided (decimation)."""

    def __init__(self, cutoff: float, half_width: float, stride: int = 1, kernel_size: int = 12):
        super().__init__()
        self.stride = stride
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_lowpass(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T // stride)
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class UpSample1d(nn.Module):
    """Zero-stuffing upsampler followed by a low-pass (a strided transposed depthwise conv)."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1  # input samples of context on each side
        # samples to crop so that exactly T * ratio outputs remain, aligned with the input
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_lowpass(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T * ratio)
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        # zero-stuffing divides the signal energy by `ratio`; the gain restores it
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels)
        return x[..., self.crop_left : -self.crop_right]


class DownSample1d(nn.Module):
    """Low-pass below the new Nyquist, then keep every ``ratio``-th sample."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, stride=ratio, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T // ratio)
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(alpha * x) / beta per channel; with ``beta=False`` it is Snake (beta = alpha).

    With ``logscale`` the stored parameters are logarithms (initialised to 0, i.e. 1), as in the
    official BigVGAN checkpoints.
    """

    def __init__(self, channels: int, *, beta: bool = True, logscale: bool = True):
        super().__init__()
        self.logscale = logscale
        init = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())  # frequency
        self.beta = nn.Parameter(init.clone()) if beta else None  # magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        alpha = self.alpha[None, :, None]
        beta = alpha if self.beta is None else self.beta[None, :, None]
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + (1.0 / (beta + _SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class Activation1d(nn.Module):
    """Anti-aliased activation: 2x upsample -> nonlinearity -> low-pass and 2x downsample."""

    def __init__(self, act: nn.Module, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(ratio, kernel_size)
        self.downsample = DownSample1d(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        return self.downsample(self.act(self.upsample(x)))
