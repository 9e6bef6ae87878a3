"""Feature extraction: rows -> encoder features in resumable shards -> one feature set.

The sorted row list is cut into shards of ``shard_size`` contiguous rows; shard k belongs to rank
``k % world_size``. Batches never span shards, so what a shard holds depends only on its rows and the
settings, never on how many processes ran: the merged set is the same for 1 or G processes.

Every finished shard is written into a work folder next to the output, ``<out>.work/``, as
``shard-00012.pt`` (tensors) and then ``shard-00012.json`` (ids, texts, rejects, fingerprint). The
json is written last, by rename, so its presence means the shard is whole. The fingerprint hashes the
shard's rows (ids, texts, file paths and the SHA-256 of each file's content), the settings that change
numbers (mode, profile, weights, device type, batch size, storage dtype, normalisation) and the code
that computes them, so a shard left by a different configuration is recomputed, never reused. A
killed run started again skips finished shards. After a barrier rank 0 merges the shards in order
into the feature set (written aside and renamed into place) and removes the work folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmaudio.clip_sources import (
    AudioClipDataset,
    ClipBatch,
    ClipRow,
    VideoClipDataset,
    audio_rows,
    collate_clips,
    merge_batches,
    video_rows,
)
from mmaudio.config import ConfigError, Params, find_repo_root
from mmaudio.distributed import DistContext, all_reduce_sum, barrier
from mmaudio.features import STORAGE_DTYPES, FeatureSetWriter, feature_shapes
from mmaudio.paths import clear_dir
from mmaudio.tables import log_reject_summary
from mmaudio.staging import put_unless_stopped, receive, send_async
from mmaudio.weights import load_weight_file, save_weight_file

log = logging.getLogger(__name__)

DURATION_SEC = 8.0  # what the model trains on


@dataclass(frozen=True)
class AudioSpec:
    sample_rate: int  # Hz
    num_samples: int  # per clip; 44.1 kHz uses 353280 (8.01 s), a multiple of the VAE's 1024-sample stride


AUDIO_SPECS: dict[str, AudioSpec] = {"16k": AudioSpec(16_000, 128_000), "44k": AudioSpec(44_100, 353_280)}

FINGERPRINT_VERSION = 2  # bump when the shard format or its meaning changes
# Modules whose code decides the numbers in a shard; their sources enter the fingerprint.
_CODE_FILES = ("media.py", "clip_sources.py", "extraction.py")
_CODE_DIRS = ("encoders",)


class Encoders(Protocol):
    """What extraction needs from the encoders (mmaudio.encoders.facade.FeatureEncoders)."""

    def encode_audio(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor: ...

    def encode_sync(self, frames: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


# -- shards ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # first row (inclusive)
    end: int  # last row (exclusive)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(num_rows: int, shard_size: int) -> list[Shard]:
    """Contiguous blocks of ``shard_size`` rows (the last one may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [Shard(k, s, min(s + shard_size, num_rows)) for k, s in enumerate(range(0, num_rows, shard_size))]


def shards_of_rank(shards: Sequence[Shard], rank: int, world_size: int) -> list[Shard]:
    """Round-robin: shard k goes to rank k % world_size, so ranks get the same amount of work."""
    return [s for s in shards if s.index % world_size == rank]


def batches_of(shard: Shard, batch_size: int) -> list[list[int]]:
    """Row indices of a shard in batches; a batch never crosses a shard boundary."""
    return [list(range(i, min(i + batch_size, shard.end))) for i in range(shard.start, shard.end, batch_size)]


class ContentHashes:
    """SHA-256 of file contents, the identity of every input in a fingerprint: a file replaced by
    another of the same size with its time stamps restored (``cp -p``, ``rsync -a``) changes it.

    Within one run a file is read once: the digest is kept per (path, device, inode, size, mtime,
    ctime), so the clips of one file cost one read. The cache lives only as long as this object (one
    extraction), never across runs. Reading is about 1 GB/s per thread; :meth:`prefetch` uses several.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, str] = {}

    def __call__(self, path: str | os.PathLike) -> str:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "missing"  # the decoder will reject it; a later appearance changes the fingerprint
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"  # reading a FIFO or a device would never end; the decoder rejects it
        key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self._cache:
            self._cache[key] = _sha256(Path(path))
        return self._cache[key]

    def prefetch(self, paths: Iterable[str | os.PathLike], threads: int = 4) -> None:
        unique = sorted({os.fspath(p) for p in paths})
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="content-hash") as pool:
            list(pool.map(self, unique))  # hashlib releases the GIL on large reads


def paths_fingerprint(paths: Iterable[str | os.PathLike], hashes: ContentHashes | None = None) -> str:
    """Names and content hashes of files (folders recursively). Used for weights: gigabytes are
    read at every run (a few seconds), because a swapped file must never pass for the old one."""
    hashes = hashes or ContentHashes()
    entries = []
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        entries += [[str(f), hashes(f)] for f in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def code_fingerprint() -> str:
    """sha256 of the sources that compute shard contents."""
    pkg = Path(__file__).resolve().parent
    files = [pkg / f for f in _CODE_FILES] + sorted(f for d in _CODE_DIRS for f in (pkg / d).glob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def shard_fingerprint(rows: Sequence[ClipRow], settings: Mapping[str, Any], hashes: ContentHashes | None = None) -> str:
    """sha256 over the shard's rows (with the content hash of each file) and the settings."""
    hashes = hashes or ContentHashes()
    described = [[r.id, r.text, r.path, r.start_sample, r.end_sample, hashes(r.path)] for r in rows]
    blob = json.dumps({"v": FINGERPRINT_VERSION, "settings": settings, "rows": described}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class ShardManifest:
    shard: int
    fingerprint: str
    ids: list[str]
    texts: list[str]
    rejects: list[tuple[str, str]]
    tensor_file_bytes: int
    tensor_file_sha256: str = ""  # empty in manifests written before the hash was recorded: size check only

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ShardManifest":
        d = json.loads(text)
        d["rejects"] = [tuple(r) for r in d["rejects"]]
        return cls(**d)


_WORK_ENTRY = re.compile(r"\.?shard-\d{5}\.(pt|json)(\..*\.tmp|\.tmp)?")


def owns_work_entry(entry: Path) -> bool:
    """Whether an entry of a work folder is a shard file (or its temp file) that extraction writes."""
    return _WORK_ENTRY.fullmatch(entry.name) is not None and entry.is_file() and not entry.is_symlink()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


class ShardStore:
    """The work folder of one extraction: finished shards, each a tensor file plus its manifest."""

    def __init__(self, work_dir: str | os.PathLike):
        self.dir = Path(work_dir)

    def _tensors(self, shard: Shard) -> Path:
        return self.dir / f"{shard.name}.pt"

    def _manifest(self, shard: Shard) -> Path:
        return self.dir / f"{shard.name}.json"

    def manifest(self, shard: Shard, fingerprint: str) -> ShardManifest | None:
        """The finished shard's manifest if it was made from exactly these inputs and settings."""
        path = self._manifest(shard)
        if not path.is_file():
            return None
        try:
            m = ShardManifest.from_json(path.read_text())
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            log.warning("%s: unreadable shard manifest (%s); recomputing the shard", path, e)
            return None
        tensors = self._tensors(shard)
        if m.fingerprint != fingerprint or m.shard != shard.index:
            return None
        # a shard file damaged after it was finished (disk fault, truncation) is recomputed, not merged
        if not tensors.is_file():
            log.warning("%s: missing although its manifest %s says it is done; recomputing the shard", tensors, path.name)
            return None
        size = tensors.stat().st_size
        if size != m.tensor_file_bytes:
            log.warning("%s: %d bytes, its manifest %s says %d (truncated?); recomputing the shard",
                        tensors, size, path.name, m.tensor_file_bytes)
            return None
        if m.tensor_file_sha256 and _sha256(tensors) != m.tensor_file_sha256:
            log.warning("%s: SHA-256 differs from its manifest %s (damaged); recomputing the shard", tensors, path.name)
            return None
        return m

    def save(self, shard: Shard, manifest: ShardManifest, tensors: Mapping[str, torch.Tensor]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._manifest(shard).unlink(missing_ok=True)  # an old manifest must not vouch for new tensors
        path = save_weight_file({k: v.contiguous() for k, v in tensors.items()}, self._tensors(shard))
        manifest.tensor_file_bytes = path.stat().st_size
        manifest.tensor_file_sha256 = _sha256(path)
        tmp = self._manifest(shard).with_suffix(".json.tmp")
        tmp.write_text(manifest.to_json())
        os.replace(tmp, self._manifest(shard))

    def tensors(self, shard: Shard) -> dict[str, torch.Tensor]:
        return load_weight_file(self._tensors(shard))


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class ExtractSettings:
    kind: str  # 'audio' | 'video'
    mode: str  # '16k' | '44k'
    storage_dtype: str
    batch_size: int
    shard_size: int
    num_workers: int
    fingerprint_settings: dict[str, Any] = field(default_factory=dict)  # profile, weights, normalisation, ...


@dataclass
class ExtractResult:
    rows: int  # rows given (after earlier stages' rejects)
    clips: int  # rows in the feature set
    rejects: list[tuple[str, str]]  # carried + new, as written to rejects.tsv
    new_rejects: int  # rows rejected by this stage (decode errors, silence, too short)
    shards: int
    shards_resumed: int  # finished shards found from an earlier run (all ranks)
    clips_encoded: int  # rows decoded and encoded in this run (all ranks), resumed ones excluded
    clips_per_sec: float  # decode + encode throughput of this run, all ranks together, model loading excluded
    seconds: float  # rank 0's wall time of the decode + encode phase


def work_dir_for(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    return out.with_name(f"{out.name}.work")


def _worker_init(_: int) -> None:
    # Decoding workers run side by side; one intra-op thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)


# -- the pipeline: decoding workers -> batches on the device -> encoders -> shard files -------------
#
# The GPU should never wait. Workers decode ahead; a feeder thread stacks each batch into page-locked
# memory and starts its copy to the GPU on a side stream while the encoders still work on the batch
# before; the features come back asynchronously, and a saver thread writes finished shards. The
# main thread only queues GPU work: nothing in the loop waits for the GPU to finish.


def decode_plan(batches: Sequence[Sequence[int]], kind: str) -> tuple[list[list[int]], list[int]]:
    """What a DataLoader worker decodes at once (chunks of rows), and how many chunks make each batch.

    Video: one clip per chunk, so the clips of a batch are decoded by several workers side by side:
    the first batch is ready after one clip's decoding time instead of a whole batch's (8 clips one
    after another: ~16 s on the official setup), and batches arrive evenly instead of in bursts of
    ``num_workers``. Audio: the whole batch, because its clips are cut from few files and a worker
    that keeps the last decoded file decodes each file once.
    """
    if kind == "video":
        return [[i] for b in batches for i in b], [len(b) for b in batches]
    return [list(b) for b in batches], [1] * len(batches)


def make_loader(dataset: Dataset, chunks: Sequence[Sequence[int]], batch_size: int, num_workers: int) -> DataLoader:
    """A DataLoader that yields one :class:`ClipBatch` per chunk, in order."""
    options: dict[str, Any] = {}
    if num_workers > 0:
        chunk_size = max(len(c) for c in chunks)
        # at least two batches decoded ahead of the encoders, whatever the chunk size
        options = {"worker_init_fn": _worker_init,
                   "prefetch_factor": max(2, math.ceil(2 * batch_size / (chunk_size * num_workers)))}
    # pin_memory stays off: the feeder stacks the chunks straight into page-locked memory
    return DataLoader(dataset, batch_sampler=[list(c) for c in chunks], num_workers=num_workers,
                      collate_fn=collate_clips, **options)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class DeviceBatches(Iterator[ClipBatch]):
    """The batches of a decode plan, assembled and moved to ``device`` by a thread, ``depth`` ahead.

    ``chunks`` is a started DataLoader iterator (made in the calling thread, so its worker processes
    fork from it); ``chunks_per_batch[k]`` of its items make batch k. On a GPU the tensors arrive
    through page-locked memory and a side stream; ``next()`` makes the caller's current stream wait
    for the copy (a stream-side wait, not a host sync). On a CPU the batch is merged in plain memory.
    An error in the thread is raised by ``next()``. Close it (or use ``with``) to stop the thread.
    """

    def __init__(self, chunks: Iterator[ClipBatch], chunks_per_batch: Sequence[int], device: torch.device, depth: int = 2):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(chunks, list(chunks_per_batch)), daemon=True,
                                        name="extract-feeder")
        self._thread.start()

    def _put(self, item: object) -> bool:
        return put_unless_stopped(self._queue, item, self._stop)

    def _run(self, chunks: Iterator[ClipBatch], chunks_per_batch: list[int]) -> None:
        try:
            for n in chunks_per_batch:
                batch = merge_batches([next(chunks) for _ in range(n)], pin_memory=self.cuda)
                ready = None
                if self.cuda:
                    batch, ready = send_async(batch, self.device, self.stream)
                if not self._put((batch, ready)):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Failed(e))

    def __next__(self) -> ClipBatch:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        batch, ready = item
        receive(batch.tensors(), ready, self.device)
        return batch

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> "DeviceBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardSaver:
    """Writes finished shards on a thread while the encoders go on with the next shard.

    One save at a time and at most one pending, so memory holds two shards' features at most; an error
    of a save is raised by the next ``submit`` or by ``finish``.
    """

    def __init__(self, store: ShardStore):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-saver")
        self._pending: Future | None = None

    def submit(self, shard: Shard, manifest: ShardManifest, parts: list[dict[str, torch.Tensor]],
               ready: torch.cuda.Event | None, empty: Mapping[str, torch.Tensor]) -> None:
        """Save ``parts`` (features per batch) once ``ready`` (after the last copy back) has passed."""
        self.finish()
        self._pending = self._pool.submit(self._save, shard, manifest, parts, ready, empty)

    def _save(self, shard: Shard, manifest: ShardManifest, parts: list[dict[str, torch.Tensor]],
              ready: torch.cuda.Event | None, empty: Mapping[str, torch.Tensor]) -> None:
        if ready is not None:
            ready.synchronize()
        tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else dict(empty)
        self.store.save(shard, manifest, tensors)

    def finish(self) -> None:
        """Wait for the pending save; raise its error if it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@torch.inference_mode()
def encode_batch(encoders: Encoders, batch: ClipBatch, kind: str, device: torch.device, storage: torch.dtype) -> dict[str, torch.Tensor]:
    """Features of the decoded clips of one batch, on CPU in the storage dtype.

    On a GPU the copies back are asynchronous, into page-locked memory: the values are there once the
    current stream has passed this call (wait on an event recorded after it), and the host never
    waits for the GPU here.
    """
    mean, std = encoders.encode_audio(batch.audio.to(device, non_blocking=True))  # (B, T, C) each
    out = {"mean": mean, "std": std, "text_features": encoders.encode_text(list(batch.texts))}  # text: (B, 77, 1024)
    if kind == "video":
        out["clip_features"] = encoders.encode_clip(batch.clip_frames.to(device, non_blocking=True))  # (B, 64, 1024)
        out["sync_features"] = encoders.encode_sync(batch.sync_frames.to(device, non_blocking=True))  # (B, 192, 768)
    non_blocking = device.type == "cuda"
    # cast where the features are (on the GPU: fewer bytes to copy), then copy back
    return {k: v.to(storage).to("cpu", non_blocking=non_blocking) for k, v in out.items()}


def _empty_features(kind: str, mode: str, storage: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: torch.empty((0, *shape), dtype=storage) for k, shape in feature_shapes(mode, kind).items()}


def extract_features(
    rows: Sequence[ClipRow],
    dataset: Dataset,
    make_encoders: Callable[[], Encoders],
    settings: ExtractSettings,
    ctx: DistContext,
    *,
    out_dir: str | os.PathLike,
    carried_rejects: Sequence[tuple[str, str]] = (),
    listing_rejects: Sequence[tuple[str, str]] = (),
    info: Mapping[str, object] | None = None,
    progress: bool = True,
) -> ExtractResult | None:
    """Extract features of ``rows`` (sorted by id; ``dataset[i]`` decodes ``rows[i]``) into ``out_dir``.

    Every rank calls this; each encodes its own shards, and rank 0 merges after a barrier and returns
    the result (other ranks return None). ``make_encoders`` is called once per rank, and only if that
    rank has a shard left to compute.
    """
    storage = STORAGE_DTYPES[settings.storage_dtype]
    store = ShardStore(work_dir_for(out_dir))
    shards = plan_shards(len(rows), settings.shard_size)
    mine = shards_of_rank(shards, ctx.rank, ctx.world_size)
    needed = shards if ctx.is_main else mine  # rank 0 checks every shard again before the merge
    hashes = ContentHashes()
    hashes.prefetch(r.path for s in needed for r in rows[s.start : s.end])
    fingerprints = {s.index: shard_fingerprint(rows[s.start : s.end], settings.fingerprint_settings, hashes) for s in needed}
    todo = [s for s in mine if store.manifest(s, fingerprints[s.index]) is None]
    resumed = len(mine) - len(todo)
    if resumed:
        log.info("rank %d: %d of its %d shards are already done in %s", ctx.rank, resumed, len(mine), store.dir)

    encoded = 0
    seconds = load_seconds = 0.0
    if todo:
        plan = [b for s in todo for b in batches_of(s, settings.batch_size)]
        chunks, chunks_per_batch = decode_plan(plan, settings.kind)
        loader = make_loader(dataset, chunks, settings.batch_size, settings.num_workers)
        t_load = time.perf_counter()
        # workers start decoding now, while the encoders load
        batches = DeviceBatches(iter(loader), chunks_per_batch, ctx.device)
        saver = ShardSaver(store)
        try:
            encoders = make_encoders()
            t0 = time.perf_counter()
            load_seconds = t0 - t_load
            bar = tqdm(
                total=sum(s.end - s.start for s in todo),
                unit="clip",
                desc=f"extract {Path(out_dir).name}",
                disable=not (progress and ctx.is_main),
                dynamic_ncols=True,
            )
            empty = _empty_features(settings.kind, settings.mode, storage)  # a shard of rejects only
            for shard in todo:
                parts: list[dict[str, torch.Tensor]] = []
                ids: list[str] = []
                texts: list[str] = []
                rejects: list[tuple[str, str]] = []
                for batch_rows in batches_of(shard, settings.batch_size):
                    batch = next(batches)
                    if sorted(batch.indices + [r.index for r in batch.rejects]) != batch_rows:
                        raise RuntimeError(f"{shard.name}: the DataLoader returned rows other than {batch_rows[0]}..{batch_rows[-1]}")
                    if len(batch):
                        parts.append(encode_batch(encoders, batch, settings.kind, ctx.device, storage))
                        ids += batch.ids
                        texts += batch.texts
                        encoded += len(batch)
                    rejects += [(r.id, r.reason) for r in sorted(batch.rejects, key=lambda r: r.index)]
                    bar.update(len(batch_rows))
                ready = None
                if ctx.device.type == "cuda" and parts:
                    ready = torch.cuda.Event()
                    ready.record(torch.cuda.current_stream(ctx.device))  # after the shard's last copy back
                manifest = ShardManifest(shard.index, fingerprints[shard.index], ids, texts, rejects, 0)
                saver.submit(shard, manifest, parts, ready, empty)
            saver.finish()
            bar.close()
        finally:
            batches.close()
            saver.close()
        seconds = time.perf_counter() - t0
        log.info("rank %d: encoders loaded in %.1f s; %d clips decoded and encoded in %.1f s", ctx.rank, load_seconds, encoded, seconds)
    rate = encoded / seconds if encoded else 0.0

    # The ranks work side by side, so the throughput of the run is the sum of theirs.
    encoded_all, resumed_all, rate_all = all_reduce_sum([encoded, resumed, rate], ctx.device)
    barrier()
    if not ctx.is_main:
        return None
    result = merge_shards(
        store, shards, fingerprints, settings, out_dir=out_dir, carried_rejects=carried_rejects,
        listing_rejects=listing_rejects, info=info,
    )
    result.shards_resumed = int(resumed_all)
    result.clips_encoded = int(encoded_all)
    result.clips_per_sec = rate_all
    result.seconds = seconds
    clear_dir(store.dir, owns=owns_work_entry, what=f"extraction work folder {store.dir}")
    return result


def merge_shards(
    store: ShardStore,
    shards: Sequence[Shard],
    fingerprints: Mapping[int, str],
    settings: ExtractSettings,
    *,
    out_dir: str | os.PathLike,
    carried_rejects: Sequence[tuple[str, str]] = (),
    listing_rejects: Sequence[tuple[str, str]] = (),
    info: Mapping[str, object] | None = None,
) -> ExtractResult:
    """Concatenate finished shards in order into the feature set at ``out_dir``. Rejects are written
    carried (earlier stages) first, then this stage's: rows it could not list, then rows it could not
    decode; ``new_rejects`` counts this stage's."""
    manifests = []
    for s in shards:
        m = store.manifest(s, fingerprints[s.index])
        if m is None:
            raise RuntimeError(f"{store.dir}: {s.name} is missing or stale after every rank finished")
        manifests.append(m)
    ids = [i for m in manifests for i in m.ids]
    texts = [t for m in manifests for t in m.texts]
    new_rejects = [*listing_rejects, *(r for m in manifests for r in m.rejects)]
    rejects = [*carried_rejects, *new_rejects]
    with FeatureSetWriter(
        out_dir, mode=settings.mode, kind=settings.kind, num_rows=len(ids), storage_dtype=settings.storage_dtype, info=info
    ) as writer:
        for s, m in zip(shards, manifests):
            if m.ids:
                writer.append(store.tensors(s))
        writer.commit(ids, texts, rejects)
    return ExtractResult(
        rows=sum(s.end - s.start for s in shards),
        clips=len(ids),
        rejects=rejects,
        new_rejects=len(new_rejects),
        shards=len(shards),
        shards_resumed=0,
        clips_encoded=0,
        clips_per_sec=0.0,
        seconds=0.0,
    )


# -- what a stage extracts -------------------------------------------------------------------------


@dataclass
class ExtractJob:
    """One dataset's extraction, resolved from params: rows, decoder, settings, paths."""

    name: str
    kind: str
    rows: list[ClipRow]
    carried_rejects: list[tuple[str, str]]  # from earlier stages' rejects manifests
    listing_rejects: list[tuple[str, str]]  # rows this stage cannot list (no caption, no file)
    dataset: Dataset
    settings: ExtractSettings
    out_dir: Path
    inputs: list[str]  # data the job reads, for tracking
    info: dict[str, object]  # extra info.json entries


def _settings(params: Params, kind: str, device: torch.device, weights: Sequence[str | os.PathLike], extra: Mapping[str, Any]) -> ExtractSettings:
    e = params.extract
    spec = AUDIO_SPECS[e.mode]
    return ExtractSettings(
        kind=kind,
        mode=e.mode,
        storage_dtype=e.storage_dtype,
        batch_size=e.batch_size,
        shard_size=e.shard_size,
        num_workers=e.num_workers,
        fingerprint_settings={
            "kind": kind,
            "mode": e.mode,
            "sample_rate": spec.sample_rate,
            "num_samples": spec.num_samples,
            "duration_sec": DURATION_SEC,
            "storage_dtype": e.storage_dtype,
            "batch_size": e.batch_size,  # batch composition can change GPU arithmetic
            "device_type": device.type,
            "tf32": e.allow_tf32 and device.type == "cuda",
            "amp": e.amp,
            "profile": params.profile,
            "weights": paths_fingerprint(weights),
            "code": code_fingerprint(),
            **extra,
        },
    )


def audio_job(params: Params, name: str, device: torch.device, weights: Sequence[str | os.PathLike] = ()) -> ExtractJob:
    """The extraction of audio dataset ``name`` (``weights``: files the encoders read, for the fingerprint)."""
    if name not in params.audio_datasets:
        raise ConfigError(f"no audio dataset {name!r} in params.yaml (have {sorted(params.audio_datasets)})")
    ds = params.audio_datasets[name]
    listed = audio_rows(ds)
    spec = AUDIO_SPECS[params.extract.mode]
    return ExtractJob(
        name=name,
        kind="audio",
        rows=listed.rows,
        carried_rejects=listed.carried,
        listing_rejects=listed.rejects,
        dataset=AudioClipDataset(listed.rows, sample_rate=spec.sample_rate, num_samples=spec.num_samples),
        settings=_settings(params, "audio", device, weights, {"normalize_audio": True}),
        out_dir=Path(params.extract.out_dir) / name,
        inputs=[ds.media_dir, ds.captions_tsv, ds.clips_tsv, ds.rejects_tsv],
        info={"dataset": name, "profile": params.profile, "sample_rate": spec.sample_rate, "num_samples": spec.num_samples},
    )


def video_job(params: Params, name: str, device: torch.device, weights: Sequence[str | os.PathLike] = ()) -> ExtractJob:
    """The extraction of video dataset ``name``."""
    if name not in params.video_datasets:
        raise ConfigError(f"no video dataset {name!r} in params.yaml (have {sorted(params.video_datasets)})")
    ds = params.video_datasets[name]
    listed = video_rows(ds)
    spec = AUDIO_SPECS[params.extract.mode]
    dataset = VideoClipDataset(
        listed.rows,
        sample_rate=spec.sample_rate,
        num_samples=spec.num_samples,
        duration_sec=DURATION_SEC,
        normalize_audio=ds.normalize_audio,
    )
    return ExtractJob(
        name=name,
        kind="video",
        rows=listed.rows,
        carried_rejects=listed.carried,
        listing_rejects=listed.rejects,
        dataset=dataset,
        settings=_settings(params, "video", device, weights, {"normalize_audio": ds.normalize_audio}),
        out_dir=Path(params.extract.out_dir) / name,
        inputs=[ds.media_dir, ds.index_tsv, ds.rejects_tsv],
        info={
            "dataset": name,
            "split": ds.split,
            "profile": params.profile,
            "sample_rate": spec.sample_rate,
            "num_samples": spec.num_samples,
            "normalize_audio": ds.normalize_audio,
        },
    )


def run_job(job: ExtractJob, make_encoders: Callable[[], Encoders], ctx: DistContext, progress: bool = True) -> ExtractResult | None:
    """Extract ``job`` on this rank; rank 0 returns the merged result, the others None."""
    return extract_features(
        job.rows,
        job.dataset,
        make_encoders,
        job.settings,
        ctx,
        out_dir=job.out_dir,
        carried_rejects=job.carried_rejects,
        listing_rejects=job.listing_rejects,
        info=job.info,
        progress=progress,
    )


def result_metrics(result: ExtractResult) -> dict[str, float]:
    """What a stage logs to MLflow about an extraction."""
    return {
        "rows": result.rows,
        "clips": result.clips,
        "rejects": len(result.rejects),
        "rejects_extract": result.new_rejects,
        "rejects_carried": len(result.rejects) - result.new_rejects,
        "shards": result.shards,
        "shards_resumed": result.shards_resumed,
        "clips_encoded": result.clips_encoded,
        "clips_per_sec": result.clips_per_sec,
        "extract_seconds": result.seconds,
    }


def log_rejects(logger: logging.Logger, result: ExtractResult) -> None:
    """The first rejects one per line, then counts per kind of reason (rejects.tsv has them all)."""
    log_reject_summary(logger, result.rejects)
    if result.clips == 0 and result.rejects:
        logger.error("every row was rejected (%d; reasons above): the feature set is empty", len(result.rejects))


# -- encoders ---------------------------------------------------------------------------------------

_COMPONENTS = {"audio": ("audio", "text"), "video": ("audio", "clip", "sync", "text")}


def encoder_weight_paths(params: Params, kind: str) -> list[Path]:
    """The weight files the encoders of ``kind`` read under ``params.profile``, for fingerprints and
    tracking. Raises MissingWeightsError listing every absent file (with where to get it) up front."""
    from mmaudio.encoders.profiles import check_weights, weight_paths

    root = find_repo_root()
    check_weights(params.profile, params.extract.mode, _COMPONENTS[kind], root=root)
    return weight_paths(params.profile, params.extract.mode, _COMPONENTS[kind], root=root)


def encoder_factory(params: Params, kind: str, device: torch.device) -> Callable[[], Encoders]:
    """A callable that builds the encoders ``kind`` needs (called only when there is work)."""

    def make() -> Encoders:
        from mmaudio.encoders.facade import FeatureEncoders

        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = params.extract.allow_tf32
            torch.backends.cudnn.allow_tf32 = params.extract.allow_tf32
        return FeatureEncoders(
            params.profile, params.extract.mode, root=find_repo_root(), device=device, components=_COMPONENTS[kind],
            amp=params.extract.amp,
        )

    return make


_DATASET_PATH_KEYS = {"audio": ("media_dir", "captions_tsv", "clips_tsv", "rejects_tsv"),
                      "video": ("media_dir", "list_tsv", "index_tsv", "rejects_tsv")}


def check_extract_paths(params: Params, job: ExtractJob, weights: Sequence[str | os.PathLike]) -> None:
    """Refuse an extract.out_dir whose feature set (or its work folder) would land on an input, the
    repository or the weights, before any decoding; and refuse to start unless the set fits on disk."""
    from mmaudio.features import feature_set_bytes
    from mmaudio.paths import check_free_space, check_stage_paths

    section = f"{job.kind}_datasets"
    ds = getattr(params, section)[job.name]
    reads = {f"{section}.{job.name}.{f}": getattr(ds, f) for f in _DATASET_PATH_KEYS[job.kind]}
    reads |= {f"the {params.profile} weights' {Path(w).name}": w for w in weights}
    key = "extract.out_dir"
    check_stage_paths(params, {key: job.out_dir}, reads=reads)
    check_stage_paths(params, {key: work_dir_for(job.out_dir)}, reads=reads)
    # the shards and the merged set are on disk together until the merge ends; finished shards count
    work = work_dir_for(job.out_dir)
    done = sum(f.stat().st_size for f in work.glob("shard-*.pt")) if work.is_dir() else 0
    need = 2 * feature_set_bytes(job.settings.mode, job.kind, len(job.rows), job.settings.storage_dtype) - done
    check_free_space(job.out_dir.parent, need, f"extraction of {job.name} (shards in {work_dir_for(job.out_dir)} and the set)")


def run_extract_stage(kind: str, doc: str, argv: Sequence[str] | None = None) -> None:
    """The whole of stages/extract_{audio,video}.py: parse, extract on this rank, log on rank 0."""
    from mmaudio.cli import parse_stage_args, setup_logging
    from mmaudio.distributed import cleanup_distributed, init_distributed
    from mmaudio.tracking import StageRun

    stage_log = logging.getLogger(f"extract_{kind}")
    make_job = {"audio": audio_job, "video": video_job}[kind]
    setup_logging()
    args, params = parse_stage_args(doc, argv, dataset=True)
    ctx = init_distributed(params.extract.device)
    setup_logging(ctx.rank)
    try:
        weights = encoder_weight_paths(params, kind)
        job = make_job(params, args.dataset, ctx.device, weights)
        check_extract_paths(params, job, weights)
        stage_log.info("%s: %d rows, %d carried rejects, %d process(es) on %s",
                       args.dataset, len(job.rows), len(job.carried_rejects), ctx.world_size, ctx.device)
        with StageRun(f"extract_{kind}@{args.dataset}", params, inputs=[*job.inputs, *weights], rank=ctx.rank) as run:
            result = run_job(job, encoder_factory(params, kind, ctx.device), ctx)
            if result is not None:
                log_rejects(stage_log, result)
                stage_log.info(
                    "%s: %d clips, %d rejects (%d here), %.2f clips/s -> %s",
                    args.dataset, result.clips, len(result.rejects), result.new_rejects, result.clips_per_sec, job.out_dir,
                )
                run.log_metrics(result_metrics(result))
                run.log_outputs([job.out_dir])
    finally:
        cleanup_distributed()
