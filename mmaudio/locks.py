"""One run per output folder: an exclusive ``flock`` on ``<folder>/.mmaudio.lock``.

Two runs writing the same checkpoint folder interleave their files (a killed ``dvc repro`` can leave
a torchrun worker running while the rerun starts). The lock is taken before anything is read or
written and is released by the kernel when its holder exits, however it exits, so a crashed run
never leaves a stale lock behind. The file keeps the holder's pid and host for the error message of
the run that finds it taken. NFS and other network filesystems may not honour ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".mmaudio.lock"


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock; the message names its pid and host."""


@contextmanager
def exclusive_folder(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block (``what``: the run, for the message)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
            raise FolderBusyError(
                f"{folder} is in use by another {what} ({holder}; lock file {path}): wait for it to end, or "
                "stop that process first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race a waiting locker)
