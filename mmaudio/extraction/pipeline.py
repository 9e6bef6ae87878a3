"""The device pipeline: decoding workers -> batches on the device -> encoders -> shard files.

Batches never span shards, so what a shard holds depends only on its rows and the settings, never on
how many processes ran: the merged set is the same for 1 or G processes. A killed run started again
skips finished shards. After a barrier rank 0 merges the shards in order into the feature set
(written aside and renamed into place) and removes the work folder.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmaudio.distributed import DistContext, all_reduce_sum, barrier
from mmaudio.extraction.merge import merge_shards
from mmaudio.extraction.settings import ExtractResult, ExtractSettings
from mmaudio.extraction.shards import (
    ContentHashes,
    Shard,
    ShardManifest,
    ShardStore,
    batches_of,
    owns_work_entry,
    plan_shards,
    shard_fingerprint,
    shards_of_rank,
    work_dir_for,
)
from mmaudio.features import STORAGE_DTYPES, feature_shapes
from mmaudio.paths import clear_dir
from mmaudio.gpu_transfer import put_unless_stopped, receive, send_async
from mmaudio.segments import ClipBatch, ClipRow, collate_clips, merge_batches

log = logging.getLogger(__name__)


class Encoders(Protocol):
    """What extraction needs from the encoders (mmaudio.encoders.feature_encoders.FeatureEncoders)."""

    def encode_audio(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor: ...

    def encode_sync(self, frames: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


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
