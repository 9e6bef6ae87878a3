"""PaSST-S (AudioSet, SWA, mAP .476), the model behind av-benchmark's FD-PASST, KL-PASST and ISC-PASST.

av-benchmark calls hear21passt's ``get_basic_model(mode="all")`` (av_bench/extraction_models.py:42):
hear21passt/base.py:51-58 builds ``AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320,
n_fft=1024, ..., fmin=0.0, fmax=None, fmax_aug_range=2000)`` and the ``passt_s_swa_p16_128_ap476``
network (patch 16, stride 10, 12 blocks of width 768, input 128 x 998), whose pretrained file is
``passt-s-f128-p16-s10-ap.476-swa.pt`` (hear21passt/models/passt.py, ``default_cfgs``). The wrapper's
output ``cat([logits, features])`` (hear21passt/wrapper.py:35-47) is split back by av-benchmark into
527 logits and the 768-d embedding (av_bench/extract.py:171-175).

Input (extract.py:159-169): the clip at 32 kHz cut to 8 s (``AudioDataset``), then zero-padded to the
model's 10 s window, 320000 samples.

Front end (hear21passt/models/preprocess.py:53-83, eval mode, no masking, no frequency jitter):
pre-emphasis y[n] = x[n+1] - 0.97 x[n] (a 2-tap conv, one sample shorter); ``torch.stft`` with
n_fft 1024, hop 320, a *symmetric* Hann window of 800 samples, centred with reflect padding -> 1000
frames; power; Kaldi-style triangular mel banks (``torchaudio.compliance.kaldi.get_mel_banks``, 128
bins, 0 to 15000 Hz = 16000 - 2000 // 2, HTK mel scale, no area normalisation, Nyquist column
zero); log(mel + 1e-5); (x + 4.5) / 5. The mel banks are recomputed here with the same float32
operations (tests compare them with torchaudio's bit for bit).

Network (hear21passt/models/passt.py ``PaSST``): 16x16 patches every 10 bins -> a 12 x 99 grid;
separate frequency and time position embeddings (the time one cut to the grid); class and distillation
tokens with their own position embedding; pre-norm ViT blocks (LayerNorm eps 1e-6, exact GELU);
final LayerNorm; embedding = mean of the two token outputs; logits = ``head`` (LayerNorm eps 1e-5,
then Linear) of the embedding. ``head_dist`` is in the checkpoint but unused in eval.

Weight file: the network's flat state dict (tests/fixtures/keys/passt.json); the front end has no
weights. Like upstream's ``checkpoint_filter_fn``, a file that nests it under ``"model"`` is read too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.encoders.motionformer import Mlp, multi_head_attention
from mmaudio.evaluation.extractors.audio_frontend import (
    AV_BENCH_DURATION_SEC,
    pad_or_cut,
    prepare_av_bench_waveform,
)
from mmaudio.evaluation.extractors.common import load_extractor, save_extractor
from mmaudio.evaluation.resolver import DEFAULT_EXT_DIR
from mmaudio.weights import WeightFileError, build_module, load_weight_file

OFFICIAL_FILE_NAME = "passt-s-f128-p16-s10-ap.476-swa.pt"

EMBEDDING_DIM = 768
NUM_CLASSES = 527  # AudioSet
SAMPLE_RATE = 32_000  # Hz
WINDOW_SAMPLES = 320_000  # the model's 10 s input window (av_bench/extract.py:166-169)

# AugmentMelSTFT as hear21passt's get_basic_model configures it, in eval mode
N_MELS = 128
N_FFT = 1024
WIN_LENGTH = 800
HOP_LENGTH = 320
FMIN = 0.0  # Hz
FMAX = SAMPLE_RATE // 2 - 2000 // 2  # Hz: fmax=None becomes sr / 2 - fmax_aug_range / 2 = 15000
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NORM_SHIFT = 4.5  # (log_mel + 4.5) / 5: PaSST's "fast normalisation"
NORM_SCALE = 5.0


@dataclass(frozen=True)
class PasstPreset:
    name: str
    embed_dim: int = EMBEDDING_DIM
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    stride: int = 10  # patch stride over both frequency and time
    input_fdim: int = N_MELS  # mel bins the position embeddings were sized for
    input_tdim: int = 998  # frames the time position embedding was sized for
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        contract = (self.embed_dim, self.num_classes, self.input_fdim)
        if contract != (EMBEDDING_DIM, NUM_CLASSES, N_MELS):
            raise ValueError(
                f"PaSST preset '{self.name}' breaks the feature contract: (embed_dim, num_classes, input_fdim) "
                f"= {contract}, must be {(EMBEDDING_DIM, NUM_CLASSES, N_MELS)}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"PaSST preset '{self.name}': embed_dim {self.embed_dim} not divisible by "
                             f"num_heads {self.num_heads}")
        frames = WINDOW_SAMPLES // HOP_LENGTH  # 1000 frames from 320000 samples (one less after pre-emphasis)
        if (frames - self.patch_size) // self.stride + 1 > self.grid_size[1]:
            raise ValueError(f"PaSST preset '{self.name}': a 10 s window gives more time patches than the "
                             f"time position embedding ({self.grid_size[1]}) covers")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(frequency, time) sizes of the position embeddings (upstream: img_size // stride)."""
        return self.input_fdim // self.stride, self.input_tdim // self.stride


