"""VGGish (128-d, no PCA), the embedding behind av-benchmark's FD-VGG.

av-benchmark builds ``VGGish(postprocess=False)`` (av_bench/extraction_models.py:38) with torchvggish's
weights (``vggish-10086976.pth``, av_bench/vggish/vggish.py:53-55) and removes the ReLU after the last
linear layer to match audioldm_eval (vggish.py:19-21): the embedding is the raw output of
``embeddings.4``. Each clip is cut into non-overlapping 0.96 s examples, each embedded on its own,
and av-benchmark keeps all of them (an 8 s clip gives (8, 128); evaluate.py concatenates them).

Examples (av_bench/vggish/mel_features.py, numpy float64 throughout, float32 at the end):
frames of 400 samples (25 ms) every 160 (10 ms) with no padding and incomplete frames dropped
(lines 56-80, 118); a periodic Hann window (lines 102, 122); |rfft| over 512 points (line 124);
a 64-band HTK-mel matrix from 125 to 7500 Hz whose DC row is zero (lines 145-217); log(mel + 0.01)
(line 252); then examples of 96 frames every 96 frames, again dropping an incomplete tail (lines
290-296). Here the same float64 arithmetic runs in torch (batched, on the model's device), the
window and mel matrix come from numpy with upstream's formulas.

av-benchmark never uses VGGish's own resampler (resampy, mel_features.py:273-274): its clips are
already at 16 kHz from ``AudioDataset(sr=16000)``; :meth:`Vggish.extract` does the same (see
audio_frontend).

Weight file: a flat state dict, ``features.{0,3,6,8,11,13}`` and ``embeddings.{0,2,4}`` weights and
biases (tests/fixtures/keys/vggish.json). A state dict saved from torch.hub's VGGish also carries
``pproc.*`` (the PCA postprocessor); av-benchmark drops those (strict=False), and so does the loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmaudio.evaluation.extractors.audio_frontend import AV_BENCH_DURATION_SEC, prepare_av_bench_waveform
from mmaudio.evaluation.extractors.common import load_extractor, save_extractor
from mmaudio.evaluation.resolver import DEFAULT_EXT_DIR
from mmaudio.weights import WeightFileError, build_module, load_weight_file

OFFICIAL_FILE_NAME = "vggish-10086976.pth"
IGNORED_PREFIX = "pproc."  # PCA postprocessor of torch.hub's VGGish, unused with postprocess=False

SAMPLE_RATE = 16_000  # Hz
EMBEDDING_DIM = 128
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7_500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames
EXAMPLE_HOP_FRAMES = 96  # no overlap


@dataclass(frozen=True)
class VggishPreset:
    name: str
    # conv widths, "M" = 2x2 max pooling; the positions fix the state-dict indices (features.0, .3, ...)
    layers: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
    hidden_dim: int = 4096
    embedding_dim: int = EMBEDDING_DIM

    def __post_init__(self) -> None:
        if self.embedding_dim != EMBEDDING_DIM:
            raise ValueError(f"VGGish preset '{self.name}' breaks the feature contract: embedding_dim "
                             f"{self.embedding_dim}, must be {EMBEDDING_DIM}")
        if [v for v in self.layers if v == "M"] != ["M"] * 4 or self.layers[-1] != "M":
            raise ValueError(f"VGGish preset '{self.name}': layers must pool 4 times, last; got {self.layers}")

    @property
    def flat_dim(self) -> int:
        """Input width of embeddings.0: last conv width x 6 time x 4 mel cells (96 x 64 halved 4 times)."""
        last = [v for v in self.layers if v != "M"][-1]
        return int(last) * (EXAMPLE_FRAMES // 16) * (NUM_MEL_BINS // 16)


VGGISH_PRESETS: dict[str, VggishPreset] = {
    # vggish-10086976.pth: 72,141,184 parameters.
    "official": VggishPreset(name="official"),
    "tiny": VggishPreset(name="tiny", layers=(8, "M", 8, "M", 16, 16, "M", 16, 16, "M"), hidden_dim=32),
}


def get_vggish_preset(preset: str | VggishPreset) -> VggishPreset:
    if isinstance(preset, VggishPreset):
        return preset
    if preset not in VGGISH_PRESETS:
        raise KeyError(f"unknown VGGish preset '{preset}' (known: {sorted(VGGISH_PRESETS)})")
    return VGGISH_PRESETS[preset]


def _periodic_hann(length: int) -> np.ndarray:
    return 0.5 - (0.5 * np.cos(2 * np.pi / length * np.arange(length)))


def _hz_to_htk_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)


def htk_mel_matrix(num_mel_bins: int, num_spectrogram_bins: int, sample_rate: int,
                   lower_hz: float, upper_hz: float) -> np.ndarray:
    """(num_spectrogram_bins, num_mel_bins) float64 triangles on the HTK mel scale, DC row zeroed."""
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= {lower_hz} < {upper_hz} <= {nyquist}")
    bins_mel = _hz_to_htk_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))  # (F,)
    edges = np.linspace(_hz_to_htk_mel(lower_hz), _hz_to_htk_mel(upper_hz), num_mel_bins + 2)
    matrix = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lower, center, upper = edges[i:i + 3]
        rising = (bins_mel - lower) / (center - lower)
        falling = (upper - bins_mel) / (upper - center)
        matrix[:, i] = np.maximum(0.0, np.minimum(rising, falling))
    matrix[0, :] = 0.0  # the DC bin never contributes
    return matrix


def num_examples(num_samples: int) -> int:
    """0.96 s examples VGGish makes from ``num_samples`` at 16 kHz (128000 -> 8)."""
    if num_samples < WINDOW_SAMPLES:
        return 0
    frames = (num_samples - WINDOW_SAMPLES) // HOP_SAMPLES + 1
    return 0 if frames < EXAMPLE_FRAMES else (frames - EXAMPLE_FRAMES) // EXAMPLE_HOP_FRAMES + 1


def waveform_to_examples(wave: torch.Tensor) -> torch.Tensor:
    """(B, L) at 16 kHz -> (B, N, 96, 64) float32 log-mel examples, N = num_examples(L)."""
    if wave.ndim != 2:
        raise ValueError(f"VGGish expects a waveform batch (B, L), got shape {tuple(wave.shape)}")
    if num_examples(wave.shape[-1]) == 0:
        min_samples = WINDOW_SAMPLES + HOP_SAMPLES * (EXAMPLE_FRAMES - 1)
        raise ValueError(f"VGGish needs at least one 0.96 s example ({min_samples} samples at 16 kHz), "
                         f"got {wave.shape[-1]} samples")
    x = wave.to(torch.float64)
    window = torch.from_numpy(_periodic_hann(WINDOW_SAMPLES)).to(x.device)
    mel_matrix = htk_mel_matrix(NUM_MEL_BINS, FFT_LENGTH // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ)
    mel_matrix = torch.from_numpy(mel_matrix).to(x.device)
    frames = x.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES) * window  # (B, T, 400)
    magnitude = torch.fft.rfft(frames, n=FFT_LENGTH).abs()  # (B, T, 257)
    log_mel = torch.log(magnitude @ mel_matrix + LOG_OFFSET)  # (B, T, 64)
    examples = log_mel.unfold(1, EXAMPLE_FRAMES, EXAMPLE_HOP_FRAMES)  # (B, N, 64, 96)
    return examples.transpose(2, 3).to(torch.float32)  # (B, N, 96, 64)


def _make_features(layers: tuple[int | str, ...]) -> nn.Sequential:
    modules: list[nn.Module] = []
    in_channels = 1
    for v in layers:
        if v == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            in_channels = int(v)
    return nn.Sequential(*modules)


class Vggish(nn.Module):
    """Frozen VGGish without PCA: log-mel examples (N, 1, 96, 64) -> (N, 128) embeddings."""

    def __init__(self, preset: str | VggishPreset = "official") -> None:
        super().__init__()
        self.preset = p = get_vggish_preset(preset)
        self.features = _make_features(p.layers)
        # no ReLU after the last layer (av-benchmark follows audioldm_eval here)
        self.embeddings = nn.Sequential(
            nn.Linear(p.flat_dim, p.hidden_dim), nn.ReLU(),
            nn.Linear(p.hidden_dim, p.hidden_dim), nn.ReLU(),
            nn.Linear(p.hidden_dim, p.embedding_dim),
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Vggish:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.embeddings[0].weight.device

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) -> (N, 128)."""
        x = self.features(examples)  # (N, C, 6, 4)
        # flatten in (time, mel, channel) order, the layout of the TensorFlow original's weights
        x = x.permute(0, 2, 3, 1).flatten(1)  # (N, 6 * 4 * C)
        return self.embeddings(x)

    @torch.no_grad()
    def extract(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        duration_sec: float = AV_BENCH_DURATION_SEC,
    ) -> dict[str, torch.Tensor]:
        """Waveform(s) (T,), (B, T) or (B, C, T) at ``sample_rate`` -> ``{"embedding": (B, N, 128)}``.

        Prepared as av-benchmark's ``AudioDataset(sr=16000)`` does, then cut into N 0.96 s examples
        (N = 8 for an 8 s clip), each embedded separately.
        """
        x = prepare_av_bench_waveform(wave.to(self.device), sample_rate, SAMPLE_RATE, duration_sec)
        examples = waveform_to_examples(x)  # (B, N, 96, 64)
        b, n = examples.shape[:2]
        embedding = self(examples.flatten(0, 1)[:, None])  # (B * N, 128)
        return {"embedding": embedding.unflatten(0, (b, n))}


