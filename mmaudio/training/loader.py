"""Batches for training and validation, read straight from feature-set memmaps.

An epoch is one pass over the concatenation of the training sets, each repeated its ``repeat``
factor (upstream repeats VGGSound 5 times next to the audio-only sets), in an order drawn from a
generator seeded by (seed, epoch). A step takes the next ``global_batch_size`` rows of that order
(a last partial batch is dropped, as upstream's loader does); rank r of G reads rows
[r * B/G, (r+1) * B/G) of it, so the ranks' rows are disjoint and their union is the batch a single
process would read. Everything a batch holds is a function of (seed, epoch, step): the loader's
position is all a checkpoint needs to resume it exactly, for any number of processes.

Rows are copied from the memmaps straight into the batch's buffers, once (no per-sample collation):
a batch drawn from one feature set is one ``index_select`` per key; a mixed batch copies row by row
in ascending row order. Audio-only rows carry zero CLIP/sync features and ``video_exist = False``;
the training step swaps in the network's learned empty features for them.

To a GPU, batches travel in the storage dtype of the feature sets (bf16 storage halves the bytes
read, copied and sent) and become float32 there; on CPU they are cast while being copied. The step
always sees float32, and bf16 -> float32 is exact, so every route gives identical numbers.

With ``prefetch`` > 0, ``workers`` background threads (1 or 2 are enough; the copies and the page-cache
reads release the GIL) read different batches ahead: worker j reads positions j, j + W, j + 2W, ...
and the loop takes them in order, so the batch sequence does not depend on W. On GPU a worker reads
into pinned memory and sends the batch to the device on its own CUDA stream; the training stream
only waits for that copy's event, so neither the read nor the transfer sits in the step. The price is
GPU memory for about ``prefetch + workers`` batches in the storage dtype (256 rows of 16 kHz video
features: 0.31 GB float32, 0.15 GB bf16).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from mmaudio.config import ConfigError
from mmaudio.features import STORAGE_DTYPES, FeatureSet
from mmaudio.gpu_transfer import put_unless_stopped, receive, send_async
from mmaudio.modes import mode_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSource:
    """One feature set in the training mix."""

    name: str
    features: FeatureSet
    repeat: int = 1  # times each row appears per epoch

    @property
    def is_video(self) -> bool:
        return self.features.kind == "video"


@dataclass
class Batch:
    """Rows of one process; the batch axis comes first everywhere. The loader hands out float32
    features; inside the loader a batch may still be in the storage dtype (see ``float``)."""

    latent_mean: torch.Tensor  # (b, N, C) VAE posterior mean
    latent_std: torch.Tensor  # (b, N, C) VAE posterior std
    clip_features: torch.Tensor  # (b, 64, 1024), zeros where there is no video
    sync_features: torch.Tensor  # (b, 192, 768), zeros where there is no video
    text_features: torch.Tensor  # (b, 77, 1024)
    video_exist: torch.Tensor  # (b,) bool

    def __len__(self) -> int:
        return self.latent_mean.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def float(self) -> "Batch":
        """Features as float32 (no copy when they already are); ``video_exist`` stays bool."""
        return Batch(**{f.name: _as_float32(getattr(self, f.name)) for f in fields(self)})


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


# Batch field <- feature-set key; audio-only sets have no clip/sync keys
FIELD_KEYS: dict[str, str] = {
    "latent_mean": "mean",
    "latent_std": "std",
    "text_features": "text_features",
    "clip_features": "clip_features",
    "sync_features": "sync_features",
}
VIDEO_FIELDS = ("clip_features", "sync_features")


def wire_dtype(sources: Sequence[TrainSource]) -> torch.dtype:
    """The dtype batches travel in: the sets' common storage dtype, float32 when they differ."""
    dtypes = {STORAGE_DTYPES[s.features.storage_dtype] for s in sources}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _copy_rows(src: torch.Tensor, rows: torch.Tensor, dest: torch.Tensor, pos: torch.Tensor) -> None:
    """dest[pos[i]] = src[rows[i]], reading each row from the memmap once."""
    if pos.numel() == dest.shape[0] and src.dtype == dest.dtype:
        # the whole batch comes from this set (pos is then 0..b-1): one call, straight into dest
        torch.index_select(src, 0, rows, out=dest)
        return
    order = rows.argsort()  # ascending rows read the memmap front to back
    for p, r in zip(pos[order].tolist(), rows[order].tolist()):
        dest.select(0, p).copy_(src.select(0, r))  # casts when the sets' storage dtypes differ


