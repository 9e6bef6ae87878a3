"""CPU time of a weight profile's encoders on one 8 s clip, per component and in total.

    python bench/perf/encoders_cpu.py [--profile tiny] [--mode 16k] [--threads 1] [--repeats 5]

One clip as extraction sees it: audio at the mode's rate (128000 / 353280 samples) -> mel -> VAE
(mean, std); 64 CLIP frames at 384 px (uint8); 200 Synchformer frames at 224 px (uint8); one caption.
Weights come from ``--root``/ext_weights/tiny (written first into a temp folder with
``--write-tiny``, the default when that folder is absent). Prints the median of ``--repeats`` timed
calls after one warm-up call; the load time of the encoders is printed apart. Never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mmaudio.choices import Profile, choice_values  # noqa: E402
from mmaudio.encoders.feature_encoders import FeatureEncoders  # noqa: E402
from mmaudio.encoders.profiles import get_profile  # noqa: E402
from mmaudio.encoders.tiny import write_tiny_weights  # noqa: E402
from mmaudio.modes import AudioMode  # noqa: E402

CAPTION = "a dog barks twice while a car passes by on a wet street"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection are not what a long extraction pays
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(encoders: FeatureEncoders, repeats: int, seed: int = 0) -> list[tuple[str, str, float]]:
    gen = torch.Generator().manual_seed(seed)
    wave = torch.rand(1, encoders.clip_samples, generator=gen) * 1.6 - 0.8  # (1, L)
    clip_frames = torch.randint(0, 256, (1, 64, 3, 384, 384), generator=gen, dtype=torch.uint8)
    sync_frames = torch.randint(0, 256, (1, 200, 3, 224, 224), generator=gen, dtype=torch.uint8)
    cases = [
        ("audio: mel + VAE", f"{tuple(wave.shape)} -> mean/std {tuple(encoders.encode_audio(wave)[0].shape)}",
         lambda: encoders.encode_audio(wave)),
        ("clip: 64 frames", f"{tuple(clip_frames.shape)} -> {tuple(encoders.encode_clip(clip_frames).shape)}",
         lambda: encoders.encode_clip(clip_frames)),
        ("sync: 200 frames", f"{tuple(sync_frames.shape)} -> {tuple(encoders.encode_sync(sync_frames).shape)}",
         lambda: encoders.encode_sync(sync_frames)),
        ("text: 1 caption", f"1 caption -> {tuple(encoders.encode_text([CAPTION]).shape)}",
         lambda: encoders.encode_text([CAPTION])),
    ]
    return [(name, shapes, median_seconds(fn, repeats)) for name, shapes, fn in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", choices=choice_values(Profile))
    parser.add_argument("--mode", default="16k", choices=choice_values(AudioMode))
    parser.add_argument("--root", default=None, help="repository root holding ext_weights/ (default: this repo)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="encoders_cpu_") as tmp:
        root = Path(args.root) if args.root else REPO
        profile = get_profile(args.profile)
        if profile.written_by is not None and not (root / profile.root).is_dir():
            root = Path(tmp)
            write_tiny_weights(root / profile.root, seed=0)
            print(f"(tiny weights written to {root / profile.root})")
        start = time.perf_counter()
        encoders = FeatureEncoders(args.profile, args.mode, root=root, components=("audio", "clip", "sync", "text"))
        load_seconds = time.perf_counter() - start
        rows = bench(encoders, args.repeats)

    width = max(len(r[0]) for r in rows)
    shape_width = max(len(r[1]) for r in rows)
    print(f"profile {args.profile}, mode {args.mode}, {args.threads} thread(s), median of {args.repeats}; "
          f"torch {torch.__version__}")
    print(f"{'component':<{width}}  {'shapes':<{shape_width}}  {'ms':>8}")
    for name, shapes, seconds in rows:
        print(f"{name:<{width}}  {shapes:<{shape_width}}  {seconds * 1e3:8.1f}")
    print(f"{'total per clip':<{width}}  {'':<{shape_width}}  {sum(r[2] for r in rows) * 1e3:8.1f}")
    print(f"(loading the encoders: {load_seconds * 1e3:.0f} ms, once per process)")


if __name__ == "__main__":
    main()
