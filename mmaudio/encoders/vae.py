"""MMAudio's audio VAE: log-mel (B, n_mels, T) <-> latent (B, latent_dim, T / 2).

A 1-D convolutional encoder/decoder built from magnitude-preserving layers (see vae_layers.py).
The mel input is first standardised per mel bin with fixed dataset statistics (the ``data_mean`` /
``data_std`` buffers, which the official files also store); the encoder outputs a mean and a log
variance per latent channel and frame, the log variance is clamped to [-30, 20] and turned into a
standard deviation, std = exp(logvar / 2). MMAudio trains its flow network on (mean, std) of
these diagonal Gaussians; the decoder maps a latent back to a (de-standardised) log-mel.

Weight files (``v1-16.pth`` / ``v1-44.pth``) are one flat state dict of this module; the key
layout is checked against upstream's in tests/fixtures/keys/vae_{16k,44k}.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from mmaudio.encoders.mel import MEL_PRESETS, MelConverter, get_mel_preset
from mmaudio.encoders.vae_layers import AttnBlock1D, Downsample1D, MPConv1D, ResnetBlock1D, Upsample1D, mp_silu
from mmaudio.weights import load_state_dict_strict, load_weight_file, save_weight_file

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # clamp on the encoder's log variance (keeps exp() finite)

# Per-mel-bin statistics of the training data's log-mels; the official weights expect mels
# standardised with exactly these (they are stored in the weight files too).
_MEL_MEAN_80 = [
    -1.6058, -1.3676, -1.2520, -1.2453, -1.2078, -1.2224, -1.2419, -1.2439, -1.2922, -1.2927,
    -1.3170, -1.3543, -1.3401, -1.3836, -1.3907, -1.3912, -1.4313, -1.4152, -1.4527, -1.4728,
    -1.4568, -1.5101, -1.5051, -1.5172, -1.5623, -1.5373, -1.5746, -1.5687, -1.6032, -1.6131,
    -1.6081, -1.6331, -1.6489, -1.6489, -1.6700, -1.6738, -1.6953, -1.6969, -1.7048, -1.7280,
    -1.7361, -1.7495, -1.7658, -1.7814, -1.7889, -1.8064, -1.8221, -1.8377, -1.8417, -1.8643,
    -1.8857, -1.8929, -1.9173, -1.9379, -1.9531, -1.9673, -1.9824, -2.0042, -2.0215, -2.0436,
    -2.0766, -2.1064, -2.1418, -2.1855, -2.2319, -2.2767, -2.3161, -2.3572, -2.3954, -2.4282,
    -2.4659, -2.5072, -2.5552, -2.6074, -2.6584, -2.7107, -2.7634, -2.8266, -2.8981, -2.9673,
]
_MEL_STD_80 = [
    1.0291, 1.0411, 1.0043, 0.9820, 0.9677, 0.9543, 0.9450, 0.9392, 0.9343, 0.9297,
    0.9276, 0.9263, 0.9242, 0.9254, 0.9232, 0.9281, 0.9263, 0.9315, 0.9274, 0.9247,
    0.9277, 0.9199, 0.9188, 0.9194, 0.9160, 0.9161, 0.9146, 0.9161, 0.9100, 0.9095,
    0.9145, 0.9076, 0.9066, 0.9095, 0.9032, 0.9043, 0.9038, 0.9011, 0.9019, 0.9010,
    0.8984, 0.8983, 0.8986, 0.8961, 0.8962, 0.8978, 0.8962, 0.8973, 0.8993, 0.8976,
    0.8995, 0.9016, 0.8982, 0.8972, 0.8974, 0.8949, 0.8940, 0.8947, 0.8936, 0.8939,
    0.8951, 0.8956, 0.9017, 0.9167, 0.9436, 0.9690, 1.0003, 1.0225, 1.0381, 1.0491,
    1.0545, 1.0604, 1.0761, 1.0929, 1.1089, 1.1196, 1.1176, 1.1156, 1.1117, 1.1070,
]
_MEL_MEAN_128 = [
    -3.3462, -2.6723, -2.4893, -2.3143, -2.2664, -2.3317, -2.1802, -2.4006, -2.2357, -2.4597,
    -2.3717, -2.4690, -2.5142, -2.4919, -2.6610, -2.5047, -2.7483, -2.5926, -2.7462, -2.7033,
    -2.7386, -2.8112, -2.7502, -2.9594, -2.7473, -3.0035, -2.8891, -2.9922, -2.9856, -3.0157,
    -3.1191, -2.9893, -3.1718, -3.0745, -3.1879, -3.2310, -3.1424, -3.2296, -3.2791, -3.2782,
    -3.2756, -3.3134, -3.3509, -3.3750, -3.3951, -3.3698, -3.4505, -3.4509, -3.5089, -3.4647,
    -3.5536, -3.5788, -3.5867, -3.6036, -3.6400, -3.6747, -3.7072, -3.7279, -3.7283, -3.7795,
    -3.8259, -3.8447, -3.8663, -3.9182, -3.9605, -3.9861, -4.0105, -4.0373, -4.0762, -4.1121,
    -4.1488, -4.1874, -4.2461, -4.3170, -4.3639, -4.4452, -4.5282, -4.6297, -4.7019, -4.7960,
    -4.8700, -4.9507, -5.0303, -5.0866, -5.1634, -5.2342, -5.3242, -5.4053, -5.4927, -5.5712,
    -5.6464, -5.7052, -5.7619, -5.8410, -5.9188, -6.0103, -6.0955, -6.1673, -6.2362, -6.3120,
    -6.3926, -6.4797, -6.5565, -6.6511, -6.8130, -6.9961, -7.1275, -7.2457, -7.3576, -7.4663,
    -7.6136, -7.7469, -7.8815, -8.0132, -8.1515, -8.3071, -8.4722, -8.7418, -9.3975, -9.6628,
    -9.7671, -9.8863, -9.9992, -10.0860, -10.1709, -10.5418, -11.2795, -11.3861,
]
_MEL_STD_128 = [
    2.3804, 2.4368, 2.3772, 2.3145, 2.2803, 2.2510, 2.2316, 2.2083, 2.1996, 2.1835,
    2.1769, 2.1659, 2.1631, 2.1618, 2.1540, 2.1606, 2.1571, 2.1567, 2.1612, 2.1579,
    2.1679, 2.1683, 2.1634, 2.1557, 2.1668, 2.1518, 2.1415, 2.1449, 2.1406, 2.1350,
    2.1313, 2.1415, 2.1281, 2.1352, 2.1219, 2.1182, 2.1327, 2.1195, 2.1137, 2.1080,
    2.1179, 2.1036, 2.1087, 2.1036, 2.1015, 2.1068, 2.0975, 2.0991, 2.0902, 2.1015,
    2.0857, 2.0920, 2.0893, 2.0897, 2.0910, 2.0881, 2.0925, 2.0873, 2.0960, 2.0900,
    2.0957, 2.0958, 2.0978, 2.0936, 2.0886, 2.0905, 2.0845, 2.0855, 2.0796, 2.0840,
    2.0813, 2.0817, 2.0838, 2.0840, 2.0917, 2.1061, 2.1431, 2.1976, 2.2482, 2.3055,
    2.3700, 2.4088, 2.4372, 2.4609, 2.4731, 2.4847, 2.5072, 2.5451, 2.5772, 2.6147,
    2.6529, 2.6596, 2.6645, 2.6726, 2.6803, 2.6812, 2.6899, 2.6916, 2.6931, 2.6998,
    2.7062, 2.7262, 2.7222, 2.7158, 2.7041, 2.7485, 2.7491, 2.7451, 2.7485, 2.7233,
    2.7297, 2.7233, 2.7145, 2.6958, 2.6788, 2.6439, 2.6007, 2.4786, 2.2469, 2.1877,
    2.1392, 2.0717, 2.0107, 1.9676, 1.9140, 1.7102, 0.9101, 0.7164,
]
MEL_STATISTICS: dict[str, tuple[list[float], list[float]]] = {
    "16k": (_MEL_MEAN_80, _MEL_STD_80),
    "44k": (_MEL_MEAN_128, _MEL_STD_128),
}


@dataclass(frozen=True)
class VAEPreset:
    """Shape of one VAE. ``mel`` names the mel preset it reads, which fixes its data dimension."""

    mel: str  # key of MEL_PRESETS and MEL_STATISTICS
    latent_dim: int  # channels of the latent (mean and std each)
    hidden_dim: int  # channels at the finest level; level i has hidden_dim * ch_mult[i]
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2  # per encoder level; decoder levels have one more
    down_levels: tuple[int, ...] = (0,)  # encoder levels followed by a 2x downsample in time
    kernel_size: int = 3
    clip_act: float = 256.0  # activations are clamped to +-clip_act after every block

    def __post_init__(self) -> None:
        if self.mel not in MEL_STATISTICS:
            raise ValueError(f"VAEPreset.mel must be one of {sorted(MEL_STATISTICS)}, got '{self.mel}'")
        if any(not 0 <= level < len(self.ch_mult) - 1 for level in self.down_levels):
            raise ValueError(f"VAEPreset.down_levels {self.down_levels} must lie in [0, {len(self.ch_mult) - 2}]")

    @property
    def data_dim(self) -> int:
        return MEL_PRESETS[self.mel].n_mels

    def latent_frames(self, mel_frames: int) -> int:
        """Latent length for a mel of ``mel_frames`` frames (each downsample floors odd lengths)."""
        for _ in self.down_levels:
            mel_frames //= 2
        return mel_frames


VAE_PRESETS: dict[str, VAEPreset] = {
    "16k": VAEPreset(mel="16k", latent_dim=20, hidden_dim=384),
    "44k": VAEPreset(mel="44k", latent_dim=40, hidden_dim=512),
    # same mel/latent contract and frame rates, a few thousand times fewer weights
    "tiny_16k": VAEPreset(mel="16k", latent_dim=20, hidden_dim=16, ch_mult=(1, 2), num_res_blocks=1),
    "tiny_44k": VAEPreset(mel="44k", latent_dim=40, hidden_dim=16, ch_mult=(1, 2), num_res_blocks=1),
}


def get_vae_preset(preset: str | VAEPreset) -> VAEPreset:
    if isinstance(preset, VAEPreset):
        return preset
    if preset not in VAE_PRESETS:
        raise KeyError(f"unknown VAE preset '{preset}' (known: {sorted(VAE_PRESETS)})")
    return VAE_PRESETS[preset]


class DiagonalGaussian(NamedTuple):
    """A diagonal Gaussian over latents; unpacks as ``mean, std``."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.empty_like(self.mean).normal_(generator=generator)
        return self.mean + self.std * noise


