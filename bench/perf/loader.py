"""Loader throughput: random-order batches from a synthetic small_16k video feature set written in the
data contract's format, once stored float32 and once bfloat16 (the same rows).

    python bench/perf/loader.py --out bench/out                             # GPU machine: 20 GB fp32 + 10 GB bf16
    python bench/perf/loader.py --size-gb 0.3 --steps 4 --max-seconds 0.5   # CPU smoke test (< 1 minute)
    python bench/perf/loader.py --dir /data/lb --skip-write                 # reuse sets written by an earlier run

Loaders, each with the page cache warm and cold:
  ours      mmaudio.training.loader.TrainLoader with 0 (read in the loop), 1 or 2 reader threads; it
            delivers float32 batches on the device (pinned memory, side-stream copy, bf16 cast there).
            One set: one index_select per key and batch.
  ours-mixed  the same with the set registered twice, so batches mix two sources as the training mix
            does and rows are copied one by one (2 threads)
  per-item  upstream's pattern: a Dataset returning one memmap row per __getitem__, default collate,
            DataLoader with 0 or 10 worker processes (upstream's setting, pin_memory=False), then
            .to(device, non_blocking=True)
  batched   one process, one indexing call per key (FeatureSet.rows), into CPU memory only
and 1, 2 and 4 of our loaders (2 threads each) in separate processes, each rank r of 4 with its own
slice of a global batch of 4 x --batch, reading at the same time as 4 ranks on one host would.

Every measurement runs in a fresh forked process (the parent never maps the data, so evicting the
files really empties the cache). Warm: the set is read through once and stays cached (it must fit in
RAM). Cold: `echo 1 > /proc/sys/vm/drop_caches` when permitted, else posix_fadvise(DONTNEED) on every
file of the set after an fdatasync; the table header says which, and how much of the set was still
resident (mincore) before the cold runs. Each loader warms up (threads, pinned buffers, DataLoader
workers and their prefetched backlog) before the clock starts; the timed part stops after --steps
batches or --max-seconds. samples/s and GB/s (storage bytes read) are per loader; "x step" divides
samples/s by --consumption, what one training step consumes (targets: >= 3 for one loader with <= 2
workers, >= 1.5 for each of 4 concurrent loaders). Intra-op threads per process: --torch-threads
(default 1, as torchrun sets OMP_NUM_THREADS=1), so "workers" counts the cores a loader uses.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import mmap
import multiprocessing as mp
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mmaudio.features import STORAGE_DTYPES, FeatureSet, FeatureSetWriter, feature_shapes  # noqa: E402
from mmaudio.training.loader import TrainLoader, TrainSource, rank_slice  # noqa: E402

# imported here, once: the forked measurement processes inherit it instead of importing it each
import tensordict  # noqa: E402, F401

MODE, KIND = "16k", "video"
SHAPES = feature_shapes(MODE, KIND)
CHUNK_ROWS = 64  # rows per append while writing (~77 MB float32)
STAMP_BASE = 128  # row ids are stamped into mean[:, 0, :3] as base-128 digits: exact in bfloat16
FORK = mp.get_context("fork")


def row_bytes(dtype: str) -> int:
    itemsize = torch.empty(0, dtype=STORAGE_DTYPES[dtype]).element_size()
    return itemsize * sum(math.prod(s) for s in SHAPES.values())


def log(msg: str) -> None:
    print(msg, flush=True)


# -- writing ---------------------------------------------------------------------------------------


def stamp(mean: torch.Tensor, first_row: int) -> None:
    """Write the row ids first_row.. into mean[:, 0, :3] (base-128 digits)."""
    rows = torch.arange(first_row, first_row + mean.shape[0])
    for d in range(3):
        mean[:, 0, 2 - d] = (rows // STAMP_BASE**d % STAMP_BASE).float()


def unstamp(mean: torch.Tensor) -> torch.Tensor:
    digits = mean[:, 0, :3].float().round().long().cpu()  # (b, 3)
    return digits[:, 0] * STAMP_BASE**2 + digits[:, 1] * STAMP_BASE + digits[:, 2]


def write_set(path: Path, rows: int, dtype: str) -> None:
    """Stream ``rows`` rows through the project's FeatureSetWriter, CHUNK_ROWS at a time."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # one random chunk reused for every append; only the stamped ids differ (loader speed does not
    # depend on the values, and the RNG would otherwise dominate the write time)
    base = {k: torch.randn((CHUNK_ROWS, *s), generator=g) for k, s in SHAPES.items()}
    base["std"] = base["std"].abs() * 0.1
    with FeatureSetWriter(path, mode=MODE, kind=KIND, num_rows=rows, storage_dtype=dtype,
                          info={"dataset": "loader-bench"}) as w:
        for lo in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - lo)
            stamp(base["mean"], lo)
            w.append({k: v[:n] for k, v in base.items()})
        w.commit([f"r{i:07d}" for i in range(rows)], ["synthetic"] * rows)


