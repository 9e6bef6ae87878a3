"""What lets the evaluation see audio-visual sync: a shuffled-video control and marked spectrograms.

The control: the trained network samples each clip with ANOTHER clip's video features (CLIP and
Synchformer) of the same kind (same text features, so the same scene and caption), so only the timing
the video carries changes. If onsets still land on the clip's own events, the timing did not come
from the video; a network that follows the video scores well only with its own clip's features.

Spectrograms: a log-mel image per sample with the clip's known event times drawn on it (red ticks at
the top) and the detected onsets (white ticks at the bottom), written as PNG without any imaging
library (zlib + the PNG chunk layout).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mmaudio.features import FeatureSet

VIDEO_KEYS = ("clip_features", "sync_features")


def same_kind_derangement(text_features: torch.Tensor) -> list[int]:
    """For each row, another row with identical text features (the next one in row order, cyclically);
    a row alone in its kind takes the next row of the set. Rows (N, ...) -> partner index per row."""
    n = text_features.shape[0]
    if n < 2:
        raise ValueError("the shuffled-video control needs at least 2 rows")
    flat = text_features.reshape(n, -1)
    groups: dict[bytes, list[int]] = {}
    for i in range(n):
        groups.setdefault(flat[i].numpy().tobytes(), []).append(i)
    partner = [0] * n
    for rows in groups.values():
        for j, r in enumerate(rows):
            partner[r] = rows[(j + 1) % len(rows)] if len(rows) > 1 else (r + 1) % n
    return partner


class ShuffledVideo:
    """A video feature set whose row i carries row ``partner[i]``'s video features (the rest its own).

    Has what :func:`mmaudio.evaluation.sampling.sample_feature_set` reads: ``ids``, ``kind``, ``len``
    and ``rows``.
    """

    def __init__(self, features: FeatureSet, partner: list[int] | None = None):
        if features.kind != "video":
            raise ValueError(f"{features.path}: the shuffled-video control needs a video feature set")
        self.features = features
        self.partner = partner if partner is not None else same_kind_derangement(
            features.rows(torch.arange(len(features)))["text_features"])
        if len(self.partner) != len(features):
            raise ValueError(f"partner list has {len(self.partner)} rows, the feature set {len(features)}")

    @property
    def ids(self):
        return self.features.ids

    @property
    def kind(self) -> str:
        return self.features.kind

    def __len__(self) -> int:
        return len(self.features)

    def rows(self, idx: torch.Tensor):
        data = self.features.rows(idx)
        other = self.features.rows(torch.tensor([self.partner[int(i)] for i in idx]))
        for key in VIDEO_KEYS:
            data[key] = other[key]
        return data


# -- spectrogram images ----------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (8-bit RGB, no filtering)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_png expects (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b"")


def _colormap(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> dark blue .. yellow (H, W, 3) uint8."""
    x = np.clip(x, 0, 1)[..., None]
    low, mid, high = np.array([20, 10, 60]), np.array([190, 50, 110]), np.array([250, 230, 80])
    rgb = np.where(x < 0.5, low + (mid - low) * (x / 0.5), mid + (high - mid) * ((x - 0.5) / 0.5))
    return rgb.astype(np.uint8)


def spectrogram_image(
    wave: torch.Tensor, sample_rate: int, events: np.ndarray | None = None, onsets: np.ndarray | None = None,
    *, px_per_sec: int = 100, height: int = 128,
) -> np.ndarray:
    """(height, px_per_sec * seconds, 3) uint8 log-mel image; red ticks (top fifth) at ``events``,
    white ticks (bottom fifth) at ``onsets`` (seconds)."""
    import torchaudio

    hop = sample_rate // px_per_sec
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=4 * hop, hop_length=hop, n_mels=height)(wave.float())
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    db = (db - (db.max() - 80)).clamp(min=0) / 80  # 80 dB range under the peak
    img = _colormap(db.flip(0).numpy())  # low frequencies at the bottom
    width = img.shape[1]
    for times, color, rows in ((events, (255, 40, 40), slice(0, height // 5)),
                               (onsets, (255, 255, 255), slice(height - height // 5, height))):
        for t in [] if times is None else np.asarray(times):
            x = int(round(float(t) * sample_rate / hop))
            if 0 <= x < width:
                img[rows, max(0, x - 1) : x + 1] = color
    return img
