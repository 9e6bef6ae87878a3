"""Batches for training and validation, read straight from feature-set memmaps.

An epoch is one pass over the concatenation of the training sets, each repeated its ``repeat``
factor (upstream repeats VGGSound 5 times next to the audio-only sets), in an order drawn from a
generator seeded by (seed, epoch). A step takes the next ``global_batch_size`` rows of that order
(a last partial batch is dropped, as upstream's loader does); rank r of G reads rows
[r * B/G, (r+1) * B/G) of it, so the ranks' rows are disjoint and their union is the batch a single
process would read. Everything a batch holds is a function of (seed, epoch, step): the loader's
position is all a checkpoint needs to resume it exactly, for any number of processes.

Rows are fetched with one indexing call per feature set and key (no per-sample collation). Audio-only
rows carry zero CLIP/sync features and ``video_exist = False``; the training step swaps in the
network's learned empty features for them. With ``prefetch`` > 0 a background thread reads that
many batches ahead (into pinned memory on GPU, so the copy to the device overlaps the step).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from mmaudio.features import CLIP_SHAPE, LATENT_SHAPES, SYNC_SHAPE, TEXT_SHAPE, FeatureSet

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
    """Rows of one process, float32 features; the batch axis comes first everywhere."""

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

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def read_rows(sources: Sequence[TrainSource], source_idx: torch.Tensor, row_idx: torch.Tensor, mode: str) -> Batch:
    """Rows ``row_idx[i]`` of ``sources[source_idx[i]]``, in that order, as one batch."""
    b = int(source_idx.numel())
    latent_shape = LATENT_SHAPES[mode]
    out = Batch(
        latent_mean=torch.empty(b, *latent_shape),
        latent_std=torch.empty(b, *latent_shape),
        clip_features=torch.zeros(b, *CLIP_SHAPE),
        sync_features=torch.zeros(b, *SYNC_SHAPE),
        text_features=torch.empty(b, *TEXT_SHAPE),
        video_exist=torch.zeros(b, dtype=torch.bool),
    )
    for i, src in enumerate(sources):
        pos = (source_idx == i).nonzero().flatten()
        if pos.numel() == 0:
            continue
        rows = row_idx[pos]
        order = rows.argsort()  # ascending rows read the memmap front to back
        pos, rows = pos[order], rows[order]
        data = src.features.rows(rows)
        out.latent_mean[pos] = data["mean"]
        out.latent_std[pos] = data["std"]
        out.text_features[pos] = data["text_features"]
        if src.is_video:
            out.clip_features[pos] = data["clip_features"]
            out.sync_features[pos] = data["sync_features"]
            out.video_exist[pos] = True
    return out


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
    ):
        if not sources:
            raise ValueError("no training feature sets (train.datasets is empty)")
        if global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {world_size} processes")
        self.sources = list(sources)
        self.mode = mode
        self.global_batch_size = global_batch_size
        self.per_rank = global_batch_size // world_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = device
        self.prefetch = prefetch
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
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- positions and rows ---------------------------------------------------------------------

    def permutation(self, epoch: int) -> torch.Tensor:
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

    def read(self, epoch: int, step: int) -> Batch:
        """This rank's rows of the global batch at (epoch, step), on CPU."""
        source, row = self.global_rows(epoch, step)
        part = rank_slice(self.global_batch_size, self.per_rank, self.rank)
        return read_rows(self.sources, source[part], row[part], self.mode)

    def _advance(self, epoch: int, step: int) -> tuple[int, int]:
        step += 1
        return (epoch + 1, 0) if step == self.steps_per_epoch else (epoch, step)

    # -- iteration ------------------------------------------------------------------------------

    def next(self) -> Batch:
        """The batch at the current position, on the device; then move the position on."""
        if self.prefetch > 0:
            if self._thread is None:
                self._start_prefetch()
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise RuntimeError("the batch prefetch thread failed") from item
            batch = item.to(self.device, non_blocking=True)
        else:
            batch = self.read(self.epoch, self.step_in_epoch).to(self.device)
        self.epoch, self.step_in_epoch = self._advance(self.epoch, self.step_in_epoch)
        return batch

    def _start_prefetch(self) -> None:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        start = (self.epoch, self.step_in_epoch)
        pin = self.device.type == "cuda"

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            epoch, step = start
            try:
                while not stop.is_set():
                    batch = self.read(epoch, step)
                    if not put(batch.pin_memory() if pin else batch):
                        return
                    epoch, step = self._advance(epoch, step)
            except BaseException as e:  # handed to the training loop, which raises it
                put(e)

        self._queue, self._stop = q, stop
        self._thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the prefetch thread (the position is kept)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._queue = self._stop = self._thread = None

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
    per_rank = global_batch_size // world_size
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
