"""Video feature extraction throughput with official-size encoders (random weights, no files needed).

    python bench/perf/extract.py --out bench/results          # GPU: 4 configurations, ~4 min on one H100/H200
    python bench/perf/extract.py --configs amp=0,batch=8,workers=12 amp=1,batch=16,workers=14 --num-clips 160
    python bench/perf/extract.py --tiny --device cpu --num-clips 6 --configs amp=0,batch=2,workers=1   # smoke test

Clips are the example videos (generated into a temp folder unless --media-dir holds videos), repeated
to --num-clips. For each configuration (bf16 autocast on/off, batch size, decoding workers) the clips
go through the pipeline exactly as the extraction stages run it (mmaudio.extraction: decoding
workers, the feeder thread that stacks batches into page-locked memory and copies them on a side
stream, the encoders, asynchronous copies back). The first --warmup-batches batches (workers
starting, cuDNN autotuning, the first clips' decoding) are left out; over the rest (steady state):

- clips/s: clips of the window / wall time from the arrival of its first batch to the end of its GPU work;
- GPU busy: time inside encoder calls (CUDA events around each) / GPU time from the start of the
  window's first encoder call to the end of its last;
- loader wait: time the main thread waited for a batch (> 0 means decoding did not keep up);
- CLIP, Synchformer, VAE (mel + encoder), text: GPU ms per clip from the same events.

Decoding alone (the DataLoader with no encoders) is measured once per worker count: clips/s of all
workers together and seconds per clip per worker. Timings are printed, never asserted. On a CPU the
"GPU busy" column is the encoders' share of the wall time.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmaudio.segments import ClipBatch, ClipRow, VideoClipDataset  # noqa: E402
from mmaudio.encoders.clip import CLIPEncoder, build_clip  # noqa: E402
from mmaudio.encoders.feature_encoders import bf16_autocast  # noqa: E402
from mmaudio.encoders.mel import MelConverter  # noqa: E402
from mmaudio.encoders.synchformer import build_synchformer_visual  # noqa: E402
from mmaudio.encoders.vae import AudioVAE, waveform_to_latent  # noqa: E402
from mmaudio.extraction.pipeline import DeviceBatches, decode_plan, encode_batch, make_loader  # noqa: E402
from mmaudio.choices import choice_values  # noqa: E402
from mmaudio.modes import AudioMode, mode_spec  # noqa: E402
from mmaudio.media_index import VIDEO_SUFFIXES  # noqa: E402

SECTIONS = ("clip", "synchformer", "vae", "text")
DEFAULT_GPU_CONFIGS = ("amp=0,batch=8,workers=12", "amp=1,batch=8,workers=12", "amp=1,batch=16,workers=12",
                       "amp=1,batch=8,workers=14")


@dataclass(frozen=True)
class BenchConfig:
    amp: bool
    batch_size: int
    num_workers: int

    @classmethod
    def parse(cls, text: str) -> "BenchConfig":
        """'amp=1,batch=8,workers=12' (every key required)."""
        try:
            kv = dict(item.split("=", 1) for item in text.split(","))
            cfg = cls(amp=kv.pop("amp") in ("1", "true", "on"), batch_size=int(kv.pop("batch")), num_workers=int(kv.pop("workers")))
        except (KeyError, ValueError) as e:
            raise SystemExit(f"--configs: cannot read {text!r} ({e}); write amp=0|1,batch=N,workers=N")
        if kv:
            raise SystemExit(f"--configs: unknown keys {sorted(kv)} in {text!r}")
        return cfg

    def __str__(self) -> str:
        return f"amp={int(self.amp)},batch={self.batch_size},workers={self.num_workers}"


class Timer:
    """Times named sections, tagged with the current batch: CUDA events on a GPU, wall time on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.batch = 0
        self.records: list[tuple[int, str, object, object]] = []  # (batch, name, start, end)

    def _now(self) -> object:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextmanager
    def section(self, name: str):
        start = self._now()
        yield
        self.records.append((self.batch, name, start, self._now()))

    def elapsed(self, start: object, end: object) -> float:
        """Seconds between two marks (events must have completed: synchronise first)."""
        if self.device.type == "cuda":
            return start.elapsed_time(end) / 1000.0
        return end - start


