"""Sequence lengths the flow network sees, derived from clip duration, sample rate and frame rates.

Every length is a property computed from the few primary numbers, so a mode can never carry a
latent length that disagrees with its sample rate. The two official modes (8 s clips):

    mode  latent_seq_len  clip_seq_len  sync_seq_len  text_seq_len  audio samples
    16k   250             64            192           77            128000
    44k   345             64            192           77            353280
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SequenceConfig:
    duration_sec: float
    sample_rate: int  # Hz
    spectrogram_hop: int  # audio samples per mel frame
    latent_downsample: int = 2  # mel frames per VAE latent frame
    clip_fps: int = 8  # CLIP frames per second
    sync_fps: int = 25  # Synchformer frames per second
    sync_frames_per_segment: int = 16
    sync_segment_step: int = 8  # frames between segment starts
    sync_downsample: int = 2  # Synchformer emits one feature per 2 input frames (8 per segment)
    text_seq_len: int = 77  # CLIP tokenizer context

    @property
    def latent_seq_len(self) -> int:
        # ceil: the audio is padded up to a whole number of latent frames (345 at 44.1 kHz)
        return math.ceil(self.duration_sec * self.sample_rate / self.spectrogram_hop / self.latent_downsample)

    @property
    def num_audio_samples(self) -> int:
        """Samples that decode from ``latent_seq_len`` latents (>= duration * rate)."""
        return self.latent_seq_len * self.spectrogram_hop * self.latent_downsample

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


SEQUENCE_CONFIGS: dict[str, SequenceConfig] = {
    "16k": SequenceConfig(duration_sec=8.0, sample_rate=16000, spectrogram_hop=256),
    "44k": SequenceConfig(duration_sec=8.0, sample_rate=44100, spectrogram_hop=512),
}


def get_sequence_config(mode: str) -> SequenceConfig:
    if mode not in SEQUENCE_CONFIGS:
        raise KeyError(f"unknown audio mode '{mode}' (known: {sorted(SEQUENCE_CONFIGS)})")
    return SEQUENCE_CONFIGS[mode]
