"""Deterministic example media: short videos whose sounds coincide with visual events.

Three scenes, each with a known list of event times (written to ``events.tsv`` so that sync metrics
can be checked against ground truth):

- ``flash``: the screen flashes white; a sharp click sounds on every flash.
- ``bounce``: a ball falls and bounces; a thud sounds at each floor impact.
- ``sweep``: a square glides left and right; a tone's pitch follows its horizontal position
  (events are the turning points).

The files vary what real datasets vary: container and codec, frame rate, resolution and aspect
ratio, audio rate, channel count and duration. Audio-only files (flac, wav) carry the same sound
kinds. Everything is drawn from ``numpy.random.default_rng(seed)``; encoders run single-threaded
with bit-exact flags so the bytes do not depend on the machine's core count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmaudio.config import Params
from mmaudio.paths import clear_dir
from mmaudio.sync_examples import SYNC_AUDIO_RATE, SYNC_CLIP_SEC, SYNC_FPS, SyncSetSpec, sync_clips
from mmaudio.tables import write_tsv

Scene = str  # "flash" | "bounce" | "sweep"


@dataclass(frozen=True)
class VideoRecipe:
    id: str
    scene: Scene
    container: str  # file suffix: mp4, mkv, webm
    video_codec: str
    audio_codec: str
    fps: Fraction
    width: int
    height: int
    sample_rate: int
    channels: int
    duration_sec: float
    split: str


@dataclass(frozen=True)
class AudioRecipe:
    id: str
    scene: Scene
    suffix: str  # flac | wav
    sample_rate: int
    channels: int
    duration_sec: float


VIDEOS: tuple[VideoRecipe, ...] = (
    VideoRecipe("flash_000", "flash", "mp4", "libx264", "aac", Fraction(25), 320, 240, 16000, 1, 10.0, "train"),
    VideoRecipe("bounce_000", "bounce", "mp4", "mpeg4", "aac", Fraction(30), 256, 144, 44100, 2, 12.5, "train"),
    VideoRecipe("sweep_000", "sweep", "mkv", "libx264", "flac", Fraction(24), 180, 320, 22050, 1, 8.5, "train"),
    VideoRecipe("flash_001", "flash", "webm", "libvpx-vp9", "libopus", Fraction(30000, 1001), 200, 200, 48000, 2, 20.0, "train"),
    VideoRecipe("bounce_001", "bounce", "mp4", "libx264", "aac", Fraction(30000, 1001), 320, 180, 48000, 1, 45.0, "train"),
    VideoRecipe("sweep_001", "sweep", "mp4", "mpeg4", "aac", Fraction(25), 176, 144, 16000, 2, 9.0, "train"),
    VideoRecipe("flash_002", "flash", "mkv", "mpeg4", "aac", Fraction(30), 240, 136, 22050, 1, 11.0, "val"),
    VideoRecipe("bounce_002", "bounce", "webm", "libvpx", "libopus", Fraction(24), 192, 256, 48000, 1, 9.5, "val"),
    VideoRecipe("sweep_002", "sweep", "mp4", "libx264", "aac", Fraction(30), 288, 160, 44100, 2, 14.0, "test"),
    VideoRecipe("flash_003", "flash", "mp4", "libx264", "aac", Fraction(24), 160, 160, 44100, 1, 8.6, "test"),
)

AUDIOS: tuple[AudioRecipe, ...] = (
    AudioRecipe("clicks_000", "flash", "flac", 16000, 1, 12.0),
    AudioRecipe("thuds_000", "bounce", "wav", 44100, 2, 50.0),
    AudioRecipe("tone_000", "sweep", "flac", 48000, 2, 30.0),
    AudioRecipe("clicks_001", "flash", "wav", 22050, 1, 9.0),
    AudioRecipe("thuds_001", "bounce", "flac", 16000, 1, 6.0),  # shorter than 8.1 s: partition skips it
)

CAPTIONS: dict[Scene, str] = {
    "flash": "a white light flashes on a dark screen with a sharp click at every flash",
    "bounce": "a ball drops and bounces on the floor, thudding at each impact",
    "sweep": "a square glides back and forth while a tone rises and falls with its position",
}
AUDIO_CAPTIONS: dict[Scene, str] = {
    "flash": "sharp clicks at irregular intervals",
    "bounce": "a bouncing ball thuds on a hard floor, the bounces getting quicker",
    "sweep": "a pure tone slowly rising and falling in pitch",
}


# ----------------------------------------------------------------------------------------------
# Event timelines


def flash_events(rng: np.random.Generator, duration_sec: float) -> np.ndarray:
    """Flash/click times (s): gaps of 0.4-1.6 s, none in the last 0.2 s."""
    times, t = [], float(rng.uniform(0.2, 0.8))
    while t < duration_sec - 0.2:
        times.append(t)
        t += float(rng.uniform(0.4, 1.6))
    return np.asarray(times)


@dataclass(frozen=True)
class BouncePath:
    """A ball dropped from height 1 repeatedly; restitution shrinks each bounce."""

    drops: tuple[float, ...]  # start time of each drop
    restitution: float
    gravity: float = 9.0  # height units / s^2; a drop from 1 takes sqrt(2/9) = 0.47 s

    def height(self, t: np.ndarray) -> np.ndarray:
        h = np.zeros_like(t)
        for i, start in enumerate(self.drops):
            end = self.drops[i + 1] if i + 1 < len(self.drops) else np.inf
            m = (t >= start) & (t < end)
            h[m] = self._height_since_drop(t[m] - start)
        return h

    def _height_since_drop(self, tau: np.ndarray) -> np.ndarray:
        h = np.zeros_like(tau)
        t_fall = np.sqrt(2.0 / self.gravity)
        first = tau < t_fall
        h[first] = 1.0 - 0.5 * self.gravity * tau[first] ** 2
        t0, v = t_fall, self.gravity * t_fall * self.restitution
        while v > 0.3:
            dur = 2 * v / self.gravity
            m = (tau >= t0) & (tau < t0 + dur)
            s = tau[m] - t0
            h[m] = v * s - 0.5 * self.gravity * s**2
            t0, v = t0 + dur, v * self.restitution
        return h

    def impacts(self, duration_sec: float) -> np.ndarray:
        out = []
        t_fall = np.sqrt(2.0 / self.gravity)
        for i, start in enumerate(self.drops):
            end = self.drops[i + 1] if i + 1 < len(self.drops) else duration_sec
            t, v = start + t_fall, self.gravity * t_fall
            while t < end and v > 0.3 / self.restitution:
                out.append(t)
                v *= self.restitution
                t += 2 * v / self.gravity
        return np.asarray([t for t in out if t < duration_sec - 0.1])


def bounce_path(rng: np.random.Generator, duration_sec: float) -> BouncePath:
    restitution = float(rng.uniform(0.6, 0.75))
    drops, t = [], float(rng.uniform(0.0, 0.5))
    while t < duration_sec:
        drops.append(t)
        t += float(rng.uniform(2.5, 3.5))
    return BouncePath(tuple(drops), restitution)


def sweep_position(t: np.ndarray, period_sec: float, phase: float) -> np.ndarray:
    """Horizontal position in [0, 1] of the gliding square (a sine)."""
    return 0.5 + 0.5 * np.sin(2 * np.pi * t / period_sec + phase)


def sweep_events(duration_sec: float, period_sec: float, phase: float) -> np.ndarray:
    """Turning points: where the sine peaks or troughs."""
    k = np.arange(-2, int(2 * duration_sec / period_sec) + 3)
    t = (np.pi / 2 + np.pi * k - phase) * period_sec / (2 * np.pi)
    return t[(t >= 0) & (t < duration_sec)]


@dataclass(frozen=True)
class Timeline:
    """Everything needed to render one example consistently in picture and sound."""

    scene: Scene
    duration_sec: float
    events: np.ndarray
    bounce: BouncePath | None = None
    sweep_period_sec: float = 0.0
    sweep_phase: float = 0.0
    hue: tuple[int, int, int] = (255, 255, 255)


def make_timeline(scene: Scene, rng: np.random.Generator, duration_sec: float) -> Timeline:
    hue = tuple(int(x) for x in rng.integers(120, 256, size=3))
    if scene == "flash":
        return Timeline(scene, duration_sec, flash_events(rng, duration_sec), hue=hue)
    if scene == "bounce":
        path = bounce_path(rng, duration_sec)
        return Timeline(scene, duration_sec, path.impacts(duration_sec), bounce=path, hue=hue)
    if scene == "sweep":
        period, phase = float(rng.uniform(2.0, 4.0)), float(rng.uniform(0, 2 * np.pi))
        return Timeline(
            scene, duration_sec, sweep_events(duration_sec, period, phase), sweep_period_sec=period, sweep_phase=phase, hue=hue
        )
    raise ValueError(f"unknown scene {scene!r}")


# ----------------------------------------------------------------------------------------------
# Sound


def render_audio(tl: Timeline, sample_rate: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """(channels, n) float32 in [-1, 1]."""
    n = int(round(tl.duration_sec * sample_rate))
    t = np.arange(n) / sample_rate
    mono = 0.003 * rng.standard_normal(n)  # a faint noise floor, as real recordings have
    if tl.scene == "flash":
        click = _click(sample_rate, rng)
        for e in tl.events:
            _add_at(mono, click, int(round(e * sample_rate)))
    elif tl.scene == "bounce":
        for e in tl.events:
            _add_at(mono, _thud(sample_rate, rng), int(round(e * sample_rate)))
    else:
        freq = 220.0 + 660.0 * sweep_position(t, tl.sweep_period_sec, tl.sweep_phase)  # Hz
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate
        mono += 0.4 * np.sin(phase) + 0.1 * np.sin(2 * phase)
    mono = np.clip(mono, -1.0, 1.0)
    gains = [1.0] if channels == 1 else np.linspace(0.8, 1.0, channels)
    return np.stack([g * mono for g in gains]).astype(np.float32)


def _click(sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.012 * sr)
    env = np.exp(-np.arange(n) / (0.002 * sr))
    return 0.8 * env * rng.uniform(-1, 1, n)


def _thud(sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.15 * sr)
    t = np.arange(n) / sr
    env = np.exp(-t / 0.035)
    body = np.sin(2 * np.pi * (90 + 60 * np.exp(-t / 0.02)) * t)
    return 0.7 * env * (0.8 * body + 0.2 * rng.uniform(-1, 1, n))


def _add_at(buf: np.ndarray, sound: np.ndarray, start: int) -> None:
    end = min(len(buf), start + len(sound))
    if start < end:
        buf[start:end] += sound[: end - start]


# ----------------------------------------------------------------------------------------------
# Picture


def render_frame(tl: Timeline, t: float, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 frame at time ``t``."""
    img = np.full((height, width, 3), 24, dtype=np.uint8)
    img[..., 2] = 40  # a dark blue background
    hue = np.asarray(tl.hue, dtype=np.uint8)
    if tl.scene == "flash":
        # Lit for 80 ms from each event: at least two frames at 25 fps.
        if np.any((t >= tl.events) & (t < tl.events + 0.08)):
            img[:] = 250
        cx, cy, r = width // 2, height // 2, max(4, min(width, height) // 10)
        img[cy - r : cy + r, cx - r : cx + r] = hue
    elif tl.scene == "bounce":
        assert tl.bounce is not None
        h = float(tl.bounce.height(np.asarray([t]))[0])
        r = max(4, min(width, height) // 12)
        floor = height - 4
        img[floor:, :] = 160
        cy = int(floor - r - h * (floor - 2 * r - 2))
        yy, xx = np.ogrid[:height, :width]
        img[(yy - cy) ** 2 + (xx - width // 2) ** 2 <= r * r] = hue
    else:
        x = float(sweep_position(np.asarray([t]), tl.sweep_period_sec, tl.sweep_phase)[0])
        s = max(4, min(width, height) // 8)
        cx = int(s + x * (width - 2 * s))
        cy = height // 2
        img[cy - s // 2 : cy + s // 2, cx - s // 2 : cx + s // 2] = hue
    return img


# ----------------------------------------------------------------------------------------------
# Encoding


_BITEXACT = {"fflags": "+bitexact"}


def _codec_opts(codec: str) -> dict[str, str]:
    opts = {"flags": "+bitexact"}
    if codec == "libx264":
        # mbtree off: with x264's macroblock tree on, the stream of these small pictures depended on what
        # the heap held (the same pixels gave other streams from one process to the next, up to 20 of the
        # 128 sync videos; glibc's MALLOC_PERTURB_ 1 vs 255 changed 34). Off, none does (tests/test_examples_bytes.py).
        opts.update(preset="veryfast", crf="23", threads="1", **{"x264-params": "mbtree=0"})
    elif codec.startswith("libvpx"):
        opts.update(deadline="realtime", **{"cpu-used": "8"}, threads="1", crf="32", b="0")
    elif codec == "mpeg4":
        opts.update(qscale="4")
    return opts


def _audio_format(codec: str) -> str:
    return {"aac": "fltp", "libopus": "flt", "flac": "s16", "pcm_s16le": "s16"}[codec]


def _audio_frames(samples: np.ndarray, rate: int, codec: str, frame_size: int):
    """Yield av.AudioFrames of ``frame_size`` samples in the codec's sample format."""
    fmt = _audio_format(codec)
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    n = samples.shape[1]
    for start in range(0, n, frame_size):
        chunk = samples[:, start : start + frame_size]
        if fmt == "s16":
            data = (np.clip(chunk, -1, 1) * 32767).round().astype(np.int16).T.reshape(1, -1)
        elif fmt == "flt":
            data = np.ascontiguousarray(chunk.T.reshape(1, -1), dtype=np.float32)
        else:
            data = np.ascontiguousarray(chunk, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        yield frame


def _add_audio_stream(container, codec: str, rate: int, channels: int):
    stream = container.add_stream(codec, rate=rate, options=_codec_opts(codec))
    stream.layout = "mono" if channels == 1 else "stereo"
    stream.format = _audio_format(codec)
    stream.codec_context.thread_count = 1
    return stream


def write_video(path: Path, recipe: VideoRecipe, tl: Timeline, audio: np.ndarray) -> None:
    with av.open(str(path), mode="w", options=_BITEXACT) as c:
        vs = c.add_stream(recipe.video_codec, rate=recipe.fps, options=_codec_opts(recipe.video_codec))
        vs.width, vs.height, vs.pix_fmt = recipe.width, recipe.height, "yuv420p"
        vs.codec_context.thread_count = 1
        a_s = _add_audio_stream(c, recipe.audio_codec, recipe.sample_rate, recipe.channels)
        n_frames = int(round(recipe.duration_sec * recipe.fps))
        for i in range(n_frames):
            rgb = render_frame(tl, float(i / recipe.fps), recipe.width, recipe.height)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / recipe.fps
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        frame_size = a_s.codec_context.frame_size or 1024
        for frame in _audio_frames(audio, recipe.sample_rate, recipe.audio_codec, frame_size):
            for p in a_s.encode(frame):
                c.mux(p)
        for p in a_s.encode(None):
            c.mux(p)


def write_audio(path: Path, recipe: AudioRecipe, audio: np.ndarray) -> None:
    codec = "flac" if recipe.suffix == "flac" else "pcm_s16le"
    with av.open(str(path), mode="w", options=_BITEXACT) as c:
        a_s = _add_audio_stream(c, codec, recipe.sample_rate, recipe.channels)
        frame_size = a_s.codec_context.frame_size or 4096
        for frame in _audio_frames(audio, recipe.sample_rate, codec, frame_size):
            for p in a_s.encode(frame):
                c.mux(p)
        for p in a_s.encode(None):
            c.mux(p)


# ----------------------------------------------------------------------------------------------
# The whole set


EXAMPLE_MEDIA_DIRS = ("video", "audio")


def owns_example_entry(entry: Path) -> bool:
    """Whether an entry of an existing example folder is one the generator writes (its media
    folders holding plain files, its TSVs), so replacing the folder loses nothing else."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name in EXAMPLE_MEDIA_DIRS and all(f.is_file() and not f.is_symlink() for f in entry.iterdir())
    return entry.suffix == ".tsv"


def example_products(params: Params) -> Callable[[str, Path], bool]:
    """For the path check of stage make_examples: whether a path some dataset reads is one that
    generate_examples(examples.out_dir) writes (its media folders and TSVs), so not an input to protect."""
    out = Path(os.path.abspath(params.examples.out_dir)).resolve()

    def makes(_key: str, path: Path) -> bool:
        if out not in path.parents:
            return False
        rel = path.relative_to(out)
        return rel.parts[0] in EXAMPLE_MEDIA_DIRS or (len(rel.parts) == 1 and rel.suffix == ".tsv")

    return makes


def generate_examples(out_dir: str | os.PathLike, seed: int = 0, sync_set: SyncSetSpec | None = None) -> dict[str, int]:
    """Write videos, audio files and their TSVs under ``out_dir`` (replacing it). Returns counts.

    ``sync_set``: also write the learnable set of :mod:`mmaudio.sync_examples` into the same folders
    and split lists (default: none, only the format-variety files).

    Layout::

        video/{id}.{mp4,mkv,webm}   audio/{id}.{flac,wav}
        video_{train,val,test}.tsv  (id, label)      audio_captions.tsv (id, caption)
        events.tsv                  (id, kind, time_sec): the ground-truth event times
    """
    out = clear_dir(out_dir, owns=owns_example_entry, what=f"example set {os.fspath(out_dir)!r}")
    (out / "video").mkdir(parents=True)
    (out / "audio").mkdir(parents=True)
    events: list[dict[str, object]] = []
    splits: dict[str, list[dict[str, object]]] = {"train": [], "val": [], "test": []}

    keyed = [(r, [seed, 0, k]) for k, r in enumerate(VIDEOS)]
    spec = sync_set or SyncSetSpec()
    keyed += [(VideoRecipe(c.id, c.scene, "mp4", "libx264", "aac", SYNC_FPS, spec.frame_size, spec.frame_size,
                           SYNC_AUDIO_RATE, 1, SYNC_CLIP_SEC, c.split), [seed, 2, *c.key]) for c in sync_clips(spec)]
    for r, rng_key in keyed:
        rng = np.random.default_rng(rng_key)
        tl = make_timeline(r.scene, rng, r.duration_sec)
        audio = render_audio(tl, r.sample_rate, r.channels, rng)
        write_video(out / "video" / f"{r.id}.{r.container}", r, tl, audio)
        splits[r.split].append({"id": r.id, "label": CAPTIONS[r.scene]})
        events += [{"id": r.id, "kind": _event_kind(r.scene), "time_sec": f"{e:.4f}"} for e in tl.events]

    captions = []
    for k, r in enumerate(AUDIOS):
        rng = np.random.default_rng([seed, 1, k])
        tl = make_timeline(r.scene, rng, r.duration_sec)
        write_audio(out / "audio" / f"{r.id}.{r.suffix}", r, render_audio(tl, r.sample_rate, r.channels, rng))
        captions.append({"id": r.id, "caption": AUDIO_CAPTIONS[r.scene]})
        events += [{"id": r.id, "kind": _event_kind(r.scene), "time_sec": f"{e:.4f}"} for e in tl.events]

    for split, rows in splits.items():
        write_tsv(out / f"video_{split}.tsv", ("id", "label"), rows)
    write_tsv(out / "audio_captions.tsv", ("id", "caption"), captions)
    write_tsv(out / "events.tsv", ("id", "kind", "time_sec"), events)
    return {"videos": len(keyed), "audios": len(AUDIOS), "events": len(events)}


def _event_kind(scene: Scene) -> str:
    return {"flash": "flash_click", "bounce": "impact", "sweep": "turn"}[scene]
