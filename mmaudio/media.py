"""Media decoding with PyAV: audio to float32 at a target rate, video frames at target rates and sizes.

One pass over a file gives its audio and any number of frame streams (e.g. CLIP at 8 fps 384x384 and
Synchformer at 25 fps 224x224). Every failure raises a :class:`MediaError` subclass whose message
names the file and the reason, so callers can put it in a rejects manifest verbatim.

Frame-rate conversion: output frame k of a stream at ``fps`` shows the input frame on screen at time
k / fps, i.e. the last decoded frame whose timestamp (relative to the first frame) is <= k / fps.
This is what ffmpeg's ``fps`` filter (upstream's decoder) does for constant-rate input.

Limits against hostile headers (each refusal is a :class:`MediaLimitError`, i.e. a rejects entry):
a frame larger than ``MAX_FRAME_PIXELS`` is refused before it is converted (ffmpeg itself decodes
up to 16384x16384, gigabytes once resized in float32), and an audio rate outside
``MIN_AUDIO_RATE..MAX_AUDIO_RATE``, or one whose sinc resampling kernel to a model rate would exceed
``MAX_RESAMPLE_KERNEL`` entries (44101 Hz to 16 kHz needs 7e8), is refused before resampling.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from mmaudio.modes import model_sample_rates

# torchaudio's "kaiser_best" settings, as upstream resamples (DESIGN.md).
RESAMPLE_LOWPASS_FILTER_WIDTH = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_BETA = 14.769656459379492

_TIME_EPS = 1e-6  # seconds; absorbs rounding of pts * time_base

MAX_FRAME_PIXELS = 8192 * 4320  # DCI 8K; one such RGB frame is 106 MB, and the resize works in float32
MIN_AUDIO_RATE = 4000  # Hz; lower claims are broken headers (telephony, the lowest real rate, is 8 kHz)
MAX_AUDIO_RATE = 768_000  # Hz; the highest rate studio formats use
MAX_RESAMPLE_KERNEL = 2**25  # kernel entries (built in float64: ~1.3 GB of temporaries at the limit)


class MediaError(RuntimeError):
    """A media file cannot give what was asked of it. ``reason`` is short, for rejects manifests."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class MediaMissingError(MediaError):
    pass


class MediaUnreadableError(MediaError):
    pass


class NoAudioStreamError(MediaError):
    pass


class NoVideoStreamError(MediaError):
    pass


class MediaTooShortError(MediaError):
    pass


class MediaLimitError(MediaError):
    """A header asks for more than the decoder allows (frame size, sample rate); see the module doc."""


@dataclass(frozen=True)
class FrameSpec:
    """One stream of frames to produce: rate, size and how to fit the picture."""

    name: str
    fps: float
    size: int  # output side in pixels; ignored by "native"
    resize: Literal["squash", "short_side_center_crop", "native"]  # native: frames as decoded (RGB)

    def num_frames(self, duration_sec: float) -> int:
        return int(self.fps * duration_sec)  # upstream: int(_CLIP_FPS * duration_sec)


CLIP_FRAMES = FrameSpec("clip", fps=8.0, size=384, resize="squash")
SYNC_FRAMES = FrameSpec("sync", fps=25.0, size=224, resize="short_side_center_crop")
# av-benchmark's ImageBind stream: 0.5 fps at the file's own size; the ImageBind extractor resizes and
# crops them itself (torchvision on uint8, as av-benchmark), so the decoder must not resize first.
IMAGEBIND_FRAMES = FrameSpec("imagebind", fps=0.5, size=0, resize="native")


