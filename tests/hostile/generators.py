"""Writers of hostile (and good) inputs: media bytes, weight files and the good files set beside them.

Every writer is small and fast (a few KB to 1 MB, milliseconds) except :func:`write_big_frame`, the
one real 8192x8192 frame (about 2 s to encode). WAV files are built byte by byte, so a header can
claim what no encoder would write (1 Hz, 10^9 frames, NaN samples in float32).
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from mmaudio.examples import AudioRecipe, VideoRecipe, make_timeline, write_audio, write_video
from mmaudio.weights import save_weight_file

# -- audio ------------------------------------------------------------------------------------------


def tone(seconds: float, rate: int, channels: int = 1, freq_hz: float = 440.0) -> np.ndarray:
    """(C, L) float32 sine at 0.3 peak; channel c is scaled by (c + 1) / C, so channels differ."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq_hz * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)]).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, *, float32: bool = False, declared_frames: int | None = None) -> bytes:
    """A RIFF/WAVE file of ``samples`` (C, L): PCM int16, or IEEE float32 (which can hold NaN).

    ``rate`` and ``declared_frames`` go into the header as given, true or not.
    """
    channels = samples.shape[0]
    if float32:
        tag, bits, payload = 3, 32, samples.astype("<f4").T.tobytes()
    else:
        tag, bits = 1, 16
        payload = (np.clip(samples, -1, 1) * 32767).round().astype("<i2").T.tobytes()
    block = channels * bits // 8
    data_bytes = len(payload) if declared_frames is None else declared_frames * block
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    return (
        b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF) + payload
    )


def write_wav(path: Path, samples: np.ndarray, rate: int, **kw) -> Path:
    path.write_bytes(wav_bytes(samples, rate, **kw))
    return path


