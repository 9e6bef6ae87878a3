"""PANNs Cnn14 at 16 kHz, the audio tagger behind av-benchmark's FD-PANN, KL-PANNS and ISC-PANNS.

av-benchmark builds ``Cnn14(features_list=["2048", "logits"], sample_rate=16000, window_size=512,
hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)`` (av_bench/extraction_models.py:25-37)
and loads ``Cnn14_16k_mAP=0.438.pth`` (av_bench/panns/models.py:247-252). Per clip it keeps the
2048-d embedding (its key ``"2048"``, ours ``"embedding"``) and the 527 AudioSet logits (``"logits"``).

Front end (torchlibrosa, av_bench/panns/models.py:184-215): the STFT is a pair of strided Conv1d
layers (periodic Hann window times the DFT's cosine / negated sine rows) over the waveform
reflect-padded by n_fft / 2 on each side; power = real^2 + imag^2; mel = power @ ``melW`` (librosa's
Slaney filterbank, 50-8000 Hz); 10 * log10(max(mel, 1e-10)), no reference shift (ref = 1), no top_db
clipping. Those three matrices are *parameters* in the official file (``spectrogram_extractor.stft.
conv_real.weight``, ``..conv_imag.weight``, ``logmel_extractor.melW``), so they are loaded, not
recomputed; a fresh model starts from the exact values.

Body (models.py:273-327, eval mode): BatchNorm over the 64 mel bins, six blocks of two 3x3
conv-BN-ReLU with 2x2 average pooling (none after the last), mean over mel, then max + mean over
time, fc1 + ReLU = embedding, fc_audioset = logits. An 8 s clip (128000 samples) gives 801 frames.

Weight file: ``{"model": state_dict}`` (the official nesting; other top-level entries are ignored),
with the key layout of tests/fixtures/keys/panns_cnn14_16k.json, including BatchNorm running stats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.encoders.mel import slaney_mel_filterbank
from mmaudio.evaluation.extractors.audio_frontend import AV_BENCH_DURATION_SEC, prepare_av_bench_waveform
from mmaudio.evaluation.extractors.common import load_extractor, save_extractor
from mmaudio.evaluation.resolver import DEFAULT_EXT_DIR
from mmaudio.weights import build_module, load_weight_file

OFFICIAL_FILE_NAME = "Cnn14_16k_mAP=0.438.pth"
WEIGHT_SUBKEY = "model"  # the official file nests the state dict under this key

EMBEDDING_DIM = 2048
NUM_CLASSES = 527  # AudioSet
_AMIN = 1e-10  # power floor before log10 (torchlibrosa's amin)


@dataclass(frozen=True)
class PannsPreset:
    name: str
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # conv_block1..6 widths
    sample_rate: int = 16_000  # Hz
    window_size: int = 512  # n_fft = window length, samples
    hop_size: int = 160  # samples (10 ms)
    mel_bins: int = 64
    fmin: float = 50.0  # Hz
    fmax: float = 8_000.0  # Hz
    embedding_dim: int = EMBEDDING_DIM
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        if len(self.channels) != 6:
            raise ValueError(f"PANNs preset '{self.name}': Cnn14 has 6 conv blocks, got channels {self.channels}")
        contract = (self.sample_rate, self.window_size, self.hop_size, self.mel_bins, self.embedding_dim,
                    self.num_classes)
        expected = (16_000, 512, 160, 64, EMBEDDING_DIM, NUM_CLASSES)
        if contract != expected:
            raise ValueError(
                f"PANNs preset '{self.name}' breaks the feature contract: (sample_rate, window_size, hop_size, "
                f"mel_bins, embedding_dim, num_classes) = {contract}, must be {expected}"
            )

    @property
    def n_freqs(self) -> int:
        return self.window_size // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """STFT frames of a ``num_samples`` waveform (centred frames: 128000 -> 801)."""
        return num_samples // self.hop_size + 1


PANNS_PRESETS: dict[str, PannsPreset] = {
    # Cnn14_16k_mAP=0.438: 81,033,231 parameters (263,168 of them the STFT, 16,448 the mel matrix).
    "official": PannsPreset(name="official"),
    # Same front end and output contract; narrow conv blocks (fc1 maps 32 -> 2048).
    "tiny": PannsPreset(name="tiny", channels=(4, 8, 8, 16, 16, 32)),
}


def get_panns_preset(preset: str | PannsPreset) -> PannsPreset:
    if isinstance(preset, PannsPreset):
        return preset
    if preset not in PANNS_PRESETS:
        raise KeyError(f"unknown PANNs preset '{preset}' (known: {sorted(PANNS_PRESETS)})")
    return PANNS_PRESETS[preset]


def dft_conv_weights(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The STFT conv kernels (n_fft // 2 + 1, 1, n_fft), float32: real and imaginary rows of the
    one-sided DFT, each multiplied by a periodic Hann window of length n_fft.

    Computed in numpy float64 the way torchlibrosa does (scipy's Hann on a linspace grid, the DFT
    matrix as integer powers of exp(-2 pi i / n)), so a fresh model holds bit for bit the matrices of
    the official file; an exact cos/sin table would differ from them by up to ~1.5e-8.
    """
    grid = np.linspace(-np.pi, np.pi, n_fft + 1)[:-1]
    window = 0.5 + 0.5 * np.cos(grid)  # (n_fft,) periodic Hann
    n = np.arange(n_fft)
    dft = np.power(np.exp(-2j * np.pi / n_fft), np.outer(n, n[: n_fft // 2 + 1]))  # (n_fft, F)
    kernel = (dft * window[:, None]).T  # (F, n_fft)
    real = torch.from_numpy(np.ascontiguousarray(kernel.real, dtype=np.float32))[:, None, :]
    imag = torch.from_numpy(np.ascontiguousarray(kernel.imag, dtype=np.float32))[:, None, :]
    return real, imag


class _ConvStft(nn.Module):
    """Centred STFT as two Conv1d layers (torchlibrosa's layout: ``conv_real``, ``conv_imag``)."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, kernel_size=n_fft, stride=hop_length, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, kernel_size=n_fft, stride=hop_length, bias=False)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) -> real, imag (B, F, T)."""
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")  # (B, 1, L + n_fft)
        return self.conv_real(x), self.conv_imag(x)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.stft = _ConvStft(n_fft, hop_length)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) -> power spectrogram (B, 1, T, F)."""
        real, imag = self.stft(wave)  # (B, F, T)
        return (real**2 + imag**2).transpose(1, 2)[:, None]


class _LogMel(nn.Module):
    def __init__(self, n_freqs: int, n_mels: int) -> None:
        super().__init__()
        self.melW = nn.Parameter(torch.empty(n_freqs, n_mels))  # (F, M), torchlibrosa's name

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, F) power -> (B, 1, T, M) decibels."""
        mel = torch.matmul(power, self.melW)
        return 10.0 * torch.log10(mel.clamp(min=_AMIN))  # ref = 1: no offset, top_db = None: no clip


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool) if pool > 1 else x


class Cnn14(nn.Module):
    """Frozen PANNs Cnn14 (16 kHz): waveform (B, L) -> 2048-d embedding and 527 AudioSet logits."""

    def __init__(self, preset: str | PannsPreset = "official") -> None:
        super().__init__()
        self.preset = p = get_panns_preset(preset)
        # attribute names give the official state-dict keys
        self.spectrogram_extractor = _Spectrogram(p.window_size, p.hop_size)
        self.logmel_extractor = _LogMel(p.n_freqs, p.mel_bins)
        self.bn0 = nn.BatchNorm2d(p.mel_bins)
        widths = (1, *p.channels)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(p.channels[-1], p.embedding_dim)
        self.fc_audioset = nn.Linear(p.embedding_dim, p.num_classes)
        self.reset_frontend()
        self.requires_grad_(False)
        self.eval()

    def reset_frontend(self) -> None:
        """Set the STFT and mel matrices to their defining values (the official file stores the same)."""
        p = self.preset
        stft = self.spectrogram_extractor.stft
        if stft.conv_real.weight.is_meta:
            return
        real, imag = dft_conv_weights(p.window_size)
        mel = slaney_mel_filterbank(p.sample_rate, p.window_size, p.mel_bins, p.fmin, p.fmax).T  # (F, M)
        with torch.no_grad():
            stft.conv_real.weight.copy_(real)
            stft.conv_imag.weight.copy_(imag)
            self.logmel_extractor.melW.copy_(mel)

    def train(self, mode: bool = True) -> Cnn14:
        # a frozen feature extractor: BatchNorm keeps its running statistics, dropout stays off
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.fc1.weight.device

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) at 16 kHz -> (B, 1, T, 64) log-mel in dB."""
        if wave.ndim != 2:
            raise ValueError(f"Cnn14 expects a waveform batch (B, L), got shape {tuple(wave.shape)}")
        if wave.shape[-1] <= self.preset.window_size // 2:
            raise ValueError(
                f"Cnn14 needs more than {self.preset.window_size // 2} samples (reflect padding), got {wave.shape[-1]}"
            )
        return self.logmel_extractor(self.spectrogram_extractor(wave))

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, L) at 16 kHz -> {"embedding": (B, 2048), "logits": (B, 527)}."""
        x = self.log_mel(wave)  # (B, 1, T, M)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < 5 else 1)  # (B, C, T', M')
        x = x.mean(dim=3)  # (B, C, T')
        x = x.amax(dim=2) + x.mean(dim=2)  # (B, C)
        embedding = F.relu(self.fc1(x))  # (B, 2048)
        return {"embedding": embedding, "logits": self.fc_audioset(embedding)}

    @torch.no_grad()
    def extract(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        duration_sec: float = AV_BENCH_DURATION_SEC,
    ) -> dict[str, torch.Tensor]:
        """Waveform(s) (T,), (B, T) or (B, C, T) at ``sample_rate`` -> av-benchmark's PANNs outputs.

        Prepared as av-benchmark's ``AudioDataset(sr=16000)`` does (mono, mean removed, torchaudio
        ``Resample`` defaults, cut to ``duration_sec``; see audio_frontend). Returns float32
        ``{"embedding": (B, 2048), "logits": (B, 527)}``.
        """
        x = prepare_av_bench_waveform(wave.to(self.device), sample_rate, self.preset.sample_rate, duration_sec)
        return self(x)


