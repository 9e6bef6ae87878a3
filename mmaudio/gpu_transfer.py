"""Handing batches from a reader thread to the loop that computes on them, without the loop waiting.

Used by the training loader (memmap rows -> the step) and by feature extraction (decoded clips -> the
encoders). The reader thread fills page-locked buffers, starts their copy to the GPU on its own CUDA
stream and records an event; the consuming loop makes its stream wait for that event (a wait on the
GPU, not on the host) and marks the tensors as used by its stream, so the caching allocator does not
hand their memory back to the reader's stream while the loop's kernels may still read it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from typing import Protocol, TypeVar

import torch


class Movable(Protocol):
    def to(self, device: torch.device, non_blocking: bool = False) -> "Movable": ...


M = TypeVar("M", bound=Movable)


def put_unless_stopped(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` on the bounded queue, waiting for room; False (item dropped) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def send_async(batch: M, device: torch.device, stream: torch.cuda.Stream) -> tuple[M, torch.cuda.Event]:
    """Start copying ``batch`` (in pinned memory) to ``device`` on ``stream``; the event marks the copy's end."""
    with torch.cuda.device(device), torch.cuda.stream(stream):
        moved = batch.to(device, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(stream)
    return moved, copied


def receive(tensors: Iterable[torch.Tensor], copied: torch.cuda.Event | None, device: torch.device) -> None:
    """Order the current stream of ``device`` after the copy that produced ``tensors`` (no-op on CPU)."""
    if copied is None:
        return
    stream = torch.cuda.current_stream(device)
    stream.wait_event(copied)
    for t in tensors:
        t.record_stream(stream)  # allocated on the reader's stream, used on this one