def read_rows(
    sources: Sequence[TrainSource],
    source_idx: torch.Tensor,
    row_idx: torch.Tensor,
    mode: str,
    *,
    dtype: torch.dtype = torch.float32,
    pin_memory: bool = False,
) -> Batch:
    """Rows ``row_idx[i]`` of ``sources[source_idx[i]]``, in that order, as one batch of ``dtype``
    (in pinned memory if asked, ready for an asynchronous copy to the GPU)."""
    b = int(source_idx.numel())
    spec = mode_spec(mode)
    shapes = {"latent_mean": spec.latent_shape, "latent_std": spec.latent_shape, "clip_features": spec.clip_shape,
              "sync_features": spec.sync_shape, "text_features": spec.text_shape}
    # empty, not zeros: every row is written below, audio rows' video features by index_fill_
    out = {name: torch.empty((b, *shape), dtype=dtype, pin_memory=pin_memory) for name, shape in shapes.items()}
    video_exist = torch.zeros(b, dtype=torch.bool, pin_memory=pin_memory)
    audio_pos = []
    for i, src in enumerate(sources):
        pos = (source_idx == i).nonzero().flatten()
        if pos.numel() == 0:
            continue
        rows = row_idx[pos]
        for name, key in FIELD_KEYS.items():
            if name in VIDEO_FIELDS and not src.is_video:
                continue
            _copy_rows(src.features.td[key], rows, out[name], pos)
        if src.is_video:
            video_exist[pos] = True
        else:
            audio_pos.append(pos)
    if audio_pos:
        pos = torch.cat(audio_pos)
        for name in VIDEO_FIELDS:
            out[name].index_fill_(0, pos, 0)
    return Batch(**out, video_exist=video_exist)


def per_rank_batch_size(global_batch_size: int, world_size: int) -> int:
    """Rows per process: the one place the global batch is checked against the process count and split."""
    if global_batch_size % world_size:
        raise ConfigError(
            f"key 'train.global_batch_size' ({global_batch_size}) must be divisible by the number of "
            f"processes ({world_size})"
        )
    return global_batch_size // world_size


def rank_slice(batch_rows: int, per_rank: int, rank: int) -> slice:
    """This rank's part of a global batch of ``batch_rows`` rows (empty for late ranks of a short batch)."""
    lo = min(rank * per_rank, batch_rows)
    return slice(lo, min(lo + per_rank, batch_rows))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # one independent stream per epoch; a position is resumed without replaying earlier epochs
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))