PASST_PRESETS: dict[str, PasstPreset] = {
    # passt_s_swa_p16_128_ap476: 86,153,758 parameters.
    "official": PasstPreset(name="official"),
    # Same front end and outputs; non-overlapping patches (8 x 62 grid), one narrow-MLP block.
    "tiny": PasstPreset(name="tiny", depth=1, num_heads=2, mlp_ratio=1.0, stride=16),
}


def get_passt_preset(preset: str | PasstPreset) -> PasstPreset:
    if isinstance(preset, PasstPreset):
        return preset
    if preset not in PASST_PRESETS:
        raise KeyError(f"unknown PaSST preset '{preset}' (known: {sorted(PASST_PRESETS)})")
    return PASST_PRESETS[preset]


def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: float, low_hz: float, high_hz: float) -> torch.Tensor:
    """(num_bins, n_fft // 2) float32 Kaldi triangular mel filters (HTK mel scale, peak 1, no VTLN),
    with the float32 operations of ``torchaudio.compliance.kaldi.get_mel_banks``."""
    nyquist = 0.5 * sample_rate
    if not (0.0 <= low_hz < nyquist and 0.0 < high_hz <= nyquist and low_hz < high_hz):
        raise ValueError(f"mel band edges must satisfy 0 <= {low_hz} < {high_hz} <= {nyquist}")
    mel_low = 1127.0 * math.log(1.0 + low_hz / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_hz / 700.0)
    mel_delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=torch.float32)[:, None]  # (M, 1)
    left = mel_low + index * mel_delta
    center = mel_low + (index + 1.0) * mel_delta
    right = mel_low + (index + 2.0) * mel_delta
    bin_hz = (sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32)  # (F - 1,)
    mel = (1127.0 * (1.0 + bin_hz / 700.0).log())[None, :]  # (1, F - 1)
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def passt_log_mel(wave: torch.Tensor) -> torch.Tensor:
    """(B, L) at 32 kHz -> (B, 128, 1 + (L - 1) // 320) normalised log-mel, PaSST's eval front end."""
    if wave.ndim != 2:
        raise ValueError(f"PaSST expects a waveform batch (B, L), got shape {tuple(wave.shape)}")
    coefficients = torch.tensor([[[-PREEMPHASIS, 1.0]]], dtype=wave.dtype, device=wave.device)
    x = F.conv1d(wave[:, None], coefficients)[:, 0]  # (B, L - 1): x[n + 1] - 0.97 x[n]
    window = torch.hann_window(WIN_LENGTH, periodic=False, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(x, N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window, center=True,
                      normalized=False, return_complex=True)  # (B, F, T), reflect-padded
    power = torch.view_as_real(spec).pow(2).sum(-1)  # (B, F, T)
    banks = kaldi_mel_banks(N_MELS, N_FFT, SAMPLE_RATE, FMIN, FMAX)
    banks = F.pad(banks, (0, 1)).to(device=wave.device, dtype=wave.dtype)  # (M, F): Nyquist bin gets 0
    mel = torch.matmul(banks, power)  # (B, M, T)
    return ((mel + LOG_OFFSET).log() + NORM_SHIFT) / NORM_SCALE


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, stride: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, D, F', T')


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, N, D)
        return self.proj(multi_head_attention(q, k, v, self.num_heads))  # scale 1 / sqrt(Dh) as upstream


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # fc1, GELU, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Passt(nn.Module):
    """Frozen PaSST: waveform (B, 320000) at 32 kHz -> 768-d embedding and 527 AudioSet logits."""

    def __init__(self, preset: str | PasstPreset = "official") -> None:
        super().__init__()
        self.preset = p = get_passt_preset(preset)
        d = p.embed_dim
        freq_grid, time_grid = p.grid_size
        # attribute names and registration order give the checkpoint's keys
        self.patch_embed = _PatchEmbed(p.patch_size, p.stride, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, d))  # class and distillation tokens
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, d, freq_grid, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, d, 1, time_grid))
        self.blocks = nn.Sequential(*[_Block(d, p.num_heads, p.mlp_ratio) for _ in range(p.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, p.num_classes))
        self.head_dist = nn.Linear(d, p.num_classes)  # in the checkpoint, unused at inference
        if not self.cls_token.is_meta:
            for param in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed,
                          self.time_new_pos_embed):
                nn.init.trunc_normal_(param, std=0.02)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Passt:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.cls_token.device

    def forward_mel(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 128, T) normalised log-mel -> {"embedding": (B, 768), "logits": (B, 527)}."""
        x = self.patch_embed(mel[:, None])  # (B, D, F', T')
        time_pos = self.time_new_pos_embed
        if x.shape[-1] > time_pos.shape[-1]:
            raise ValueError(f"PaSST input has {x.shape[-1]} time patches, more than the {time_pos.shape[-1]} "
                             f"its position embedding covers (at most {WINDOW_SAMPLES} samples)")
        x = x + time_pos[..., : x.shape[-1]] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)  # (B, F' * T', D), frequency-major
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat([cls, dist, x], dim=1)))  # (B, 2 + N, D)
        embedding = (x[:, 0] + x[:, 1]) / 2
        return {"embedding": embedding, "logits": self.head(embedding)}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, L <= 320000) at 32 kHz -> {"embedding": (B, 768), "logits": (B, 527)}."""
        return self.forward_mel(passt_log_mel(wave))

    @torch.no_grad()
    def extract(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        duration_sec: float = AV_BENCH_DURATION_SEC,
    ) -> dict[str, torch.Tensor]:
        """Waveform(s) (T,), (B, T) or (B, C, T) at ``sample_rate`` -> av-benchmark's PaSST outputs.

        Prepared as ``AudioDataset(sr=32000)`` does (see audio_frontend), then zero-padded (or cut) to
        the 10 s window. Returns float32 ``{"embedding": (B, 768), "logits": (B, 527)}``.
        """
        x = prepare_av_bench_waveform(wave.to(self.device), sample_rate, SAMPLE_RATE, duration_sec)
        return self(pad_or_cut(x, WINDOW_SAMPLES))