@dataclass
class AudioTrack:
    """Decoded audio at its native rate: ``samples`` (C, L) float32 in [-1, 1]."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_sec(self) -> float:
        return self.num_samples / self.sample_rate

    def mono(self) -> torch.Tensor:
        return self.samples.mean(dim=0)  # (L,)


@dataclass
class VideoClip:
    """What :func:`load_video_clip` returns for one file."""

    path: str
    audio: torch.Tensor | None  # (num_samples,) float32 mono at the requested rate, not normalised
    audio_peak: float  # max |x| of the whole native mono track (upstream normalises by it)
    frames: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (T, 3, H, W) uint8
    native_fps: float = 0.0
    native_size: tuple[int, int] = (0, 0)  # (height, width)
    native_audio_rate: int = 0


def resample(wave: torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    """Kaiser-windowed sinc resampling over the last dim, as upstream (torchaudio kaiser_best)."""
    if orig_rate == target_rate:
        return wave
    entries = resample_kernel_entries(int(orig_rate), int(target_rate))
    if entries > MAX_RESAMPLE_KERNEL:
        raise ValueError(
            f"resampling {orig_rate} Hz to {target_rate} Hz needs a kernel of {entries} entries "
            f"(limit {MAX_RESAMPLE_KERNEL}); check_audio_rate refuses such files"
        )
    return _resampler(int(orig_rate), int(target_rate))(wave)


def resample_kernel_entries(orig_rate: int, target_rate: int) -> int:
    """Size of torchaudio's sinc kernel for this pair: (target/g) * (orig/g + 2 * width), g = gcd."""
    g = math.gcd(orig_rate, target_rate)
    orig, new = orig_rate // g, target_rate // g
    width = math.ceil(RESAMPLE_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * RESAMPLE_ROLLOFF))
    return new * (orig + 2 * width)


def check_audio_rate(path: str | os.PathLike, rate: int, targets: Sequence[int] | None = None) -> None:
    """Raise :class:`MediaLimitError` unless ``rate`` is plausible and cheap to resample to ``targets``
    (default: every mode's rate, :func:`mmaudio.modes.model_sample_rates`)."""
    targets = model_sample_rates() if targets is None else targets
    if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:
        raise MediaLimitError(path, f"sample rate {rate} Hz is outside {MIN_AUDIO_RATE}..{MAX_AUDIO_RATE} Hz")
    for target in sorted(set(targets)):
        entries = resample_kernel_entries(rate, target) if target != rate else 0
        if entries > MAX_RESAMPLE_KERNEL:
            raise MediaLimitError(
                path,
                f"sample rate {rate} Hz needs a {entries}-entry kernel to resample to {target} Hz "
                f"(limit {MAX_RESAMPLE_KERNEL})",
            )


def check_frame_size(path: str | os.PathLike, width: int, height: int) -> None:
    """Raise :class:`MediaLimitError` if a ``width`` x ``height`` frame exceeds ``MAX_FRAME_PIXELS``."""
    if width * height > MAX_FRAME_PIXELS:
        raise MediaLimitError(
            path, f"frame size {width}x{height} ({width * height} pixels) exceeds the limit of {MAX_FRAME_PIXELS} pixels"
        )


@lru_cache(maxsize=16)
def _resampler(orig_rate: int, target_rate: int) -> torchaudio.transforms.Resample:
    # The module caches its kernel, which dominates the cost for short clips.
    return torchaudio.transforms.Resample(
        orig_rate,
        target_rate,
        resampling_method="sinc_interp_kaiser",
        lowpass_filter_width=RESAMPLE_LOWPASS_FILTER_WIDTH,
        rolloff=RESAMPLE_ROLLOFF,
        beta=RESAMPLE_BETA,
    )


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise MediaMissingError(p, "file does not exist")
    if not p.is_file():
        raise MediaUnreadableError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise MediaUnreadableError(p, "file is empty (0 bytes)")
    try:
        return av.open(str(p), mode="r")
    except av.error.FFmpegError as e:
        raise MediaUnreadableError(p, f"cannot open as media ({_ffmpeg_reason(e)})") from e


def _ffmpeg_reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


