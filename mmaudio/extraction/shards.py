"""Shards: the resumable units of an extraction, their fingerprints and the work folder that holds them.

The sorted row list is cut into shards of ``shard_size`` contiguous rows; shard k belongs to rank
``k % world_size``. Every finished shard is written into a work folder next to the output,
``<out>.work/``, as ``shard-00012.pt`` (tensors) and then ``shard-00012.json`` (ids, texts, rejects,
fingerprint). The json is written last, by rename, so its presence means the shard is whole. The
fingerprint hashes the shard's rows (ids, texts, file paths and the SHA-256 of each file's content),
the settings that change numbers and the code that computes them, so a shard left by a different
configuration is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmaudio.code_deps import code_digest
from mmaudio.hashing import file_sha256
from mmaudio.segments import ClipRow
from mmaudio.weights import load_weight_file, save_weight_file

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 2  # bump when the shard format or its meaning changes


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
            self._cache[key] = file_sha256(Path(path))
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
    """sha256 of the sources that compute shard contents: the import closure of the extraction jobs
    (decoding, encoders, this pipeline), found by the same walk that checks dvc.yaml's deps."""
    return code_digest("mmaudio.extraction.jobs")


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
        if m.tensor_file_sha256 and file_sha256(tensors) != m.tensor_file_sha256:
            log.warning("%s: SHA-256 differs from its manifest %s (damaged); recomputing the shard", tensors, path.name)
            return None
        return m

    def save(self, shard: Shard, manifest: ShardManifest, tensors: Mapping[str, torch.Tensor]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._manifest(shard).unlink(missing_ok=True)  # an old manifest must not vouch for new tensors
        path = save_weight_file({k: v.contiguous() for k, v in tensors.items()}, self._tensors(shard))
        manifest.tensor_file_bytes = path.stat().st_size
        manifest.tensor_file_sha256 = file_sha256(path)
        tmp = self._manifest(shard).with_suffix(".json.tmp")
        tmp.write_text(manifest.to_json())
        os.replace(tmp, self._manifest(shard))

    def tensors(self, shard: Shard) -> dict[str, torch.Tensor]:
        return load_weight_file(self._tensors(shard))


def work_dir_for(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    return out.with_name(f"{out.name}.work")