def build_vggish(
    preset: str | VggishPreset = "official",
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> Vggish:
    """A :class:`Vggish` with fresh weights (``device='meta'`` for key/shape checks only)."""
    return build_module(lambda: Vggish(preset), device=device, seed=seed)


def load_vggish(
    path: str | os.PathLike | None = None,
    preset: str | VggishPreset = "official",
    *,
    ext_dir: str | os.PathLike = DEFAULT_EXT_DIR,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> Vggish:
    """Build ``preset`` and load the flat state dict in ``path`` strictly (``pproc.*`` ignored).

    ``path=None`` resolves the official file as :func:`~mmaudio.evaluation.extractors.common.load_extractor` says.
    """
    return load_extractor(OFFICIAL_FILE_NAME, lambda: Vggish(preset), read=read_vggish_state_dict, path=path,
                          ext_dir=ext_dir, allow_download=allow_download, device=device)


def read_vggish_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat state dict in ``path`` without torch.hub's ``pproc.*`` (PCA) entries."""
    state_dict = {k: v for k, v in load_weight_file(path).items() if not k.startswith(IGNORED_PREFIX)}
    if not state_dict:
        raise WeightFileError(f"weight file {path} holds no VGGish weights (only '{IGNORED_PREFIX}*' entries)")
    return state_dict


def save_vggish(model: Vggish, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as one flat state dict, the layout of ``vggish-10086976.pth``."""
    return save_extractor(model, path)
