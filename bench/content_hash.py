"""What content-hashed shard fingerprints cost: SHA-256 of media files as extraction reads them.

    python bench/content_hash.py [--files 64] [--mb 8] [--threads 1 4 8] [--workdir DIR]

Writes ``--files`` random files of ``--mb`` MB (page cache warm after the first pass, as on a rerun
of a stage), then times :class:`mmaudio.extraction.shards.ContentHashes` over them with each thread count
(a fresh cache per pass, so every file is read and hashed). Prints: threads | files | MB | s | MB/s.
The old size + mtime fingerprint read no bytes; this is the price of never reusing stale features.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mmaudio.extraction.shards import ContentHashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        files = []
        for i in range(args.files):
            f = Path(tmp) / f"clip_{i:04d}.flac"
            f.write_bytes(os.urandom(args.mb << 20))
            files.append(f)
        ContentHashes().prefetch(files, threads=1)  # warm the page cache
        total_mb = args.files * args.mb
        print("| threads | files | MB | s | MB/s |")
        print("|---|---|---|---|---|")
        for n in args.threads:
            t0 = time.perf_counter()
            ContentHashes().prefetch(files, threads=n)
            dt = time.perf_counter() - t0
            print(f"| {n} | {args.files} | {total_mb} | {dt:.2f} | {total_mb / dt:.0f} |")


if __name__ == "__main__":
    main()
