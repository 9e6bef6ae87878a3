"""Media decoding with PyAV: audio to float32 at a target rate, video frames at target rates and sizes.

One pass over a file gives its audio and any number of frame streams (e.g. CLIP at 8 fps 384x384 and
Synchformer at 25 fps 224x224). Every failure raises a :class:`MediaError` subclass whose message
names the file and the reason, so callers can put it in a rejects manifest verbatim.

Frames are the ones upstream's decoder (torio's StreamingMediaDecoder, filter ``fps=F`` then
``format=rgb24``) hands its transforms: libavfilter's ``fps`` filter with its defaults (``round=near``,
no ``start_time``, ``eof_action=round``), replayed on the frames' own timestamps by :class:`FpsSelector`
(tests/test_media_parity.py pins it against the filter itself). Output frame k is the last input frame
whose timestamp, rounded to the nearest multiple of 1/F, is at most q0 + k, q0 being the first frame's
rounded timestamp: roughly the picture on screen at (k + 1/2)/F after the first frame. The pictures
are resized with the kernel torchvision's v2 ``Resize(interpolation=BICUBIC)`` (antialias on) uses for
uint8 tensors on the CPU: torch's native uint8 bicubic with antialiasing.

Timeline: the clip starts at the first video frame's presentation time; the audio is placed on the
same timeline by its own start time (audio that starts later is preceded by silence, audio before the
first frame is skipped), so a file whose streams start at different times is never shifted silently.
Display rotation metadata is ignored, as upstream's decoder ignores it (the official weights saw coded
orientations); :func:`probe` reports it so the index records it.

Memory: nothing is decoded beyond what is needed. Frames stop at the clip's last frame; the audio keeps
only the clip's window, and the peak that normalises it is a running maximum over the track up to
``AUDIO_PEAK_SCAN_SEC`` seconds after the clip start (upstream: the whole track; the same for any file
up to that length). Audio files are streamed the same way (:func:`count_audio_samples`,
:func:`decode_audio_segments`), so a long file costs time, not memory.

Limits against hostile headers (each refusal is a :class:`MediaLimitError`, i.e. a rejects entry):
a frame larger than ``MAX_FRAME_PIXELS`` is refused before it is converted (ffmpeg itself decodes
up to 16384x16384), and an audio rate outside ``MIN_AUDIO_RATE..MAX_AUDIO_RATE``, or one whose sinc
resampling kernel to a model rate would exceed ``MAX_RESAMPLE_KERNEL`` entries (44101 Hz to 16 kHz
needs 7e8), is refused before resampling.
"""

from __future__ import annotations

import contextlib
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

MAX_FRAME_PIXELS = 8192 * 4320  # DCI 8K; one such RGB frame is 106 MB
MIN_AUDIO_RATE = 4000  # Hz; lower claims are broken headers (telephony, the lowest real rate, is 8 kHz)
MAX_AUDIO_RATE = 768_000  # Hz; the highest rate studio formats use
MAX_RESAMPLE_KERNEL = 2**25  # kernel entries (built in float64: ~1.3 GB of temporaries at the limit)
# How far past a video clip's start its audio track is decoded for the normalisation peak. Upstream
# takes the peak of the whole track; its clips (VGGSound) are 10 s, well inside this. A video with an
# hour of audio costs 10 minutes of audio decoding, not the hour (and never the hour's memory).
AUDIO_PEAK_SCAN_SEC = 600.0


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

    @property
    def rate(self) -> Fraction:
        """The output rate as libavfilter parses torio's ``fps={fps}`` (8.0 -> 8/1, 0.5 -> 1/2)."""
        return Fraction(repr(float(self.fps)))


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
    audio_peak: float  # max |x| of the native mono track up to AUDIO_PEAK_SCAN_SEC after the clip start
    frames: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (T, 3, H, W) uint8
    native_fps: float = 0.0
    native_size: tuple[int, int] = (0, 0)  # (height, width)
    native_audio_rate: int = 0
    audio_offset_sec: float = 0.0  # audio track start minus the first frame's time (> 0: silence led the audio)


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


