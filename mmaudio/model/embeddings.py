"""Position and time embeddings of the MM-DiT: rotary embeddings (RoPE) and the flow-time embedder.

The official weights were trained against these exact formulas, so the quirks below are kept on
purpose; each is marked "QUIRK".
"""

from __future__ import annotations

import torch
from torch import nn

ROPE_THETA = 10000.0


def rope_rotations(
    length: int,
    head_dim: int,
    *,
    theta: float = ROPE_THETA,
    freq_scaling: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotation matrices for positions 0..length-1, shape (1, length, head_dim // 2, 2, 2), float32.

    Entry [0, n, f] is [[cos a, -sin a], [sin a, cos a]] with a = n * freq_scaling / theta^(2f / head_dim).
    ``freq_scaling`` stretches the position axis: the network passes latent_len / clip_len for the
    CLIP tokens so that a CLIP frame and the latent frame at the same instant get the same angle
    (QUIRK: the scaling multiplies the frequencies in float32 after the power, as upstream does; the
    angles are therefore not bit-equal to scaling the positions).
    """
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)  # (N,)
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = freqs * freq_scaling  # (D/2,)
    angle = pos[:, None] * freqs[None, :]  # (N, D/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)  # (N, D/2, 4)
    return rot.view(1, length, head_dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, H, N, D) by ``rot`` (1, N, D/2, 2, 2), computing in float32.

    QUIRK: the pairs are *adjacent* channels (2i, 2i+1), not the two halves of the head (the
    GPT-NeoX/LLaMA-HF layout); weights trained one way do not work the other way.
    """
    # elementwise ops are outside autocast's lists, so the explicit float() keeps this in float32
    pairs = x.float().view(*x.shape[:-1], -1, 1, 2)  # (B, H, N, D/2, 1, 2)
    out = rot[..., 0] * pairs[..., 0] + rot[..., 1] * pairs[..., 1]  # (B, H, N, D/2, 2)
    return out.reshape(x.shape).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the flow time t in [0, 1] followed by a 2-layer SiLU MLP (DiT style).

    Frequencies are (10000 / max_period) / 10000^(2i / num_freq_features), and the feature vector is
    [cos(t f), sin(t f)] (cosines first). v1 networks use 256 features and max_period 10000, i.e. the
    DiT frequencies 1 .. 1e-4, which barely resolve t in [0, 1]; v2 uses ``hidden_dim`` features with
    max_period 1, i.e. frequencies 1e4 .. ~1 (QUIRK: kept as is since the weights depend on it).
    """

    def __init__(self, dim: int, num_freq_features: int, max_period: float) -> None:
        super().__init__()
        if num_freq_features % 2 != 0:
            raise ValueError(f"num_freq_features must be even, got {num_freq_features}")
        self.mlp = nn.Sequential(nn.Linear(num_freq_features, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.num_freq_features = num_freq_features
        self.max_period = max_period
        # not saved: official files may or may not contain 't_embed.freqs'; the loader drops it
        self.register_buffer("freqs", self._frequencies(), persistent=False)

    def _frequencies(self, device: torch.device | str | None = None) -> torch.Tensor:
        n = self.num_freq_features
        base = 1.0 / (10000 ** (torch.arange(0, n, 2, dtype=torch.float32, device=device) / n))
        # float32 multiply after the power, exactly as the trained model computed it
        return (10000 / self.max_period) * base  # (n/2,)

    def reset_buffers(self) -> None:
        self.freqs = self._frequencies(device=self.freqs.device)

    def sinusoidal_features(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, num_freq_features) float32."""
        angle = t[:, None].float() * self.freqs[None]  # (B, n/2)
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal_features(t).to(t.dtype))  # (B, dim)