class _AudioCollector:
    """Accumulates decoded audio frames as float32 (C, n) chunks at the native rate.

    The resampler writes packed (interleaved) float: PyAV 18 reads past the end of a planar frame's
    plane pointers when it has 8 or more channels (a segfault on a 7.1 or 8-channel WAV).
    """

    def __init__(self, stream: av.audio.stream.AudioStream):
        self.sample_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        self.chunks: list[np.ndarray] = []
        self._resampler: av.AudioResampler | None = None

    def add(self, frame: av.AudioFrame) -> None:
        if self._resampler is None:
            # Same rate and layout; only the sample format changes to packed float.
            self.sample_rate = frame.sample_rate
            self._resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
        for out in self._resampler.resample(frame):
            self.chunks.append(_deinterleave(out))

    def finish(self) -> np.ndarray:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self.chunks.append(_deinterleave(out))
        if not self.chunks:
            return np.zeros((1, 0), dtype=np.float32)
        return np.concatenate(self.chunks, axis=1).astype(np.float32, copy=False)


def _deinterleave(frame: av.AudioFrame) -> np.ndarray:
    """A packed float frame -> (C, n)."""
    return frame.to_ndarray().reshape(frame.samples, frame.layout.nb_channels).T


def decode_audio(path: str | os.PathLike) -> AudioTrack:
    """Decode the first audio stream of ``path`` completely, at its native rate and channels."""
    with _open(path) as container:
        if not container.streams.audio:
            raise NoAudioStreamError(path, "no audio stream")
        stream = container.streams.audio[0]
        collector = _AudioCollector(stream)
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    collector.add(frame)
        except av.error.FFmpegError as e:
            raise MediaUnreadableError(path, f"audio decoding failed ({_ffmpeg_reason(e)})") from e
        samples = collector.finish()
    if samples.shape[1] == 0:
        raise MediaUnreadableError(path, "audio stream decodes to no samples")
    check_audio_rate(path, collector.sample_rate)
    if not np.isfinite(samples).all():
        raise MediaUnreadableError(path, "audio contains NaN or infinite samples")
    return AudioTrack(torch.from_numpy(samples), collector.sample_rate)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    start_sample: int = 0,
    end_sample: int | None = None,
    num_samples: int | None = None,
) -> torch.Tensor:
    """Mono float32 audio of ``path`` at ``sample_rate``.

    ``start_sample``/``end_sample`` cut the native-rate track first (clip TSV semantics); with
    ``num_samples`` the result is exactly that long or :class:`MediaTooShortError` is raised.
    """
    track = decode_audio(path)
    check_audio_rate(path, track.sample_rate, (sample_rate,))
    wave = track.mono()[start_sample:end_sample]
    wave = resample(wave, track.sample_rate, sample_rate)
    if num_samples is not None:
        if wave.shape[0] < num_samples:
            raise MediaTooShortError(
                path, f"audio too short: {wave.shape[0]} samples at {sample_rate} Hz, need {num_samples}"
            )
        wave = wave[:num_samples]
    return wave.contiguous()


