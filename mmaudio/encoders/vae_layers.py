"""Magnitude-preserving 1-D building blocks of MMAudio's audio VAE (EDM2-style, Karras et al. 2024).

Every convolution keeps a raw weight and uses it only after "forced weight normalisation": each
output filter is scaled to unit norm (with a small epsilon), then divided by sqrt(fan_in), so a unit
variance input gives a unit variance output whatever the raw weight's scale. Activations, sums and
attention are rescaled so magnitudes stay near one through the network.

Upstream normalises the raw weights in place once, after loading (and refuses to run before),
with no difference between train and eval mode. Here the same normalised weight is computed from
the raw one at every call, in the same float32 operations, so the numbers are identical while the
parameter (and so ``state_dict()``) always stays exactly what the weight file holds: saving and
reloading is lossless and the normalisation can never be applied twice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-4  # added to the (rescaled) norm in every normalisation
SILU_GAIN = 0.596  # RMS of silu(x) for x ~ N(0, 1); dividing by it keeps unit magnitude
RESIDUAL_T = 0.3  # weight of the branch in the magnitude-preserving residual sums


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = NORM_EPS) -> torch.Tensor:
    """Scale ``x`` so that its RMS over ``dim`` (default: all but the first) is one.

    The norm is taken in float32 and rescaled by sqrt(reduced size) before eps is added, i.e.
    x / (eps + ||x|| / sqrt(n)).
    """
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / SILU_GAIN


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b, rescaled so two independent unit-variance inputs give a unit-variance sum."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


class MPConv1D(nn.Module):
    """Conv1d (stride 1, 'same' padding, no bias) with a forced-weight-normalised kernel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))  # raw, any scale

    def normalized_weight(self) -> torch.Tensor:
        """The kernel actually applied: unit-norm filters divided by sqrt(fan_in)."""
        w = normalize(self.weight.to(torch.float32))  # (C_out, C_in, K), each filter RMS one
        w = w / math.sqrt(w[0].numel())
        return w.to(self.weight.dtype)

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        w = self.normalized_weight()
        if gain is not None:
            w = w * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)  # (B, C_out, T)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.weight.shape[-1]}"


class ResnetBlock1D(nn.Module):
    """Pixel norm -> (silu -> conv) x 2, magnitude-preserving residual; 1x1 shortcut if widths differ."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = MPConv1D(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1D(out_dim, out_dim, kernel_size)
        self.nin_shortcut = MPConv1D(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, dim=1)  # (B, C_in, T), unit RMS across channels at every frame
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))  # (B, C_out, T)
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, t=RESIDUAL_T)


class AttnBlock1D(nn.Module):
    """Self-attention over time with cosine (normalised) queries and keys; magnitude-preserving residual."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MPConv1D(channels, channels * 3, 1)
        self.proj_out = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape
        # the 3C qkv channels are laid out as (head, channel, q/k/v): that interleaving is what
        # the official weights were trained with
        y = self.qkv(x).reshape(b, self.num_heads, -1, 3, t)  # (B, H, C/H, 3, T)
        q, k, v = normalize(y, dim=2).unbind(3)  # each (B, H, C/H, T)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(b, -1, t)  # (B, C, T)
        return mp_sum(x, self.proj_out(h), t=RESIDUAL_T)


class Downsample1D(nn.Module):
    """1x1 conv -> average pool by 2 (odd lengths drop the last frame) -> 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MPConv1D(channels, channels, 1)
        self.conv2 = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))  # (B, C, T // 2)


class Upsample1D(nn.Module):
    """Nearest-neighbour repeat by 2 -> conv (kernel 3)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MPConv1D(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))  # (B, C, 2T)