class RandomEncoders:
    """The four encoders of video extraction at official (or tiny) size with random weights, timed
    per call; the same interface and arithmetic as mmaudio.encoders.feature_encoders.FeatureEncoders."""

    def __init__(self, mode: str, tiny: bool, device: torch.device, timer: Timer):
        self.device, self.timer, self.amp = device, timer, False
        preset = "tiny" if tiny else "official"
        self.clip = CLIPEncoder(preset, model=build_clip(preset, device=device, seed=0)).to(device)
        self.sync = build_synchformer_visual(preset, device=device, seed=0).eval()
        self.mel = MelConverter(mode).to(device)
        with torch.device(device):
            self.vae = AudioVAE(f"tiny_{mode}" if tiny else mode).eval().requires_grad_(False)

    @torch.inference_mode()
    def encode_audio(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.timer.section("vae"):
            return tuple(waveform_to_latent(wave.to(self.device), self.mel, self.vae))

    @torch.inference_mode()
    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor:
        with self.timer.section("clip"), bf16_autocast(self.device, self.amp):
            return self.clip.encode_image(frames).float()

    @torch.inference_mode()
    def encode_sync(self, frames: torch.Tensor) -> torch.Tensor:
        with self.timer.section("synchformer"), bf16_autocast(self.device, self.amp):
            return self.sync.encode_sync(frames).float()

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with self.timer.section("text"):
            return self.clip.encode_text(texts)


def video_rows(media_dir: Path, num_clips: int) -> list[ClipRow]:
    files = sorted(p for p in media_dir.iterdir() if p.suffix in VIDEO_SUFFIXES)
    if not files:
        raise SystemExit(f"no videos in {media_dir}")
    return [ClipRow(f"{files[i % len(files)].stem}_{i}", "a sound", str(files[i % len(files)])) for i in range(num_clips)]


def batch_plan(num_rows: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, num_rows))) for i in range(0, num_rows, batch_size)]


def measure_decode(dataset: VideoClipDataset, num_workers: int, batch_size: int) -> dict[str, float]:
    """The DataLoader alone, as extraction plans it: clips/s of all workers together."""
    chunks, _ = decode_plan(batch_plan(len(dataset), batch_size), "video")
    t0 = time.perf_counter()
    n = sum(len(b) for b in make_loader(dataset, chunks, batch_size, num_workers))
    seconds = time.perf_counter() - t0
    return {"clips": n, "clips_per_s": n / seconds, "s_per_clip_per_worker": seconds * max(1, num_workers) / n}


def measure_pipeline(dataset: VideoClipDataset, enc: RandomEncoders, cfg: BenchConfig, warmup_batches: int) -> dict[str, float]:
    """Steady-state throughput of the extraction pipeline under ``cfg``."""
    device, timer = enc.device, enc.timer
    enc.amp = cfg.amp
    timer.records.clear()
    plan = batch_plan(len(dataset), cfg.batch_size)
    if len(plan) <= warmup_batches:
        raise SystemExit(f"{cfg}: {len(plan)} batches leave nothing after {warmup_batches} warm-up batches; raise --num-clips")
    chunks, chunks_per_batch = decode_plan(plan, "video")
    loader = make_loader(dataset, chunks, cfg.batch_size, cfg.num_workers)
    waits: list[float] = []
    arrivals: list[float] = []
    sizes: list[int] = []
    with DeviceBatches(iter(loader), chunks_per_batch, device) as batches:
        for k in range(len(plan)):
            t = time.perf_counter()
            batch: ClipBatch = next(batches)
            arrivals.append(time.perf_counter())
            waits.append(arrivals[-1] - t)
            sizes.append(len(batch))
            timer.batch = k
            if len(batch):
                encode_batch(enc, batch, "video", device, torch.float32)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    end = time.perf_counter()
    steady = [r for r in timer.records if r[0] >= warmup_batches]
    clips = sum(sizes[warmup_batches:])
    per_clip = {name: sum(timer.elapsed(s, e) for _, n, s, e in steady if n == name) / clips for name in SECTIONS}
    busy = sum(timer.elapsed(s, e) for _, _, s, e in steady)
    if device.type == "cuda":
        span = timer.elapsed(steady[0][2], steady[-1][3])  # GPU timeline: first call's start to last call's end
    else:
        span = end - arrivals[warmup_batches]
    wall = end - arrivals[warmup_batches]
    return {
        "clips": clips,
        "clips_per_s": clips / wall,
        "gpu_busy": busy / span,
        "wait_ms_per_clip": 1000 * sum(waits[warmup_batches:]) / clips,
        **{f"{name}_ms": 1000 * v for name, v in per_clip.items()},
        "encoders_ms": 1000 * sum(per_clip.values()),
    }


