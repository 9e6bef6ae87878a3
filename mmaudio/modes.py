"""The audio modes (16k, 44k): a few primary numbers per mode, every length derived from them.

This is the one table of per-mode facts. Feature shapes (:mod:`mmaudio.features`), clip lengths in
samples (extraction, encoders), the mel converter's rate and hop, the network's sequence lengths
and the sample rates media checks resample to are all computed here, so a mode can never carry a
latent length that disagrees with its sample rate. The two official modes (8 s clips):

    mode  latent_seq_len  clip_seq_len  sync_seq_len  text_seq_len  audio samples  latent_dim
    16k   250             64            192           77            128000         20
    44k   345             64            192           77            353280         40

The module imports nothing heavy (no torch): config validation and media checks use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class AudioMode(StrEnum):
    """``extract.mode`` and a network preset's ``mode``: the audio rate family of features and model."""

    K16 = "16k"
    K44 = "44k"


@dataclass(frozen=True)
class ModeSpec:
    """Primary numbers of one mode; everything else is a property."""

    mode: AudioMode
    sample_rate: int  # Hz, what every file is resampled to
    spectrogram_hop: int  # audio samples per mel frame
    latent_dim: int  # VAE latent channels
    duration_sec: float = 8.0  # what the model sees of each clip
    latent_downsample: int = 2  # mel frames per VAE latent frame
    clip_fps: int = 8  # CLIP frames per second
    sync_fps: int = 25  # Synchformer frames per second
    sync_frames_per_segment: int = 16
    sync_segment_step: int = 8  # frames between segment starts
    sync_downsample: int = 2  # Synchformer emits one feature per 2 input frames (8 per segment)
    text_seq_len: int = 77  # CLIP tokenizer context
    clip_dim: int = 1024  # CLIP image/text feature width
    sync_dim: int = 768  # Synchformer feature width

    @property
    def latent_seq_len(self) -> int:
        # ceil: the audio is padded up to a whole number of latent frames (345 at 44.1 kHz)
        return math.ceil(self.duration_sec * self.sample_rate / self.spectrogram_hop / self.latent_downsample)

    @property
    def num_audio_samples(self) -> int:
        """Samples that decode from ``latent_seq_len`` latents (>= duration * rate): the clip length."""
        return self.latent_seq_len * self.spectrogram_hop * self.latent_downsample

    @property
    def num_mel_frames(self) -> int:
        return self.latent_seq_len * self.latent_downsample

    @property
    def clip_seq_len(self) -> int:
        return int(self.duration_sec * self.clip_fps)

    @property
    def num_sync_segments(self) -> int:
        num_frames = self.duration_sec * self.sync_fps
        return int((num_frames - self.sync_frames_per_segment) // self.sync_segment_step + 1)

    @property
    def sync_features_per_segment(self) -> int:
        return self.sync_frames_per_segment // self.sync_downsample

    @property
    def sync_seq_len(self) -> int:
        return self.num_sync_segments * self.sync_features_per_segment

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Per-sample shape of the latent ``mean``/``std``: (latent_seq_len, latent_dim)."""
        return (self.latent_seq_len, self.latent_dim)

    @property
    def text_shape(self) -> tuple[int, int]:
        return (self.text_seq_len, self.clip_dim)

    @property
    def clip_shape(self) -> tuple[int, int]:
        return (self.clip_seq_len, self.clip_dim)

    @property
    def sync_shape(self) -> tuple[int, int]:
        return (self.sync_seq_len, self.sync_dim)


MODES: dict[AudioMode, ModeSpec] = {
    AudioMode.K16: ModeSpec(mode=AudioMode.K16, sample_rate=16_000, spectrogram_hop=256, latent_dim=20),
    AudioMode.K44: ModeSpec(mode=AudioMode.K44, sample_rate=44_100, spectrogram_hop=512, latent_dim=40),
}


def mode_spec(mode: str | AudioMode) -> ModeSpec:
    """The spec of ``mode`` ('16k' / '44k'); an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return MODES[AudioMode(mode)]
    except ValueError:
        raise KeyError(f"unknown audio mode {mode!r} (known: {[m.value for m in AudioMode]})") from None


def model_sample_rates() -> tuple[int, ...]:
    """Every rate some mode resamples files to (media checks refuse files too costly to resample)."""
    return tuple(spec.sample_rate for spec in MODES.values())