def display_name(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes of a name that are not UTF-8 appear as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    p = Path(path)
    if display_name(p) != str(p):
        # PyAV takes file names as UTF-8 text; this one cannot be passed to it, nor written to a TSV
        raise MediaUnreadableError(display_name(p), "file name is not valid UTF-8")
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


def _stream_mono(path: str | os.PathLike) -> Iterator[tuple[int, np.ndarray]]:
    """(sample_rate, (n,) float32 mono chunk) of the first audio track, one decoded frame at a time."""
    name = display_name(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise NoAudioStreamError(name, "no audio stream")
        stream = container.streams.audio[0]
        resampler: av.AudioResampler | None = None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if resampler is None:
                        check_audio_rate(name, frame.sample_rate)
                        resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
                    for out in resampler.resample(frame):
                        yield out.sample_rate, _checked_mono(name, out)
            for out in resampler.resample(None) if resampler is not None else ():
                yield out.sample_rate, _checked_mono(name, out)
        except av.error.FFmpegError as e:
            raise MediaUnreadableError(name, f"audio decoding failed ({_ffmpeg_reason(e)})") from e


def _checked_mono(name: str, frame: av.AudioFrame) -> np.ndarray:
    mono = _deinterleave(frame).mean(axis=0, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise MediaUnreadableError(name, "audio contains NaN or infinite samples")
    return mono


def count_audio_samples(path: str | os.PathLike) -> tuple[int, int]:
    """(samples per channel, sample rate) of the first audio track, counted by decoding it as a stream:
    exact, in constant memory whatever the file's length. The checks match :func:`decode_audio`'s."""
    total, rate = 0, 0
    for rate, mono in _stream_mono(path):
        total += mono.shape[0]
    if total == 0:
        raise MediaUnreadableError(display_name(path), "audio stream decodes to no samples")
    return total, rate


@dataclass
class AudioSegments:
    """What :func:`decode_audio_segments` returns: native-rate mono cuts and the whole track's peak."""

    sample_rate: int
    num_samples: int  # of the whole track
    peak: float  # max |x| of the whole mono track
    segments: list[torch.Tensor]  # (end - start,) float32 each, shorter where the track ends early


def decode_audio_segments(path: str | os.PathLike, ranges: Sequence[tuple[int, int | None]]) -> AudioSegments:
    """Mono cuts ``[start:end]`` (native-rate sample indices, ``end`` None: to the end) of the first
    audio track and its peak, in one streamed pass: memory holds the cuts, never the whole track."""
    parts: list[list[np.ndarray]] = [[] for _ in ranges]
    total, rate, peak = 0, 0, 0.0
    for rate, mono in _stream_mono(path):
        first, total = total, total + mono.shape[0]
        peak = max(peak, float(np.abs(mono).max())) if mono.size else peak
        for (start, end), out in zip(ranges, parts):
            a, b = max(first, start), total if end is None else min(total, end)
            if a < b:
                out.append(mono[a - first : b - first])
    if total == 0:
        raise MediaUnreadableError(display_name(path), "audio stream decodes to no samples")
    segments = [torch.from_numpy(np.concatenate(p) if p else np.zeros(0, np.float32)) for p in parts]
    return AudioSegments(rate, total, peak, segments)


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
    """(T, H, W, 3) uint8 -> (T, 3, size, size) uint8 as torchvision's v2 ``Resize`` (bicubic, antialias)
    and ``CenterCrop`` do to a uint8 tensor on the CPU; ``native``: (T, 3, H, W) uint8 unchanged.

    torchvision hands uint8 bicubic input straight to ``interpolate`` (no float round trip), so this is
    the same kernel, not an imitation of it; tests/test_media_parity.py checks the sizes and crops."""
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last in memory, as torio's tensors are
    if spec.resize == "native":
        return x.contiguous()
    h, w = x.shape[-2:]
    out_hw = resized_size(h, w, spec)
    if out_hw != (h, w):
        x = F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False, antialias=True)
    if spec.resize == "short_side_center_crop":
        top = int(round((out_hw[0] - spec.size) / 2.0))
        left = int(round((out_hw[1] - spec.size) / 2.0))
        x = x[:, :, top : top + spec.size, left : left + spec.size]
    return x.contiguous()


def resized_size(height: int, width: int, spec: FrameSpec) -> tuple[int, int]:
    """(height, width) after the resize of ``spec``; torchvision's ``Resize(int)`` sets the short side
    to ``size`` and the long one to ``int(size * long / short)``."""
    if spec.resize == "native":
        return height, width
    if spec.resize == "squash":
        return spec.size, spec.size
    if height <= width:
        return spec.size, int(spec.size * width / height)
    return int(spec.size * height / width), spec.size


def fps_rescale(pts: int, time_base: Fraction, rate: Fraction) -> int:
    """``pts`` (in ``time_base`` units) in units of 1/``rate``, rounded to the nearest, halves away from
    zero: libavutil's ``av_rescale_q_rnd(pts, time_base, 1/rate, AV_ROUND_NEAR_INF)`` in exact integers."""
    b = time_base.numerator * rate.numerator
    c = time_base.denominator * rate.denominator
    if pts < 0:
        return -((-pts * b + c // 2) // c)
    return (pts * b + c // 2) // c


class FpsSelector:
    """libavfilter's ``fps`` filter with its defaults, as a state machine over input timestamps.

    The filter holds one frame; when the next one arrives with rounded timestamp ``q``, it emits the
    held frame for every output slot before ``q`` (from the first frame's rounded timestamp on, one
    slot per 1/rate) and then holds the new frame. At the end of the stream the held frame fills the
    slots up to the rounded end time (the last frame's timestamp plus its duration, as the buffer
    source reports it). ``push`` and ``finish`` return how many copies of the held item to emit.
    """

    def __init__(self, rate: Fraction, time_base: Fraction):
        self.rate = rate
        self.time_base = time_base
        self.next_pts: int | None = None
        self.end_pts: int | None = None  # input pts where the stream ends (last pts + duration)

    def push(self, pts: int, duration: int = 0) -> int:
        q = fps_rescale(pts, self.time_base, self.rate)
        self.end_pts = pts + duration
        if self.next_pts is None:
            self.next_pts = q
            return 0
        emitted = max(0, q - self.next_pts)
        self.next_pts += emitted
        return emitted

    def finish(self) -> int:
        if self.next_pts is None or self.end_pts is None:
            return 0
        end = fps_rescale(self.end_pts, self.time_base, self.rate)
        emitted = max(0, end - self.next_pts)
        self.next_pts += emitted
        return emitted


class _LazyRGB:
    """A decoded frame whose RGB conversion happens once, and only if some stream picks it."""

    def __init__(self, frame: av.VideoFrame):
        self.frame = frame
        self._rgb: torch.Tensor | None = None

    def rgb(self) -> torch.Tensor:
        if self._rgb is None:
            self._rgb = torch.from_numpy(self.frame.to_ndarray(format="rgb24"))  # (H, W, 3)
        return self._rgb


class _FrameStream:
    """One FrameSpec's output: frames chosen by an FpsSelector, fitted as they are picked (memory holds
    the fitted frames and one full-size frame, not T full-size ones)."""

    def __init__(self, spec: FrameSpec, num_frames: int, time_base: Fraction):
        self.spec = spec
        self.num_frames = num_frames
        self.selector = FpsSelector(spec.rate, time_base)
        self.picked: list[torch.Tensor] = []  # (3, size, size) uint8 each
        self._held: _LazyRGB | None = None
        self._fitted: tuple[_LazyRGB, torch.Tensor] | None = None

    @property
    def done(self) -> bool:
        return len(self.picked) >= self.num_frames

    def _emit(self, copies: int) -> None:
        copies = min(copies, self.num_frames - len(self.picked))
        if copies <= 0 or self._held is None:
            return
        if self._fitted is None or self._fitted[0] is not self._held:  # a repeated frame is fitted once
            self._fitted = (self._held, _fit_frames(self._held.rgb()[None], self.spec)[0])
        self.picked += [self._fitted[1]] * copies

    def push(self, frame: _LazyRGB, pts: int, duration: int) -> None:
        self._emit(self.selector.push(pts, duration))
        self._held = frame

    def finish(self) -> None:
        self._emit(self.selector.finish())


class _AudioWindow:
    """The audio of a clip on the presentation timeline, streamed.

    Keeps mono float32 at the native rate from ``origin`` (the first video frame's time) for as many
    samples as ``target_samples`` at ``target_rate`` need, plus the resampler's kernel context after
    them (so cutting after resampling gives what resampling the whole track gives), and the running
    peak of the mono track from its first sample to ``AUDIO_PEAK_SCAN_SEC`` after the origin.
    Samples decoded before the origin is known are buffered; the first video frame comes early in
    any interleaved file.
    """

    def __init__(self, path: str, target_rate: int, target_samples: int):
        self.path = path
        self.target_rate = target_rate
        self.target_samples = target_samples
        self.sample_rate = 0
        self.start: Fraction | None = None  # presentation time of the track's first sample
        self.origin: Fraction | None = None
        self.chunks: list[np.ndarray] = []  # kept mono samples, contiguous from track index kept_from
        self.kept_from = 0
        self.received = 0  # samples decoded so far
        self.peak = 0.0
        self._resampler: av.AudioResampler | None = None

    def add(self, frame: av.AudioFrame) -> None:
        if self._resampler is None:
            self.sample_rate = frame.sample_rate
            check_audio_rate(self.path, self.sample_rate, (*model_sample_rates(), self.target_rate))
            self.start = _timestamp(frame)
            # same rate and layout; only the sample format changes to packed float (see _AudioCollector)
            self._resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=frame.sample_rate)
        for out in self._resampler.resample(frame):
            self._take(_deinterleave(out).mean(axis=0, dtype=np.float32))

    def flush(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.resample(None):
                self._take(_deinterleave(out).mean(axis=0, dtype=np.float32))

    def _take(self, mono: np.ndarray) -> None:  # (n,) float32
        if not np.isfinite(mono).all():
            raise MediaUnreadableError(self.path, "audio contains NaN or infinite samples")
        first = self.received
        self.received += mono.shape[0]
        scan_end = self._scan_end()
        if scan_end is None or first < scan_end:
            seg = mono if scan_end is None else mono[: scan_end - first]
            if seg.size:
                self.peak = max(self.peak, float(np.abs(seg).max()))
        if self.origin is None:
            self.chunks.append(mono)
            return
        lo, hi = self._window()
        a, b = max(first, lo), min(first + mono.shape[0], hi)
        if a < b:
            if not self.chunks:
                self.kept_from = a
            self.chunks.append(mono[a - first : b - first])

    def set_origin(self, origin: Fraction) -> None:
        """Fix the clip start, and drop what was buffered outside the window."""
        self.origin = origin
        if self.start is None:
            return
        lo, hi = self._window()
        buffered = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        self.chunks = [buffered[lo:hi]] if lo < min(hi, buffered.shape[0]) else []
        self.kept_from = lo

    def _offset(self) -> int:
        """Track samples from its first sample to the origin (negative: the track starts after it)."""
        return round((self.origin - self.start) * self.sample_rate)

    def _window(self) -> tuple[int, int]:
        """Track sample range [lo, hi) the clip keeps (any leading silence comes on top)."""
        g = math.gcd(self.sample_rate, self.target_rate)
        orig, new = self.sample_rate // g, self.target_rate // g
        width = math.ceil(RESAMPLE_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * RESAMPLE_ROLLOFF))
        blocks = -(-self.target_samples // new)  # output blocks of `new` samples that hold the clip
        lead = max(0, -self._offset())
        keep = blocks * orig + width + orig + 1 - lead  # +1 block and the kernel's reach: its inputs
        lo = max(0, self._offset())
        return lo, lo + max(0, keep)

    def _scan_end(self) -> int | None:
        if self.origin is None or self.start is None:
            return None
        return max(0, self._offset()) + int(AUDIO_PEAK_SCAN_SEC * self.sample_rate)

    @property
    def done(self) -> bool:
        """The window is complete and the peak scan is over."""
        if self.origin is None or self.start is None:
            return False
        return self.received >= max(self._window()[1], self._scan_end())

    def samples(self) -> np.ndarray:
        """(n,) float32 native-rate mono from the origin on, led by silence if the track starts later."""
        lead = max(0, -self._offset())
        parts = ([np.zeros(lead, np.float32)] if lead else []) + self.chunks
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread. The decoder's own threads share the cores, and
    OpenMP workers spinning against them made the resizes 25x slower on 2 cores (DataLoader workers
    are single-threaded anyway: mmaudio.extraction sets it)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def load_video_clip(
    path: str | os.PathLike,
    *,
    duration_sec: float,
    specs: Sequence[FrameSpec] = (CLIP_FRAMES, SYNC_FRAMES),
    audio_rate: int | None = None,
    audio_samples: int | None = None,
) -> VideoClip:
    """Decode ``duration_sec`` of frames for every spec, and the audio, in one pass over ``path``.

    The clip starts at the first video frame. The audio (if ``audio_rate`` is given) is the first audio
    track on the same timeline, mono, resampled, cut to ``audio_samples`` (default
    ``round(duration_sec * audio_rate)``). Decoding stops once the clip is complete (see the module doc
    for the audio peak). Raises :class:`MediaError`s.
    """
    path = str(path)
    with _open(path) as container, _one_torch_thread():
        name = display_name(path)
        if not container.streams.video:
            raise NoVideoStreamError(name, "no video stream")
        vstream = container.streams.video[0]
        check_frame_size(name, vstream.codec_context.width, vstream.codec_context.height)
        astream = None
        need = 0
        if audio_rate is not None:
            if not container.streams.audio:
                raise NoAudioStreamError(name, "no audio stream")
            astream = container.streams.audio[0]
            need = audio_samples if audio_samples is not None else round(duration_sec * audio_rate)
        vstream.thread_type = "AUTO"
        time_base = Fraction(vstream.time_base)
        streams = [_FrameStream(s, s.num_frames(duration_sec), time_base) for s in specs]
        audio = _AudioWindow(name, audio_rate, need) if astream is not None else None

        first_frame: av.VideoFrame | None = None
        last_size = (0, 0)
        video_done = False
        try:
            # demux() ends with an empty packet per stream, whose decode() flushes delayed frames.
            for packet in container.demux(*([vstream] + ([astream] if astream is not None else []))):
                if packet.stream.type == "audio":
                    if not audio.done:
                        for frame in packet.decode():
                            audio.add(frame)
                    if video_done and audio.done:
                        break
                    continue
                if video_done:
                    continue  # keep demuxing for the audio, skip video decoding
                for frame in packet.decode():
                    check_frame_size(name, frame.width, frame.height)  # the bitstream may contradict the header
                    if frame.pts is None:
                        raise MediaUnreadableError(name, "decoding failed (frame without timestamp)")
                    if first_frame is None:
                        first_frame = frame
                        if audio is not None:
                            audio.set_origin(_timestamp(frame))
                    last_size = (frame.height, frame.width)
                    held = _LazyRGB(frame)
                    for s in streams:
                        s.push(held, frame.pts, frame.duration or 0)
                    if all(s.done for s in streams):
                        video_done = True
                        break
                if video_done and (audio is None or audio.done):
                    break
            else:
                if audio is not None:
                    audio.flush()
        except av.error.FFmpegError as e:
            raise MediaUnreadableError(name, f"decoding failed ({_ffmpeg_reason(e)})") from e

        if first_frame is None:
            raise MediaUnreadableError(name, "video stream decodes to no frames")
        for s in streams:
            if not s.done:
                s.finish()  # the stream ended: the last frame fills the slots up to its end
            if not s.done:
                end = float(Fraction(s.selector.end_pts - first_frame.pts) * time_base)
                raise MediaTooShortError(
                    name,
                    f"video too short: {len(s.picked)} frames at {s.spec.fps:g} fps "
                    f"({end:.3f} s), need {s.num_frames} for {duration_sec:g} s",
                )
        frames = {s.spec.name: torch.stack(s.picked) for s in streams}  # (T, 3, size, size) each

        wave = None
        native_rate = 0
        if audio is not None:
            native_rate = audio.sample_rate
            if audio.received == 0:
                raise MediaUnreadableError(name, "audio stream decodes to no samples")
            check_audio_rate(name, native_rate, (*model_sample_rates(), audio_rate))
            native = torch.from_numpy(audio.samples())
            wave = resample(native, native_rate, audio_rate)
            if wave.shape[0] < need:
                raise MediaTooShortError(name, f"audio too short: {wave.shape[0]} samples at {audio_rate} Hz, need {need}")
            wave = wave[:need].contiguous()
    return VideoClip(
        path=path,
        audio=wave,
        audio_peak=audio.peak if audio is not None else 0.0,
        frames=frames,
        native_fps=float(vstream.average_rate or 0.0),
        native_size=last_size,
        native_audio_rate=native_rate,
        audio_offset_sec=float(audio.start - audio.origin) if audio is not None and audio.start is not None else 0.0,
    )


def _timestamp(frame: av.VideoFrame | av.AudioFrame) -> Fraction:
    if frame.pts is None or frame.time_base is None:
        raise av.error.InvalidDataError(0, "frame without timestamp")
    return frame.pts * Fraction(frame.time_base)


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
    rotation: int = 0  # degrees the display matrix turns the picture (counter-clockwise); decoding ignores it


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
            # a frame is decoded for its rotation only if its header size is within the limit
            rotation=_rotation(c, v) if v is not None and _within_frame_limit(v) else 0,
        )


def _within_frame_limit(stream: av.video.stream.VideoStream) -> bool:
    return stream.codec_context.width * stream.codec_context.height <= MAX_FRAME_PIXELS


def _rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation of ``stream``, read from its first frame's side data (the container keeps
    the display matrix as stream side data, which PyAV exposes through decoded frames)."""
    try:
        for frame in container.decode(stream):
            return int(round(frame.rotation)) % 360
    except av.error.FFmpegError as e:
        raise MediaUnreadableError(display_name(container.name), f"cannot decode a video frame ({_ffmpeg_reason(e)})") from e
    return 0


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