def write_flac(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Mono or stereo FLAC through the example generator's writer."""
    recipe = AudioRecipe(path.stem, "sweep", "flac", rate, samples.shape[0], samples.shape[1] / rate)
    write_audio(path, recipe, samples)
    return path


# -- video ------------------------------------------------------------------------------------------


def write_av(path: Path, *, seconds: float, codec: str = "mpeg4", audio_codec: str = "aac", fps: int = 10) -> Path:
    """A 64x48 flash-scene video with a 16 kHz mono tone, in the container of ``path``'s suffix."""
    recipe = VideoRecipe(path.stem, "flash", path.suffix[1:], codec, audio_codec, Fraction(fps), 64, 48, 16000, 1, seconds, "train")
    timeline = make_timeline("flash", np.random.default_rng(0), seconds)
    write_video(path, recipe, timeline, tone(seconds, 16000))
    return path


def write_mjpeg_mkv(path: Path, *, size: int = 256, frames: int = 3) -> Path:
    """A small MJPEG-in-Matroska video: its frame size sits in plain bytes (JPEG SOF0, Matroska
    PixelWidth/PixelHeight), so :func:`claim_frame_size` can make it lie."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuvj420p"
        for i in range(frames):
            rgb = np.full((size, size, 3), 40 * i, np.uint8)
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def claim_frame_size(path: Path, width: int, height: int, *, size: int = 256) -> Path:
    """Rewrite a :func:`write_mjpeg_mkv` file so that both the container and every JPEG claim
    ``width`` x ``height`` while the coded data stays ``size`` x ``size``."""
    data = path.read_bytes()
    old_sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", size, size)
    new_sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width)
    two_bytes = struct.pack(">H", size)
    old_w, old_h = b"\xb0\x82" + two_bytes, b"\xba\x82" + two_bytes  # EBML PixelWidth / PixelHeight
    assert data.count(old_w) == 1 and data.count(old_h) == 1 and data.count(old_sof) >= 1, path
    data = data.replace(old_sof, new_sof)
    data = data.replace(old_w, b"\xb0\x82" + struct.pack(">H", width)).replace(old_h, b"\xba\x82" + struct.pack(">H", height))
    path.write_bytes(data)
    return path


def write_big_frame(path: Path, width: int = 8192, height: int = 8192) -> Path:
    """One real black ``width`` x ``height`` H.264 frame (small on disk, 67 Mpixel decoded)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=1, options={"preset": "ultrafast", "threads": "1"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_raw_h264(path: Path, *, frames: int = 20) -> Path:
    """An Annex-B H.264 elementary stream: no container, so no frame carries a timestamp."""
    with av.open(str(path), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast", "threads": "1"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i % 255, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def empty_mp4_bytes() -> bytes:
    """A well-formed MP4 with a movie header and no track at all."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    unity = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)  # display matrix
    mvhd = _box(
        b"mvhd",
        b"\x00" * 4 + struct.pack(">IIII", 0, 0, 1000, 0) + struct.pack(">IH", 0x00010000, 0x0100)
        + b"\x00" * 10 + unity + b"\x00" * 24 + struct.pack(">I", 1),
    )
    return ftyp + _box(b"moov", mvhd)


def write_data_only(path: Path) -> Path:
    """An MPEG-TS file (whatever ``path``'s suffix says) whose only stream is KLV metadata."""
    with av.open(str(path), "w", format="mpegts") as c:
        s = c.add_data_stream("klv")
        for i in range(3):
            p = av.Packet(b"\x06\x0e\x2b\x34 not a picture")
            p.stream, p.pts, p.dts, p.time_base = s, i * 1000, i * 1000, Fraction(1, 1000)
            c.mux(p)
    return path


# -- weight files -----------------------------------------------------------------------------------


class ShellOnUnpickle:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_pickle_payload(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A "state dict" holding a code-running object, as torch.save (zip) or a bare pickle."""
    obj = {"weight": torch.zeros(3, 4), "bias": ShellOnUnpickle(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    return path


def write_huge_declared_tensor(path: Path) -> Path:
    """A torch.save zip whose pickle declares a 2^31-1 element tensor over 16 bytes of data."""
    torch.save({"weight": torch.zeros(4)}, path)
    big = b"J" + struct.pack("<i", 2**31 - 1)  # BININT, replacing BININT1 4 (numel and size)
    with zipfile.ZipFile(path) as src:
        records = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info, data in records:
            if info.filename.endswith("data.pkl"):
                assert data.count(b"K\x04t") == 1 and data.count(b"K\x04\x85") == 1, "torch.save layout changed"
                data = data.replace(b"K\x04t", big + b"t").replace(b"K\x04\x85", big + b"\x85")
            out.writestr(info, data)
    return path


# -- the good data set beside every hostile item ------------------------------------------------------


@dataclass(frozen=True)
class GoodMedia:
    """Valid inputs that each case puts next to its hostile one; all must still be processed."""

    wav: Path  # 9 s, 16 kHz mono PCM: one 8.1 s clip
    flac: Path  # 10 s, 22.05 kHz stereo: one clip
    mp4: Path  # 9 s, 64x48 at 10 fps, MPEG-4 Part 2 + AAC 16 kHz
    mkv: Path  # the same as MPEG-4 Part 2 + FLAC in Matroska
    weights: Path  # the state dict of GOOD_MODULE's layout (torch.nn.Linear(4, 3), seed 0)


def good_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def make_good_media(folder: Path) -> GoodMedia:
    folder.mkdir(parents=True, exist_ok=True)
    return GoodMedia(
        wav=write_wav(folder / "good.wav", tone(9.0, 16000), 16000),
        flac=write_flac(folder / "good.flac", tone(10.0, 22050, channels=2), 22050),
        mp4=write_av(folder / "good.mp4", seconds=9.0),
        mkv=write_av(folder / "good.mkv", seconds=9.0, audio_codec="flac"),
        weights=save_weight_file(good_module().state_dict(), folder / "good.pth"),
    )


def copy_into(src: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, folder / (name or src.name)))