# -- page cache ------------------------------------------------------------------------------------


def set_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def warm(path: Path) -> float:
    """Read every file of the set once; returns GB/s."""
    buf = bytearray(64 << 20)
    total, t0 = 0, time.perf_counter()
    for p in set_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total / (time.perf_counter() - t0) / 1e9


def evict(path: Path) -> str:
    """Empty the page cache of the set; returns the method used."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        if resident_fraction(path) < 0.01:
            return "drop_caches"
        method = "posix_fadvise(DONTNEED) (drop_caches was accepted but left the set cached)"
    except OSError:  # not root, or /proc/sys read-only in a container
        method = "posix_fadvise(DONTNEED)"
    for p in set_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return method


_libc = ctypes.CDLL(None, use_errno=True)


def resident_fraction(path: Path) -> float:
    """Share of the set's bytes in the page cache (mincore on a private, untouched mapping)."""
    page = mmap.PAGESIZE
    resident = total = 0
    for p in set_files(path):
        size = p.stat().st_size
        if size == 0:
            continue
        n = (size + page - 1) // page
        vec = (ctypes.c_ubyte * n)()
        with open(p, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            start = ctypes.c_char.from_buffer(mm)
            rc = _libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec)
            del start  # the mapping cannot close while ctypes holds a pointer into it
            if rc:
                raise OSError(ctypes.get_errno(), f"mincore failed on {p}")
        resident += (n - bytes(vec).count(0)) * page
        total += n * page
    return resident / max(total, 1)


# -- one measurement (runs in a forked child) ------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    loader: str  # ours | per-item | batched
    workers: int
    dtype: str
    cache: str  # warm | cold
    concurrent: int = 1  # loaders reading at once, as ranks 0.. of `world`
    world: int = 1  # ranks sharing each global batch


@dataclass
class Result:
    spec: Spec
    samples_per_s: list[float]  # one per concurrent loader
    steps: int
    seconds: float  # wall time of the measurement, process start to end
    device: str
    delivers: str
    notes: list[str] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(next_batch, device: torch.device, warmup: int, steps: int, max_seconds: float, start=None,
           min_steps: int = 2) -> tuple[int, float]:
    for _ in range(warmup):
        next_batch()
    _sync(device)
    if start is not None:
        start.wait()  # concurrent loaders start their clocks together
    t0 = time.perf_counter()
    done = 0
    while done < steps and (done < min_steps or time.perf_counter() - t0 < max_seconds):
        next_batch()
        done += 1
    _sync(device)
    return done, time.perf_counter() - t0


class PerItemDataset(torch.utils.data.Dataset):
    """Upstream's ExtractedVGG pattern: one row of every key per __getitem__, collated by default."""

    def __init__(self, features):
        self.features = features
        self.keys = list(SHAPES)
        self.video_exist = torch.tensor(True)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        item = {k: self.features.td[k][i] for k in self.keys}
        return {"id": self.features.ids[i], "caption": self.features.texts[i], **item, "video_exist": self.video_exist}