def build_passt(
    preset: str | PasstPreset = "official",
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> Passt:
    """A :class:`Passt` with fresh weights (``device='meta'`` for key/shape checks only)."""
    return build_module(lambda: Passt(preset), device=device, seed=seed)


def read_passt_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network state dict in ``path``: flat, or nested under ``"model"`` (both read upstream)."""
    try:
        return load_weight_file(path)
    except WeightFileError as flat_error:
        try:
            return load_weight_file(path, subkey="model")
        except WeightFileError:
            raise flat_error from None


def load_passt(
    path: str | os.PathLike | None = None,
    preset: str | PasstPreset = "official",
    *,
    ext_dir: str | os.PathLike = DEFAULT_EXT_DIR,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> Passt:
    """Build ``preset`` and load ``path`` strictly.

    ``path=None`` resolves the official file as :func:`~mmaudio.evaluation.extractors.common.load_extractor` says.
    """
    return load_extractor(OFFICIAL_FILE_NAME, lambda: Passt(preset), read=read_passt_state_dict, path=path,
                          ext_dir=ext_dir, allow_download=allow_download, device=device)


def save_passt(model: Passt, path: str | os.PathLike) -> Path:
    """Write ``model``'s network weights as one flat state dict (the checkpoint's layout)."""
    return save_extractor(model, path)