def _fit_frames(frames: torch.Tensor, spec: FrameSpec) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) uint8, bicubic with antialiasing (torchvision's path);
    ``native``: (T, 3, H, W) uint8 unchanged."""
    if spec.resize == "native":
        return frames.permute(0, 3, 1, 2).contiguous()
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = x.shape[-2:]
    if spec.resize == "squash":
        out_hw = (spec.size, spec.size)
    else:
        # torchvision Resize(int): the short side becomes `size`, the long one int(size * long / short).
        if h <= w:
            out_hw = (spec.size, int(spec.size * w / h))
        else:
            out_hw = (int(spec.size * h / w), spec.size)
    if out_hw != (h, w):
        x = F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False, antialias=True)
    x = x.round_().clamp_(0, 255)
    if spec.resize == "short_side_center_crop":
        top = int(round((out_hw[0] - spec.size) / 2.0))
        left = int(round((out_hw[1] - spec.size) / 2.0))
        x = x[:, :, top : top + spec.size, left : left + spec.size]
    return x.to(torch.uint8).contiguous()


class _FrameSampler:
    """Picks, for one FrameSpec, the input frame on screen at each output time k / fps."""

    def __init__(self, spec: FrameSpec, num_frames: int):
        self.spec = spec
        self.num_frames = num_frames
        # Frames are fitted as they are picked, so memory holds one full-size frame, not T of them.
        self.picked: list[torch.Tensor] = []  # (3, size, size) uint8 each
        self._source: np.ndarray | None = None
        self._fitted: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return len(self.picked) >= self.num_frames

    def offer(self, prev_rgb: np.ndarray | None, t_next: float) -> None:
        """A new frame starts at ``t_next``: every pending output time before it shows ``prev_rgb``."""
        while prev_rgb is not None and not self.done and len(self.picked) / self.spec.fps < t_next - _TIME_EPS:
            if self._source is not prev_rgb:  # a repeated frame (output rate above the input's) is fitted once
                self._fitted = _fit_frames(torch.from_numpy(prev_rgb)[None], self.spec)[0]
                self._source = prev_rgb
            self.picked.append(self._fitted)


def load_video_clip(
    path: str | os.PathLike,
    *,
    duration_sec: float,
    specs: Sequence[FrameSpec] = (CLIP_FRAMES, SYNC_FRAMES),
    audio_rate: int | None = None,
    audio_samples: int | None = None,
) -> VideoClip:
    """Decode ``duration_sec`` of frames for every spec, and the audio, in one pass over ``path``.

    The audio (if ``audio_rate`` is given) is the whole first audio track, mono, resampled, cut to
    ``audio_samples`` (default ``round(duration_sec * audio_rate)``). Raises :class:`MediaError`s.
    """
    path = str(path)
    with _open(path) as container:
        if not container.streams.video:
            raise NoVideoStreamError(path, "no video stream")
        vstream = container.streams.video[0]
        check_frame_size(path, vstream.codec_context.width, vstream.codec_context.height)
        astream = None
        if audio_rate is not None:
            if not container.streams.audio:
                raise NoAudioStreamError(path, "no audio stream")
            astream = container.streams.audio[0]
        vstream.thread_type = "AUTO"
        samplers = [_FrameSampler(s, s.num_frames(duration_sec)) for s in specs]
        collector = _AudioCollector(astream) if astream is not None else None

        first_time: float | None = None
        prev_rgb: np.ndarray | None = None
        prev_time = 0.0
        frame_period = 1.0 / float(vstream.average_rate) if vstream.average_rate else 0.0
        video_done = False
        streams = [vstream] + ([astream] if astream is not None else [])
        try:
            # demux() ends with an empty packet per stream, whose decode() flushes delayed frames.
            for packet in container.demux(*streams):
                if packet.stream.type == "audio":
                    for frame in packet.decode():
                        collector.add(frame)
                    continue
                if video_done:
                    continue  # keep demuxing for the audio, skip video decoding
                for frame in packet.decode():
                    t = _frame_time(frame)
                    if first_time is None:
                        first_time = t
                    t -= first_time
                    for s in samplers:
                        s.offer(prev_rgb, t)
                    check_frame_size(path, frame.width, frame.height)  # the bitstream may contradict the header
                    prev_rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                    prev_time = t
                    if all(s.done for s in samplers):
                        video_done = True
                        break
                if video_done and collector is None:
                    break
        except av.error.FFmpegError as e:
            raise MediaUnreadableError(path, f"decoding failed ({_ffmpeg_reason(e)})") from e

        # The last frame stays on screen for one frame period.
        end_time = prev_time + frame_period
        for s in samplers:
            s.offer(prev_rgb, end_time)

        if prev_rgb is None:
            raise MediaUnreadableError(path, "video stream decodes to no frames")
        for s in samplers:
            if not s.done:
                raise MediaTooShortError(
                    path,
                    f"video too short: {len(s.picked)} frames at {s.spec.fps:g} fps "
                    f"({end_time:.3f} s), need {s.num_frames} for {duration_sec:g} s",
                )
        native_hw = (int(prev_rgb.shape[0]), int(prev_rgb.shape[1]))
        frames = {s.spec.name: torch.stack(s.picked) for s in samplers}  # (T, 3, size, size) each
        native_fps = float(vstream.average_rate or 0.0)

        audio = None
        peak = 0.0
        native_rate = 0
        if collector is not None:
            samples = collector.finish()
            native_rate = collector.sample_rate
            if samples.shape[1] == 0:
                raise MediaUnreadableError(path, "audio stream decodes to no samples")
            check_audio_rate(path, native_rate, (*model_sample_rates(), audio_rate))
            if not np.isfinite(samples).all():
                raise MediaUnreadableError(path, "audio contains NaN or infinite samples")
            mono = torch.from_numpy(samples).mean(dim=0)
            peak = float(mono.abs().max())
            need = audio_samples if audio_samples is not None else round(duration_sec * audio_rate)
            wave = resample(mono, native_rate, audio_rate)
            if wave.shape[0] < need:
                raise MediaTooShortError(
                    path, f"audio too short: {wave.shape[0]} samples at {audio_rate} Hz, need {need}"
                )
            audio = wave[:need].contiguous()
    return VideoClip(
        path=path,
        audio=audio,
        audio_peak=peak,
        frames=frames,
        native_fps=native_fps,
        native_size=native_hw,
        native_audio_rate=native_rate,
    )


def _frame_time(frame: av.VideoFrame) -> float:
    if frame.pts is None or frame.time_base is None:
        raise av.error.InvalidDataError(0, "frame without timestamp")
    return float(frame.pts * frame.time_base)


@dataclass(frozen=True)
class MediaInfo:
    """Container-level facts about a file (from headers; no full decode)."""

    path: str
    duration_sec: float
    has_video: bool
    has_audio: bool
    fps: float = 0.0
    width: int = 0
    height: int = 0
    audio_rate: int = 0
    audio_channels: int = 0


def probe(path: str | os.PathLike) -> MediaInfo:
    """Header facts of ``path``; raises :class:`MediaError` if it cannot be opened."""
    with _open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        duration = float(c.duration / av.time_base) if c.duration is not None else 0.0
        return MediaInfo(
            path=str(path),
            duration_sec=duration,
            has_video=v is not None,
            has_audio=a is not None,
            fps=float(v.average_rate) if v is not None and v.average_rate else 0.0,
            width=int(v.codec_context.width) if v is not None else 0,
            height=int(v.codec_context.height) if v is not None else 0,
            audio_rate=int(a.codec_context.sample_rate or 0) if a is not None else 0,
            audio_channels=int(a.codec_context.channels or 0) if a is not None else 0,
        )


def exact_samples(duration_sec: float, sample_rate: int) -> int:
    """``duration_sec * sample_rate`` without binary floating-point error (8.1 s * 16 kHz = 129600)."""
    return int(Fraction(str(duration_sec)) * sample_rate)


def iter_media_files(folder: str | os.PathLike, suffixes: Sequence[str]) -> Iterator[Path]:
    """Files in ``folder`` (not recursive) whose suffix is in ``suffixes``, sorted by name."""
    wanted = {s.lower() for s in suffixes}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.suffix.lower() in wanted:
            yield p


__all__ = [
    "AudioTrack",
    "CLIP_FRAMES",
    "FrameSpec",
    "IMAGEBIND_FRAMES",
    "MediaError",
    "MAX_FRAME_PIXELS",
    "MAX_RESAMPLE_KERNEL",
    "MIN_AUDIO_RATE",
    "MAX_AUDIO_RATE",
    "MediaInfo",
    "MediaLimitError",
    "MediaMissingError",
    "MediaTooShortError",
    "MediaUnreadableError",
    "NoAudioStreamError",
    "NoVideoStreamError",
    "SYNC_FRAMES",
    "VideoClip",
    "check_audio_rate",
    "check_frame_size",
    "decode_audio",
    "exact_samples",
    "iter_media_files",
    "load_audio",
    "load_video_clip",
    "probe",
    "resample",
    "resample_kernel_entries",
]