class TrainLoader:
    """Endless shuffled batches of the training mix for one rank; see the module docstring."""

    def __init__(
        self,
        sources: Sequence[TrainSource],
        *,
        mode: str,
        global_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        device: torch.device,
        prefetch: int = 0,
        workers: int = 2,
    ):
        if not sources:
            raise ValueError("no training feature sets (train.datasets is empty)")
        self.per_rank = per_rank_batch_size(global_batch_size, world_size)
        if prefetch > 0 and workers < 1:
            raise ValueError(f"prefetch {prefetch} needs at least one worker thread, got workers={workers}")
        self.sources = list(sources)
        self.mode = mode
        self.global_batch_size = global_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = device
        self.prefetch, self.workers = prefetch, workers
        # to a GPU batches travel in the storage dtype and are cast there; on CPU the worker threads
        # cast while they copy, which keeps the conversion off the training loop's thread
        self.wire_dtype = wire_dtype(self.sources) if device.type == "cuda" else torch.float32
        # virtual row v of an epoch -> (source, row): source i owns [offset_i, offset_i + repeat_i * n_i)
        sizes = [len(s.features) for s in self.sources]
        spans = [s.repeat * n for s, n in zip(self.sources, sizes)]
        self.num_rows = sum(spans)
        self._sizes = torch.tensor(sizes)
        self._offsets = torch.tensor([0] + spans[:-1]).cumsum(0)
        self._ends = self._offsets + torch.tensor(spans)
        self.steps_per_epoch = self.num_rows // global_batch_size
        if self.steps_per_epoch == 0:
            names = ", ".join(f"{s.name} {n} rows x{s.repeat}" for s, n in zip(self.sources, sizes))
            raise ValueError(
                f"train.global_batch_size ({global_batch_size}) is larger than one epoch of train.datasets "
                f"({self.num_rows} rows: {names})"
            )
        self.epoch, self.step_in_epoch = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self._perm_lock = threading.Lock()  # workers of different epochs share the cached permutation
        self._queues: list[queue.Queue] = []
        self._stop: threading.Event | None = None
        self._threads: list[threading.Thread] = []
        self._taken = 0  # batches taken from the workers since they started

    # -- positions and rows ---------------------------------------------------------------------

    def permutation(self, epoch: int) -> torch.Tensor:
        with self._perm_lock:
            if epoch != self._perm_epoch:
                self._perm = torch.randperm(self.num_rows, generator=epoch_generator(self.seed, epoch))
                self._perm_epoch = epoch
            return self._perm

    def locate(self, virtual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Virtual rows of an epoch -> (source index, row in that source)."""
        source = torch.bucketize(virtual, self._ends, right=True)
        row = (virtual - self._offsets[source]) % self._sizes[source]
        return source, row

    def global_rows(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, row) of every row of the global batch at (epoch, step)."""
        lo = step * self.global_batch_size
        return self.locate(self.permutation(epoch)[lo : lo + self.global_batch_size])

    def read(self, epoch: int, step: int, *, dtype: torch.dtype = torch.float32, pin_memory: bool = False) -> Batch:
        """This rank's rows of the global batch at (epoch, step), on CPU."""
        source, row = self.global_rows(epoch, step)
        part = rank_slice(self.global_batch_size, self.per_rank, self.rank)
        return read_rows(self.sources, source[part], row[part], self.mode, dtype=dtype, pin_memory=pin_memory)

    def _advance(self, epoch: int, step: int) -> tuple[int, int]:
        step += 1
        return (epoch + 1, 0) if step == self.steps_per_epoch else (epoch, step)

    # -- iteration ------------------------------------------------------------------------------

    def next(self) -> Batch:
        """The batch at the current position, on the device as float32; then move the position on."""
        if self.prefetch > 0:
            if not self._threads:
                self._start_workers()
            item = self._queues[self._taken % len(self._queues)].get()
            self._taken += 1
            if isinstance(item, BaseException):
                raise RuntimeError("a batch prefetch thread failed") from item
            batch, copied = item
            receive([getattr(batch, f.name) for f in fields(batch)], copied, self.device)  # step after the copy
            batch = batch.float()
        else:
            batch = self.read(self.epoch, self.step_in_epoch, dtype=self.wire_dtype).to(self.device).float()
        self.epoch, self.step_in_epoch = self._advance(self.epoch, self.step_in_epoch)
        return batch

    def _start_workers(self) -> None:
        n = self.workers
        depth = -(-self.prefetch // n)  # ceil: about `prefetch` batches wait in all the queues together
        queues = [queue.Queue(maxsize=depth) for _ in range(n)]
        stop = threading.Event()
        start = self.epoch * self.steps_per_epoch + self.step_in_epoch  # global position of the next batch
        cuda = self.device.type == "cuda"
        gpu = None
        if cuda:  # threads start on GPU 0: name the rank's GPU explicitly
            gpu = torch.device("cuda", torch.cuda.current_device() if self.device.index is None else self.device.index)

        def work(j: int) -> None:
            q = queues[j]
            try:
                if cuda:
                    torch.cuda.set_device(gpu)  # pinned buffers and copies belong to the rank's GPU
                    stream = torch.cuda.Stream(gpu)
                position = start + j
                while not stop.is_set():
                    epoch, step = divmod(position, self.steps_per_epoch)
                    batch = self.read(epoch, step, dtype=self.wire_dtype, pin_memory=cuda)
                    copied = None
                    if cuda:
                        batch, copied = send_async(batch, gpu, stream)
                    if not put_unless_stopped(q, (batch, copied), stop):
                        return
                    position += n
            except BaseException as e:  # handed to the training loop, which raises it
                put_unless_stopped(q, e, stop)

        self._queues, self._stop, self._taken = queues, stop, 0
        self._threads = [threading.Thread(target=work, args=(j,), name=f"batch-prefetch-{j}", daemon=True)
                         for j in range(n)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stop the prefetch threads and drop what they read ahead (the position is kept)."""
        if self._stop is not None:
            self._stop.set()
        for t in self._threads:
            t.join()
        self._queues, self._stop, self._threads, self._taken = [], None, [], 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_batch_size": self.global_batch_size,
                "num_rows": self.num_rows}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        for key in ("global_batch_size", "num_rows"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"{source}: loader {key} was {state[key]}, now {getattr(self, key)}; cannot resume")
        self.close()
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])


def val_batches(
    features: FeatureSet, *, mode: str, global_batch_size: int, rank: int, world_size: int
) -> Iterator[tuple[int, slice, Batch | None]]:
    """The validation set in order, in global batches: (rows in this global batch, this rank's slice
    of it, this rank's rows or None when the slice is empty)."""
    per_rank = per_rank_batch_size(global_batch_size, world_size)
    src = [TrainSource("val", features)]
    n = len(features)
    for lo in range(0, n, global_batch_size):
        rows = min(global_batch_size, n - lo)
        part = rank_slice(rows, per_rank, rank)
        if part.stop > part.start:
            idx = torch.arange(lo + part.start, lo + part.stop)
            yield rows, part, read_rows(src, torch.zeros_like(idx), idx, mode)
        else:
            yield rows, part, None


@torch.no_grad()
def latent_stats(features: FeatureSet, chunk_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased std of the VAE posterior means over every row and frame, (C,) each.

    Upstream computes ``td['mean'].mean(dim=(0, 1))`` and ``.std(dim=(0, 1))`` over the whole first
    video training set (VGGSound) in memory; here the same statistics are merged chunk by chunk in
    float64 (Chan et al.'s parallel update), so any size fits in memory.
    """
    data = features.td["mean"]
    n_total = 0
    mean = m2 = None
    for lo in range(0, len(features), chunk_rows):
        x = data[lo : lo + chunk_rows].to(torch.float64).flatten(0, 1)  # (rows * N, C)
        n = x.shape[0]
        mu = x.mean(0)
        sq = ((x - mu) ** 2).sum(0)
        if mean is None:
            n_total, mean, m2 = n, mu, sq
        else:
            delta = mu - mean
            total = n_total + n
            mean = mean + delta * (n / total)
            m2 = m2 + sq + delta**2 * (n_total * n / total)
            n_total = total
    if mean is None or n_total < 2:
        raise ValueError(f"{features.path}: too few latent frames ({n_total}) for latent statistics")
    return mean.float(), (m2 / (n_total - 1)).sqrt().float()
