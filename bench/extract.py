"""Video feature extraction throughput with official-size encoders (random weights, no files needed).

    python bench/extract.py --device cuda --num-clips 256 --batch-size 8 --num-workers 16
    python bench/extract.py --tiny --device cpu --num-clips 4 --num-workers 0   # smoke test

Clips are the example videos (generated into a temp folder unless --media-dir holds videos), repeated
to --num-clips. Three measurements:

1. decode: the DataLoader alone (PyAV decoding, frame resizing, audio resampling), clips/s;
2. encoders alone on one decoded batch kept on the device: time per clip of CLIP (64 frames at 384 px),
   Synchformer (200 frames at 224 px), the VAE (mel + encoder) and the text encoder;
3. the pipeline as the extraction stages run it (decoding workers overlapping the encoders), clips/s
   and the fraction of wall time the GPU spent in encoder work (CUDA events around each call).
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmaudio.clip_sources import ClipBatch, ClipRow, VideoClipDataset, collate_clips  # noqa: E402
from mmaudio.encoders.clip import CLIPEncoder, build_clip  # noqa: E402
from mmaudio.encoders.mel import MelConverter  # noqa: E402
from mmaudio.encoders.synchformer import build_synchformer_visual  # noqa: E402
from mmaudio.encoders.vae import AudioVAE, waveform_to_latent  # noqa: E402
from mmaudio.extraction import AUDIO_SPECS, DURATION_SEC  # noqa: E402
from mmaudio.media_index import VIDEO_SUFFIXES  # noqa: E402


class Timer:
    """Accumulates the time of named sections: CUDA events on a GPU (device time), wall time on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending: list[tuple[str, object, object]] = []
        self.totals: dict[str, float] = {}

    @contextmanager
    def section(self, name: str):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def collect(self) -> dict[str, float]:
        """Seconds per section (synchronises the device)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            for name, start, end in self.pending:
                self.totals[name] = self.totals.get(name, 0.0) + start.elapsed_time(end) / 1000.0
            self.pending.clear()
        return dict(self.totals)


class RandomEncoders:
    """The four encoders of video extraction at official (or tiny) size with random weights."""

    def __init__(self, mode: str, tiny: bool, device: torch.device, timer: Timer):
        self.device, self.timer = device, timer
        with torch.device(device):
            self.clip = CLIPEncoder("tiny" if tiny else "official", model=build_clip("tiny" if tiny else "official", device=device))
            self.sync = build_synchformer_visual("tiny" if tiny else "official", device=device)
            self.mel = MelConverter(mode)
            self.vae = AudioVAE(f"tiny_{mode}" if tiny else mode).eval().requires_grad_(False)
        self.clip.to(device)

    @torch.inference_mode()
    def encode_audio(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.timer.section("vae"):
            return tuple(waveform_to_latent(wave.to(self.device), self.mel, self.vae))

    @torch.inference_mode()
    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor:
        with self.timer.section("clip"):
            return self.clip.encode_image(frames.to(self.device, non_blocking=True))  # uint8: normalised per chunk

    @torch.inference_mode()
    def encode_sync(self, frames: torch.Tensor) -> torch.Tensor:
        with self.timer.section("synchformer"):
            return self.sync.encode_sync(frames.to(self.device))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with self.timer.section("text"):
            return self.clip.encode_text(texts)


def encode(enc: RandomEncoders, batch: ClipBatch) -> None:
    enc.encode_audio(batch.audio)
    enc.encode_clip(batch.clip_frames)
    enc.encode_sync(batch.sync_frames)
    enc.encode_text(batch.texts)


def video_rows(media_dir: Path, num_clips: int) -> list[ClipRow]:
    files = sorted(p for p in media_dir.iterdir() if p.suffix in VIDEO_SUFFIXES)
    if not files:
        raise SystemExit(f"no videos in {media_dir}")
    return [ClipRow(f"{files[i % len(files)].stem}_{i}", "a sound", str(files[i % len(files)])) for i in range(num_clips)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num-clips", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=8)
    ap.add_argument("--mode", choices=sorted(AUDIO_SPECS), default="16k")
    ap.add_argument("--tiny", action="store_true", help="tiny encoders (a CPU smoke test)")
    ap.add_argument("--no-tf32", action="store_true", help="full fp32 matmuls (upstream extracts with TF32)")
    ap.add_argument("--media-dir", type=Path, default=None, help="videos to decode (default: the generated examples)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.benchmark = True
    media_dir = args.media_dir
    if media_dir is None:
        from mmaudio.examples import generate_examples

        media_dir = Path(tempfile.mkdtemp(prefix="bench-extract-")) / "examples"
        generate_examples(media_dir, seed=0)
        media_dir = media_dir / "video"
    spec = AUDIO_SPECS[args.mode]
    dataset = VideoClipDataset(
        video_rows(media_dir, args.num_clips), sample_rate=spec.sample_rate, num_samples=spec.num_samples,
        duration_sec=DURATION_SEC, normalize_audio=True,
    )

    def loader():
        return torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_clips,
            pin_memory=device.type == "cuda", persistent_workers=False,
        )

    # 1. decoding alone
    t0 = time.perf_counter()
    first: ClipBatch | None = None
    n_dec = 0
    for batch in loader():
        first = first or batch
        n_dec += len(batch)
    decode_s = time.perf_counter() - t0
    if first is None or len(first) == 0:
        raise SystemExit("nothing decoded")

    # 2. encoders alone, on one batch already decoded
    timer = Timer(device)
    t0 = time.perf_counter()
    enc = RandomEncoders(args.mode, args.tiny, device, timer)
    build_s = time.perf_counter() - t0
    encode(enc, first)  # warm-up (cuDNN autotuning, allocator)
    timer.collect()
    timer.totals.clear()
    reps = max(1, 32 // len(first)) if device.type == "cuda" else 1
    for _ in range(reps):
        encode(enc, first)
    per_clip = {k: v / (reps * len(first)) for k, v in timer.collect().items()}

    # 3. the pipeline: decoding workers overlap the encoders
    timer.totals.clear()
    t0 = time.perf_counter()
    n = 0
    for batch in loader():
        if len(batch):
            encode(enc, batch)
            n += len(batch)
    busy = sum(timer.collect().values())
    wall = time.perf_counter() - t0

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nvideo extraction, {'tiny' if args.tiny else 'official-size'} encoders, mode {args.mode}, {name}, "
          f"batch {args.batch_size}, {args.num_workers} decode workers, {n} clips, encoders built in {build_s:.1f} s")
    print(f"{'stage':<22}{'ms / clip':>12}{'clips / s':>12}")
    print(f"{'decode (loader only)':<22}{1000 * decode_s / n_dec:>12.1f}{n_dec / decode_s:>12.2f}")
    for k in ("clip", "synchformer", "vae", "text"):
        print(f"{k:<22}{1000 * per_clip[k]:>12.1f}{1 / per_clip[k]:>12.2f}")
    enc_total = sum(per_clip.values())
    print(f"{'encoders together':<22}{1000 * enc_total:>12.1f}{1 / enc_total:>12.2f}")
    print(f"{'pipeline':<22}{1000 * wall / n:>12.1f}{n / wall:>12.2f}")
    print(f"GPU busy fraction in the pipeline: {busy / wall:.2f}" if device.type == "cuda"
          else f"encoder share of the pipeline's wall time: {busy / wall:.2f}")


if __name__ == "__main__":
    main()