def measure(
    spec: Spec, args: argparse.Namespace, path: Path, rank: int, world: int, start
) -> tuple[int, float, str, str, list[str]]:
    """Steps timed, seconds, device, where batches end up, notes."""
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    device = _device(args.device)
    fs = FeatureSet.open(path, mode=MODE, kind=KIND)
    epoch_batches = len(fs) // (args.batch * world)
    notes: list[str] = []
    if spec.loader in ("ours", "ours-mixed"):
        sources = [TrainSource("bench", fs)]
        if spec.loader == "ours-mixed":  # the set again as a second source: batches mix, rows copy one by one
            sources.append(TrainSource("bench-again", FeatureSet.open(path, mode=MODE, kind=KIND)))
        loader = TrainLoader(sources, mode=MODE, global_batch_size=args.batch * world, rank=rank,
                             world_size=world, seed=0, device=device, prefetch=2 if spec.workers else 0,
                             workers=max(spec.workers, 1))
        warmup = 2 * spec.workers + 1  # threads started, pinned buffers allocated, the queues full
        steps = _steps(spec, args, warmup, epoch_batches, notes)
        last: list = []

        def next_batch():
            last[:] = [loader.next()]

        done, dt = _timed(next_batch, device, warmup, steps, args.max_seconds, start)
        # the last batch must hold the rows the loader's order names (the stamps carry the row ids)
        g = loader.epoch * loader.steps_per_epoch + loader.step_in_epoch - 1
        _, row = loader.global_rows(*divmod(g, loader.steps_per_epoch))
        want = row[rank_slice(args.batch * world, args.batch, rank)]
        batch = last[0]
        if not torch.equal(unstamp(batch.latent_mean), want) or batch.clip_features.dtype != torch.float32:
            raise RuntimeError(f"{path}: the loader delivered the wrong rows or dtype")
        loader.close()
        delivers = f"{device.type} float32"
    elif spec.loader == "per-item":
        warmup = 2 * spec.workers + 2  # drains the backlog the workers prefetch (2 batches each)
        # workers deliver in bursts of about one batch each: time several bursts
        steps = _steps(spec, args, warmup, epoch_batches, notes, at_least=4 * spec.workers)
        sampler = torch.utils.data.RandomSampler(range(len(fs)), num_samples=(warmup + steps) * args.batch,
                                                 generator=torch.Generator().manual_seed(rank))
        dl = torch.utils.data.DataLoader(PerItemDataset(fs), batch_size=args.batch, sampler=sampler,
                                         num_workers=spec.workers, drop_last=True, pin_memory=False,
                                         persistent_workers=spec.workers > 0)
        it = iter(dl)

        def next_batch():
            data = next(it)
            return {k: v.to(device, non_blocking=True).float() for k, v in data.items() if k in SHAPES}

        done, dt = _timed(next_batch, device, warmup, steps, args.max_seconds, start)
        del it, dl
        delivers = f"{device.type} float32"
    elif spec.loader == "batched":
        warmup = 1
        steps = _steps(spec, args, warmup, epoch_batches, notes)
        g = torch.Generator().manual_seed(rank)
        epochs = -(-(warmup + steps) * args.batch // len(fs))
        order = torch.cat([torch.randperm(len(fs), generator=g) for _ in range(epochs)])
        pos = [0]

        def next_batch():
            idx = order[pos[0] : pos[0] + args.batch].sort().values
            pos[0] += args.batch
            return fs.rows(idx, dtype=None)

        done, dt = _timed(next_batch, torch.device("cpu"), warmup, steps, args.max_seconds, start)
        delivers = f"cpu {spec.dtype}"
    else:
        raise ValueError(f"unknown loader {spec.loader!r}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return done, dt, name, delivers, notes


def _steps(spec: Spec, args: argparse.Namespace, warmup: int, epoch_batches: int, notes: list[str],
           at_least: int = 0) -> int:
    steps = max(args.steps, at_least)
    if spec.cache == "cold" and warmup + steps > epoch_batches:
        # more would reread rows this process already pulled into the cache
        notes.append(f"cold run capped by the set size ({epoch_batches} batches per epoch)")
        return max(2, epoch_batches - warmup)
    return steps


def _child(spec: Spec, args: argparse.Namespace, path: Path, rank: int, world: int, start, conn: Connection) -> None:
    try:
        conn.send(("ok", measure(spec, args, path, rank, world, start)))
    except BaseException:  # reported by the parent, which fails the run with it
        start.abort()  # the other loaders of this run stop waiting for this one
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run(spec: Spec, args: argparse.Namespace, path: Path) -> Result:
    """One measurement: ``spec.concurrent`` forked processes, ranks 0.. of ``spec.world``."""
    start = FORK.Barrier(spec.concurrent)
    t0 = time.perf_counter()
    procs, conns = [], []
    for rank in range(spec.concurrent):
        recv, send = FORK.Pipe(duplex=False)
        p = FORK.Process(target=_child, args=(spec, args, path, rank, spec.world, start, send))
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    outs = [c.recv() for c in conns]
    for p in procs:
        p.join()
    for status, payload in outs:
        if status != "ok":
            raise RuntimeError(f"{spec} failed in its process:\n{payload}")
    rates = [done * args.batch / dt for done, dt, *_ in [o[1] for o in outs]]
    done, _, device, delivers, notes = outs[0][1]
    return Result(spec, rates, done, time.perf_counter() - t0, device, delivers, notes)


# -- the run ---------------------------------------------------------------------------------------


def plan(dtype: str, cache: str, args: argparse.Namespace) -> list[Spec]:
    specs = [Spec("ours", w, dtype, cache) for w in args.workers]
    specs.append(Spec("ours-mixed", max(args.workers), dtype, cache))
    specs += [Spec("per-item", w, dtype, cache) for w in args.per_item_workers]
    specs.append(Spec("batched", 0, dtype, cache))
    return specs + [Spec("ours", max(args.workers), dtype, cache, concurrent=n, world=4) for n in args.concurrent]


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def table(results: list[Result], consumption: float) -> str:
    lines = ["| storage | cache | loader | workers | loaders at once | delivers | samples/s per loader | "
             "GB/s per loader | GB/s all loaders | x step | steps | notes |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        s = r.spec
        per = min(r.samples_per_s)  # the slowest loader decides when a synchronous step can run
        gb = row_bytes(s.dtype) / 1e9
        at_once = f"{s.concurrent} (ranks of {s.world})" if s.world > 1 else "1"
        lines.append(f"| {s.dtype} | {s.cache} | {s.loader} | {s.workers} | {at_once} | {r.delivers} | {per:,.0f} | "
                     f"{per * gb:.2f} | {sum(r.samples_per_s) * gb:.2f} | {per / consumption:.2f} | {r.steps} | "
                     f"{'; '.join(r.notes)} |")
    return "\n".join(lines)


def fs_type(path: Path) -> str:
    """File system type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    real = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount = parts[1]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=20.0, help="size of the float32 set (the bf16 set is half)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the sets live (default: a temp folder in the repo, on its disk, removed at the end)")
    ap.add_argument("--skip-write", action="store_true", help="reuse the sets in --dir")
    ap.add_argument("--batch", type=int, default=256, help="rows per batch and rank")
    ap.add_argument("--steps", type=int, default=40, help="timed batches per measurement (at most)")
    ap.add_argument("--max-seconds", type=float, default=2.5, help="time limit of the timed part of a measurement")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--caches", default="warm,cold")
    ap.add_argument("--workers", type=int_list, default=[0, 1, 2], help="our loader's reader threads")
    ap.add_argument("--per-item-workers", type=int_list, default=[0, 10], help="DataLoader worker processes")
    ap.add_argument("--concurrent", type=int_list, default=[1, 2, 4], help="our loaders reading at once (of 4 ranks)")
    ap.add_argument("--consumption", type=float, default=1900.0,
                    help="samples/s the training step consumes (small_16k, batch 256, one H100/H200)")
    ap.add_argument("--device", default="auto", help="where our loader and the DataLoader deliver: auto | cuda | cpu")
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per process (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to DIR/loader.md")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    caches = args.caches.split(",")
    for d in dtypes:
        if d not in STORAGE_DTYPES:
            ap.error(f"--dtypes: unknown dtype {d!r}; expected some of {sorted(STORAGE_DTYPES)}")
    for c in caches:
        if c not in ("warm", "cold"):
            ap.error(f"--caches: unknown {c!r}; expected warm and/or cold")
    if args.skip_write and args.dir is None:
        ap.error("--skip-write needs --dir")

    t_start = time.perf_counter()
    phases: list[tuple[str, float]] = []
    temp = args.dir is None
    root = Path(tempfile.mkdtemp(prefix=".loader-bench-", dir=REPO)) if temp else args.dir
    root.mkdir(parents=True, exist_ok=True)
    paths = {d: root / d for d in dtypes}
    try:
        if args.skip_write:
            for d, p in paths.items():
                info_file = p / "info.json"
                if not info_file.is_file():
                    raise SystemExit(f"--skip-write: {p} holds no feature set (no info.json)")
                if json.loads(info_file.read_text()).get("storage_dtype") != d:
                    raise SystemExit(f"--skip-write: {p} is not stored as {d}")
            rows = json.loads((paths[dtypes[0]] / "info.json").read_text())["rows"]
        else:
            rows = max(1, math.ceil(args.size_gb * 1e9 / row_bytes("float32")))
            t0 = time.perf_counter()
            writers = [FORK.Process(target=write_set, args=(p, rows, d)) for d, p in paths.items()]
            for w in writers:
                w.start()
            for w in writers:
                w.join()
                if w.exitcode != 0:
                    raise SystemExit(f"writing a synthetic set under {root} failed (exit code {w.exitcode})")
            dt = time.perf_counter() - t0
            gb = sum(rows * row_bytes(d) for d in dtypes) / 1e9
            phases.append(("write", dt))
            log(f"[write] {rows} rows x {dtypes} = {gb:.1f} GB in {dt:.1f} s ({gb / dt:.2f} GB/s) under {root}")
        if rows < 4 * args.batch:
            # the 4-rank runs need a global batch of 4 x --batch inside one epoch
            new = rows // 4
            log(f"NOTE: --batch {args.batch} needs at least {4 * args.batch} rows for the 4-rank runs; the set has "
                f"{rows}: using --batch {new}")
            args.batch = new
        kind = fs_type(root)
        if kind in ("tmpfs", "ramfs"):
            log(f"WARNING: {root} is on {kind}: the data never leaves RAM, 'cold' is not cold")

        results: list[Result] = []
        header: list[str] = []
        for d in dtypes:
            for cache in caches:
                specs = plan(d, cache, args)
                if cache == "warm":
                    t0 = time.perf_counter()
                    rate = warm(paths[d])
                    phases.append((f"warm {d}", time.perf_counter() - t0))
                    res = resident_fraction(paths[d])
                    header.append(f"{d}: read once at {rate:.2f} GB/s to warm the cache; {res:.0%} resident")
                    log(f"[warm {d}] {rate:.2f} GB/s, {res:.0%} resident")
                for spec in specs:
                    note = ""
                    if cache == "cold":
                        t0 = time.perf_counter()
                        method = evict(paths[d])
                        res = resident_fraction(paths[d])
                        phases.append((f"evict {d}", time.perf_counter() - t0))
                        note = f", evicted by {method} ({res:.1%} resident) in {time.perf_counter() - t0:.1f} s"
                        header.append(f"cold {d}: {method}, {res:.1%} of the set resident before a run")
                    r = run(spec, args, paths[d])
                    results.append(r)
                    phases.append((f"{d} {cache} {spec.loader} w{spec.workers} x{spec.concurrent}", r.seconds))
                    log(f"[{d} {cache}] {spec.loader} workers={spec.workers} at once={spec.concurrent}: "
                        f"{', '.join(f'{x:,.0f}' for x in r.samples_per_s)} samples/s, {r.steps} steps, "
                        f"{r.seconds:.1f} s{note}")
        total = time.perf_counter() - t_start
        devices = sorted({r.device for r in results})
        gb_set = rows * row_bytes("float32") / 1e9
        head = [
            f"# Loader benchmark ({datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z})",
            "",
            f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
            f"- device: {', '.join(devices)}; {os.cpu_count()} CPU cores; torch {torch.__version__}; "
            f"intra-op threads per process: {args.torch_threads or 'torch default'}",
            f"- set: small_16k video, {rows} rows, {gb_set:.1f} GB float32 / {gb_set / 2:.1f} GB bfloat16 "
            f"({row_bytes('float32') / 1e6:.3f} / {row_bytes('bfloat16') / 1e6:.3f} MB per row), on {kind} at {root}",
            f"- batch {args.batch} per loader; step consumption {args.consumption:,.0f} samples/s (x step = samples/s "
            f"per loader / that; with several loaders, the slowest one's)",
            "- workers: reader threads in the training process (ours), DataLoader worker processes (per-item)",
            *[f"- {h}" for h in dict.fromkeys(header)],
            f"- total {total:.0f} s; phases: " + ", ".join(f"{n} {t:.1f} s" for n, t in phases),
            "",
        ]
        text = "\n".join(head) + "\n" + table(results, args.consumption) + "\n"
        print()
        print(text)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "loader.md").write_text(text)
            log(f"wrote {args.out / 'loader.md'}")
    finally:
        if temp:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