def render(header: list[str], decode: dict[int, dict[str, float]], rows: list[tuple[BenchConfig, dict[str, float]]]) -> str:
    lines = [*header, "", "Decoding alone (DataLoader, no encoders):", "",
             "| workers | clips | clips/s | s / clip / worker |", "|---:|---:|---:|---:|"]
    for w, d in sorted(decode.items()):
        lines.append(f"| {w} | {d['clips']} | {d['clips_per_s']:.2f} | {d['s_per_clip_per_worker']:.2f} |")
    lines += ["", "Pipeline, steady state:", "",
              "| amp | batch | workers | clips | clips/s | GPU busy | loader wait ms/clip | CLIP ms/clip | "
              "Synchformer ms/clip | VAE ms/clip | text ms/clip | encoders ms/clip |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cfg, r in rows:
        lines.append(
            f"| {'bf16' if cfg.amp else 'off'} | {cfg.batch_size} | {cfg.num_workers} | {r['clips']} | {r['clips_per_s']:.2f} "
            f"| {100 * r['gpu_busy']:.1f}% | {r['wait_ms_per_clip']:.1f} | {r['clip_ms']:.1f} | {r['synchformer_ms']:.1f} "
            f"| {r['vae_ms']:.1f} | {r['text_ms']:.1f} | {r['encoders_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", nargs="+", default=None,
                    help=f"amp=0|1,batch=N,workers=N each (GPU default: {' '.join(DEFAULT_GPU_CONFIGS)})")
    ap.add_argument("--num-clips", type=int, default=96, help="clips per configuration")
    ap.add_argument("--warmup-batches", type=int, default=2, help="batches left out of the steady state")
    ap.add_argument("--mode", choices=choice_values(AudioMode), default="16k")
    ap.add_argument("--tiny", action="store_true", help="tiny encoders (a CPU smoke test)")
    ap.add_argument("--no-tf32", action="store_true", help="full fp32 matmuls (upstream extracts with TF32)")
    ap.add_argument("--sync-debug", action="store_true", help="warn at every host-device synchronisation (CUDA)")
    ap.add_argument("--media-dir", type=Path, default=None, help="videos to decode (default: the generated examples)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to OUT/extract.md")
    args = ap.parse_args()

    device = torch.device(args.device)
    configs = [BenchConfig.parse(c) for c in (args.configs or DEFAULT_GPU_CONFIGS)]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32  # cudnn.benchmark stays off, as in extraction
    media_dir = args.media_dir
    if media_dir is None:
        from mmaudio.examples import generate_examples

        media_dir = Path(tempfile.mkdtemp(prefix="bench-extract-")) / "examples"
        generate_examples(media_dir, seed=0)
        media_dir = media_dir / "video"
    spec = mode_spec(args.mode)
    dataset = VideoClipDataset(
        video_rows(media_dir, args.num_clips), sample_rate=spec.sample_rate, num_samples=spec.num_audio_samples,
        duration_sec=spec.duration_sec, normalize_audio=True,
    )

    decode = {w: measure_decode(dataset, w, configs[0].batch_size) for w in sorted({c.num_workers for c in configs})}
    t0 = time.perf_counter()
    enc = RandomEncoders(args.mode, args.tiny, device, Timer(device))
    build_s = time.perf_counter() - t0
    if args.sync_debug and device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
    rows = [(cfg, measure_pipeline(dataset, enc, cfg, args.warmup_batches)) for cfg in configs]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = [
        f"# Video extraction, {'tiny' if args.tiny else 'official-size'} encoders (random weights), mode {args.mode}",
        "",
        f"{name}, {torch.get_num_threads()} intra-op threads, {datetime.date.today()}, "
        f"TF32 {'n/a' if device.type != 'cuda' else 'off' if args.no_tf32 else 'on'}; "
        f"{args.num_clips} clips per configuration, first {args.warmup_batches} batches left out; encoders built in {build_s:.1f} s.",
        f"Command: python bench/perf/extract.py {' '.join(sys.argv[1:])}",
    ]
    table = render(header, decode, rows)
    print("\n" + table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "extract.md").write_text(table)
        print(f"written to {args.out / 'extract.md'}")


if __name__ == "__main__":
    main()