def build_panns(
    preset: str | PannsPreset = "official",
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> Cnn14:
    """A :class:`Cnn14` with fresh weights and the exact front end (``device='meta'``: shapes only).

    With ``seed``, BatchNorm statistics are drawn too (mean ~ N(0, 0.1), var ~ U(0.5, 1.5)), so that a
    seeded tiny model is not an identity at every BatchNorm.
    """
    model = build_module(lambda: Cnn14(preset), device=device, seed=seed)
    if seed is not None and torch.device(device).type != "meta":
        gen = torch.Generator().manual_seed(seed)  # its own generator: the global RNG stays untouched
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen, device="cpu"))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen, device="cpu"))
    return model


def load_panns(
    path: str | os.PathLike | None = None,
    preset: str | PannsPreset = "official",
    *,
    ext_dir: str | os.PathLike = DEFAULT_EXT_DIR,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> Cnn14:
    """Build ``preset`` and load ``path`` (``{"model": state_dict}``) strictly.

    ``path=None`` resolves the official file as :func:`~mmaudio.evaluation.extractors.common.load_extractor` says.
    """
    # every tensor, the front end's matrices included, comes from the file
    return load_extractor(OFFICIAL_FILE_NAME, lambda: Cnn14(preset), read=read_panns_state_dict, path=path,
                          ext_dir=ext_dir, allow_download=allow_download, device=device)


def read_panns_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict under ``"model"`` in ``path`` (other top-level entries are ignored)."""
    return load_weight_file(path, subkey=WEIGHT_SUBKEY)


def save_panns(model: Cnn14, path: str | os.PathLike) -> Path:
    """Write ``model`` as ``{"model": state_dict}``, the layout of the official file."""
    return save_extractor(model, path, subkey=WEIGHT_SUBKEY)