class MidBlock1D(nn.Module):
    """Resnet -> attention -> resnet at the coarsest level."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock1D(channels, channels, kernel_size)
        self.attn_1 = AttnBlock1D(channels)
        self.block_2 = ResnetBlock1D(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class EncoderLevel(nn.Module):
    def __init__(self, blocks: list[ResnetBlock1D], downsample: Downsample1D | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample


class DecoderLevel(nn.Module):
    def __init__(self, blocks: list[ResnetBlock1D], upsample: Upsample1D | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample


class Encoder1D(nn.Module):
    """Standardised mel (B, data_dim, T) -> moments (B, 2 * latent_dim, T / 2): mean then log variance."""

    def __init__(self, p: VAEPreset) -> None:
        super().__init__()
        self.clip_act = p.clip_act
        self.learnable_gain = nn.Parameter(torch.zeros([]))  # output scale is (1 + gain)
        self.conv_in = MPConv1D(p.data_dim, p.hidden_dim, p.kernel_size)
        self.down = nn.ModuleList()
        width = p.hidden_dim
        for level, mult in enumerate(p.ch_mult):
            blocks = []
            for _ in range(p.num_res_blocks):
                blocks.append(ResnetBlock1D(width, p.hidden_dim * mult, p.kernel_size))
                width = p.hidden_dim * mult
            self.down.append(EncoderLevel(blocks, Downsample1D(width) if level in p.down_levels else None))
        self.mid = MidBlock1D(width, p.kernel_size)
        self.conv_out = MPConv1D(width, 2 * p.latent_dim, p.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, hidden, T)
        for level in self.down:
            for block in level.block:
                h = block(h).clamp(-self.clip_act, self.clip_act)
            if level.downsample is not None:
                h = level.downsample(h)  # (B, C, T // 2)
        h = self.mid(h).clamp(-self.clip_act, self.clip_act)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)  # (B, 2 * latent, T')


class Decoder1D(nn.Module):
    """Latent (B, latent_dim, T') -> standardised mel (B, data_dim, 2 T'); mirrors the encoder."""

    def __init__(self, p: VAEPreset) -> None:
        super().__init__()
        self.clip_act = p.clip_act
        self.learnable_gain = nn.Parameter(torch.zeros([]))
        width = p.hidden_dim * p.ch_mult[-1]
        self.conv_in = MPConv1D(p.latent_dim, width, p.kernel_size)
        self.mid = MidBlock1D(width, p.kernel_size)
        # up[i] mirrors encoder level i and runs coarse to fine; an encoder downsample after level
        # i is undone by an upsample after decoder level i + 1
        up_levels = {level + 1 for level in p.down_levels}
        levels: list[DecoderLevel] = []
        for level in reversed(range(len(p.ch_mult))):
            blocks = []
            for _ in range(p.num_res_blocks + 1):
                blocks.append(ResnetBlock1D(width, p.hidden_dim * p.ch_mult[level], p.kernel_size))
                width = p.hidden_dim * p.ch_mult[level]
            levels.insert(0, DecoderLevel(blocks, Upsample1D(width) if level in up_levels else None))
        self.up = nn.ModuleList(levels)
        self.conv_out = MPConv1D(width, p.data_dim, p.kernel_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z)).clamp(-self.clip_act, self.clip_act)  # (B, C, T')
        for level in reversed(self.up):
            for block in level.block:
                h = block(h).clamp(-self.clip_act, self.clip_act)
            if level.upsample is not None:
                h = level.upsample(h)  # (B, C, 2 T')
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)  # (B, data_dim, T)


class AudioVAE(nn.Module):
    """Log-mel <-> latent. ``encode(mel)`` -> (mean, std); ``decode(latent)`` -> mel.

    Built with random weights (upstream's init: standard normal raw kernels, zero gains); use
    :func:`load_vae` for a weight file or :meth:`reset_parameters` with a generator for seeded ones.
    """

    def __init__(self, preset: str | VAEPreset = "16k") -> None:
        super().__init__()
        self.preset = get_vae_preset(preset)
        mean, std = MEL_STATISTICS[self.preset.mel]
        self.register_buffer("data_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))  # (1, n_mels, 1)
        self.register_buffer("data_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))
        self.encoder = Encoder1D(self.preset)
        self.decoder = Decoder1D(self.preset)

    @property
    def latent_dim(self) -> int:
        return self.preset.latent_dim

    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        """Log-mel (B, n_mels, T) -> mean, std, each (B, latent_dim, T // 2)."""
        moments = self.encoder((mel - self.data_mean) / self.data_std)  # (B, 2 * latent, T')
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, latent_dim, T') -> log-mel (B, n_mels, 2 T')."""
        return self.decoder(latent) * self.data_std + self.data_mean

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw every raw kernel from N(0, 1), zero the output gains, restore the mel statistics."""
        for module in self.modules():
            if isinstance(module, MPConv1D):
                module.weight.normal_(generator=generator)
        self.encoder.learnable_gain.zero_()
        self.decoder.learnable_gain.zero_()
        mean, std = MEL_STATISTICS[self.preset.mel]
        self.data_mean.copy_(torch.tensor(mean).view(1, -1, 1))
        self.data_std.copy_(torch.tensor(std).view(1, -1, 1))


def load_vae(path: str | os.PathLike, preset: str | VAEPreset) -> AudioVAE:
    """Read an official-format VAE file (v1-16.pth / v1-44.pth or a tiny one) strictly.

    Returns the VAE on CPU in eval mode with gradients off, as MMAudio uses it (frozen).
    Raises weights.WeightFileError naming ``path`` if the file does not fit ``preset``.
    """
    state_dict = load_weight_file(path)
    with torch.device("meta"):
        vae = AudioVAE(preset)  # no time spent drawing weights the file replaces
    vae.to_empty(device="cpu")
    load_state_dict_strict(vae, state_dict, source=path)  # every parameter and buffer is in the file
    return vae.eval().requires_grad_(False)


def save_vae(vae: AudioVAE, path: str | os.PathLike) -> Path:
    """Write ``vae`` as upstream's VAE files are: one flat state dict (keys as in v1-16.pth)."""
    return save_weight_file({k: v.detach().cpu() for k, v in vae.state_dict().items()}, path)


def _check_pair(mel_converter: MelConverter, vae: AudioVAE) -> None:
    expected = get_mel_preset(vae.preset.mel)
    if mel_converter.preset != expected:
        raise ValueError(f"mel converter preset {mel_converter.preset} does not match the VAE's mel preset "
                         f"'{vae.preset.mel}' ({expected})")


def waveform_to_latent(waveform: torch.Tensor, mel_converter: MelConverter, vae: AudioVAE) -> DiagonalGaussian:
    """Waveform (B, L) -> mean, std each (B, T_latent, latent_dim), the layout feature memmaps store.

    Chains the mel converter and the encoder as upstream's feature extraction does. Call it under
    ``torch.inference_mode()`` for extraction; nothing here turns gradients off.
    """
    _check_pair(mel_converter, vae)
    mean, std = vae.encode(mel_converter(waveform))  # each (B, latent, T')
    return DiagonalGaussian(mean.transpose(1, 2), std.transpose(1, 2))


def latent_to_mel(latent: torch.Tensor, vae: AudioVAE) -> torch.Tensor:
    """Latent (B, T_latent, latent_dim), the flow network's layout -> log-mel (B, n_mels, 2 T_latent)."""
    if latent.ndim != 3 or latent.shape[-1] != vae.latent_dim:
        raise ValueError(f"latent_to_mel expects (B, T, {vae.latent_dim}), got {tuple(latent.shape)}")
    return vae.decode(latent.transpose(1, 2))
