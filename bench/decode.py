"""Decoding cost of one 8 s training clip (8 fps 384 px CLIP frames, 25 fps 224 px Synchformer frames,
16 kHz audio) by source resolution, the current decoder against an earlier revision's, in one run.

    PYTHONPATH=. python bench/decode.py [--before REV] [--heights 360,720,1080] [--repeats 3] [--out DIR]

Sources are generated first (10 s, 30 fps H.264 with a moving textured picture, AAC 44.1 kHz stereo,
as VGGSound-like uploads are) unless ``--out`` already holds them. ``--before`` names a git revision
whose ``mmaudio/media.py`` is loaded as a module of its own (default: the commit before the decoder
rewrite), so both decoders see the same files on the same warm machine. Each decode runs on one
intra-op thread (as extraction's DataLoader workers do) and is timed in process CPU time, which counts
the decoder's own threads too: clips per CPU-second is clips per second per core. Prints the median of
``--repeats`` timed decodes after one warm-up, and the largest pixel difference between the two
decoders' frames (frame choice and resize both changed, so it is not 0). Never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from mmaudio import media

BEFORE_REV = "dd1cd22"  # main before the issue-15 decoder (fps=near frame choice, uint8 resize, streamed audio)
WIDTHS = {360: 640, 480: 854, 720: 1280, 1080: 1920}


def write_source(path: Path, height: int, seconds: float = 10.0, fps: int = 30) -> None:
    width = WIDTHS[height]
    rng = np.random.default_rng(height)
    texture = rng.integers(0, 256, (height, width + 8 * int(seconds * fps), 3), dtype=np.uint8)
    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        a_s = c.add_stream("aac", rate=rate)
        a_s.layout = "stereo"
        for i in range(int(seconds * fps)):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, 8 * i : 8 * i + width]), format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        stereo = np.stack([audio, audio])
        for k in range(0, stereo.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, k : k + 1024]), format="fltp", layout="stereo")
            f.sample_rate, f.pts = rate, k
            for p in a_s.encode(f):
                c.mux(p)
        for p in a_s.encode(None):
            c.mux(p)


def load_revision(rev: str):
    """``mmaudio/media.py`` as it was at git revision ``rev``, as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:mmaudio/media.py"], capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"media_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"media_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def decode(module, path: Path):
    return module.load_video_clip(path, duration_sec=8.0, specs=(module.CLIP_FRAMES, module.SYNC_FRAMES), audio_rate=16000)


def cpu_seconds(module, path: Path, repeats: int) -> float:
    decode(module, path)  # warm-up: kernels, resampler cache, page cache
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        decode(module, path)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=BEFORE_REV)
    ap.add_argument("--heights", default="360,720,1080")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="folder for the generated sources (default: a temp folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    before = load_revision(args.before)
    rows = []
    for h in (int(x) for x in args.heights.split(",")):
        src = out / f"src_{h}p.mp4"
        if not src.is_file():
            write_source(src, h)
        old = cpu_seconds(before, src, args.repeats)
        new = cpu_seconds(media, src, args.repeats)
        a, b = decode(before, src), decode(media, src)
        diff = max(int((a.frames[k].int() - b.frames[k].int()).abs().max()) for k in ("clip", "sync"))
        rows.append((h, old, new, diff))
    print(f"torch {torch.__version__}, PyAV {av.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"| source | before ({args.before}) CPU-s/clip | clips/s/core | after CPU-s/clip | clips/s/core | speed-up | max pixel diff |")
    print("|---|---|---|---|---|---|---|")
    for h, old, new, diff in rows:
        print(f"| {WIDTHS[h]}x{h} | {old:.2f} | {1 / old:.2f} | {new:.2f} | {1 / new:.2f} | {old / new:.1f}x | {diff} |")


if __name__ == "__main__":
    sys.exit(main())
