"""The learnable example set: many short, small clips whose event times are drawn at random per clip.

The format-variety files of :mod:`mmaudio.examples` are too few (10 videos) to learn anything from,
and their timelines are the same for every seed's scene kind. This set is what a tiny network can
learn audio-visual sync from on a CPU: ``train``/``val``/``test`` clip counts from params
(``examples.sync_clips``), every clip just over 8 s (what the model sees, plus the slack the index
stage wants), low resolution (``examples.sync_frame_size``) at 25 fps with 16 kHz mono audio, so
that decoding and resizing, which dominate extraction time on CPU, stay cheap.

Each clip's scene kind cycles flash, bounce, sweep (so every split holds all three) and its events
come from its own generator ``(seed, 2, split, index)``: only the video tells when a sound happens.
Ids are ``sync_<split>_<index:04d>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

SCENE_CYCLE = ("flash", "bounce", "sweep")
SPLITS = ("train", "val", "test")
SYNC_CLIP_SEC = 8.2
SYNC_FPS = Fraction(25)
SYNC_AUDIO_RATE = 16_000


@dataclass(frozen=True)
class SyncSetSpec:
    """How many clips per split, and their frame size (square, pixels)."""

    train: int = 0
    val: int = 0
    test: int = 0
    frame_size: int = 64

    def __post_init__(self) -> None:
        for split in SPLITS:
            n = getattr(self, split)
            if not isinstance(n, int) or n < 0 or n > 100_000:
                raise ValueError(f"examples.sync_clips.{split} must be an integer in [0, 100000], got {n!r}")
        if not 16 <= self.frame_size <= 1024 or self.frame_size % 2:
            raise ValueError(f"examples.sync_frame_size must be even and in [16, 1024], got {self.frame_size}")


@dataclass(frozen=True)
class SyncClip:
    id: str
    scene: str
    split: str
    key: tuple[int, int]  # (split number, index): with the seed, keys the clip's random generator


def sync_clips(spec: SyncSetSpec) -> list[SyncClip]:
    """Every clip of the set, split by split."""
    return [SyncClip(f"sync_{split}_{k:04d}", SCENE_CYCLE[k % len(SCENE_CYCLE)], split, (s, k))
            for s, split in enumerate(SPLITS) for k in range(getattr(spec, split))]
