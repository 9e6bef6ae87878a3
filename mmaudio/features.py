"""Feature sets: extracted features as TensorDict memory-mapped tensors plus their row TSV.

A feature set is one directory (a DVC out), written aside and renamed into place::

    <dir>/td/            TensorDict.memmap_: meta.json + one <key>.memmap per key, rows = samples
    <dir>/samples.tsv    id, label (video) or id, caption (audio), in the same row order
    <dir>/rejects.tsv    id, reason: inputs that could not be used
    <dir>/info.json      mode, kind, storage dtype, row count, dataset, weight profile

Keys and per-sample shapes follow DESIGN.md's data contract (16 kHz / 44.1 kHz):
``mean``/``std`` (250, 20) / (345, 40); ``text_features`` (77, 1024); video only:
``clip_features`` (64, 1024), ``sync_features`` (192, 768). Storage is float32 (upstream's format) or
bfloat16; readers get float32 unless they ask otherwise.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mmaudio.paths import NoSpaceError, check_free_space, check_replaceable, replace_dir, staging_dir
from mmaudio.choices import StorageDtype, choice_values
from mmaudio.modes import AudioMode, mode_spec
from mmaudio.tables import TableError, read_tsv, write_rejects, write_tsv

Kind = Literal["video", "audio"]

STORAGE_DTYPES: dict[str, torch.dtype] = {StorageDtype.FLOAT32.value: torch.float32, StorageDtype.BFLOAT16.value: torch.bfloat16}
TEXT_COLUMN: dict[str, str] = {"video": "label", "audio": "caption"}

TD_DIR, SAMPLES_TSV, REJECTS_TSV, INFO_JSON = "td", "samples.tsv", "rejects.tsv", "info.json"


class FeatureSetError(ValueError):
    """A feature directory does not match the data contract; the message names it and the mismatch."""


def feature_shapes(mode: str, kind: str) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every key for ``mode`` ('16k'/'44k') and ``kind`` ('video'/'audio')."""
    if mode not in set(AudioMode):
        raise ValueError(f"unknown mode {mode!r}; expected one of {choice_values(AudioMode)}")
    if kind not in TEXT_COLUMN:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(TEXT_COLUMN)}")
    spec = mode_spec(mode)
    shapes: dict[str, tuple[int, ...]] = {
        "mean": spec.latent_shape,
        "std": spec.latent_shape,
        "text_features": spec.text_shape,
    }
    if kind == "video":
        shapes["clip_features"] = spec.clip_shape
        shapes["sync_features"] = spec.sync_shape
    return shapes


def write_feature_set(
    out_dir: str | os.PathLike,
    *,
    mode: str,
    kind: str,
    ids: Sequence[str],
    texts: Sequence[str],
    tensors: Mapping[str, torch.Tensor],
    rejects: Sequence[tuple[str, str]] = (),
    storage_dtype: str = "float32",
    info: Mapping[str, object] | None = None,
) -> Path:
    """Validate and write a feature set held in memory; the directory appears whole or not at all."""
    with FeatureSetWriter(out_dir, mode=mode, kind=kind, num_rows=len(ids), storage_dtype=storage_dtype, info=info) as w:
        w.append(tensors)
        return w.commit(ids, texts, rejects)


class FeatureSetWriter:
    """Writes a feature set of known size piece by piece, so it never has to fit in memory.

    The memmaps are allocated in a hidden sibling folder; :meth:`append` fills the next rows;
    :meth:`commit` writes the TSVs and info.json and renames the folder into place. Leaving the
    ``with`` block without a commit (an exception) removes the partial folder.

        with FeatureSetWriter(out, mode="16k", kind="audio", num_rows=n) as w:
            for part in parts:
                w.append(part)  # {key: (rows, *shape)}
            w.commit(ids, texts, rejects)
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        mode: str,
        kind: str,
        num_rows: int,
        storage_dtype: str = "float32",
        info: Mapping[str, object] | None = None,
    ):
        from tensordict import TensorDict

        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
        self.out = Path(out_dir)
        self.mode, self.kind, self.num_rows, self.storage_dtype = mode, kind, int(num_rows), storage_dtype
        self.info = dict(info or {})
        self.shapes = feature_shapes(mode, kind)
        self.filled = 0
        check_replaceable(self.out, owns=owns_feature_set_entry, what=f"feature set {self.out}")
        self.tmp = staging_dir(self.out)
        dtype = STORAGE_DTYPES[storage_dtype]
        check_free_space(self.out.parent, feature_set_bytes(mode, kind, self.num_rows, storage_dtype), f"feature set {self.out}")
        self.tmp.mkdir(parents=True)
        try:
            # An expanded one-row template has the full shape but no memory behind it; memmap_like only
            # reads shapes and dtypes, so the files are allocated (sparse) without a copy in RAM.
            template = TensorDict(
                {k: torch.zeros((1, *shape), dtype=dtype).expand(self.num_rows, *shape) for k, shape in self.shapes.items()},
                batch_size=[self.num_rows],
            )
            self.td = template.memmap_like(prefix=self.tmp / TD_DIR)
            # A write into a sparse memory map that finds the disk full kills the process with SIGBUS
            # (no exception, no cleanup); reserving the blocks now turns that into ENOSPC here.
            for k in self.shapes if self.num_rows else ():  # an empty set has no files to reserve
                _reserve(self.tmp / TD_DIR / f"{k}.memmap", self.out)
        except BaseException:  # not handled: the partial folder is removed and the error goes on
            self.abort()
            raise

    def __enter__(self) -> "FeatureSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()

    def append(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Write the next rows: every contract key, all with the same number of rows."""
        if set(tensors) != set(self.shapes):
            raise FeatureSetError(f"{self.out}: keys {sorted(tensors)} do not match the contract {sorted(self.shapes)}")
        n = None
        for k, shape in self.shapes.items():
            t = tensors[k]
            n = t.shape[0] if n is None else n
            if tuple(t.shape) != (n, *shape):
                raise FeatureSetError(f"{self.out}: key {k!r} has shape {tuple(t.shape)}, expected {(n, *shape)}")
        if self.filled + n > self.num_rows:
            raise FeatureSetError(f"{self.out}: {self.filled + n} rows written, but the set was sized for {self.num_rows}")
        dtype = STORAGE_DTYPES[self.storage_dtype]
        for k in self.shapes:
            self.td[k][self.filled : self.filled + n] = tensors[k].to(dtype)
        self.filled += n

    def commit(self, ids: Sequence[str], texts: Sequence[str], rejects: Sequence[tuple[str, str]] = ()) -> Path:
        """Write the row TSV, rejects and info.json, then move the set into place."""
        if len(ids) != self.num_rows or len(texts) != self.num_rows:
            raise ValueError(f"{self.out}: {self.num_rows} rows but {len(ids)} ids and {len(texts)} texts")
        if self.filled != self.num_rows:
            raise FeatureSetError(f"{self.out}: only {self.filled} of {self.num_rows} rows were written")
        self.td = None  # writes sit in shared file mappings; the folder can move under them
        column = TEXT_COLUMN[self.kind]
        write_tsv(self.tmp / SAMPLES_TSV, ("id", column), [{"id": i, column: t} for i, t in zip(ids, texts)])
        write_rejects(self.tmp / REJECTS_TSV, rejects)
        meta = {"mode": self.mode, "kind": self.kind, "storage_dtype": self.storage_dtype, "rows": self.num_rows, **self.info}
        (self.tmp / INFO_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        replace_dir(self.tmp, self.out, owns=owns_feature_set_entry, what=f"feature set {self.out}")
        return self.out

    def abort(self) -> None:
        """Remove the partial folder (nothing happens after a commit)."""
        self.td = None
        if self.tmp.exists():
            shutil.rmtree(self.tmp)


def owns_feature_set_entry(entry: Path) -> bool:
    """Whether an entry of an existing folder is part of a feature set, so replacing the folder
    with a new set loses nothing else."""
    return entry.name in (TD_DIR, SAMPLES_TSV, REJECTS_TSV, INFO_JSON) and not entry.is_symlink()


def feature_set_bytes(mode: str, kind: str, num_rows: int, storage_dtype: str = "float32") -> int:
    """Bytes the memory maps of a set of ``num_rows`` rows take on disk (the TSVs are negligible)."""
    itemsize = STORAGE_DTYPES[storage_dtype].itemsize
    return num_rows * itemsize * sum(math.prod(shape) for shape in feature_shapes(mode, kind).values())


def _reserve(path: Path, out: Path) -> None:
    """Allocate every block of ``path`` (ENOSPC now instead of SIGBUS on a later write)."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpaceError(errno.ENOSPC, f"No space left on device: feature set {out} needs {size / 1e6:.1f} MB more for {path.name}", str(out)) from e
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: the free-space check stands
            raise
    finally:
        os.close(fd)


_META_FILE = "meta.json"
_TD_META_KEYS = {"shape", "device", "_type", "_format_version", "_class"}
_TD_CLASS = ("tensordict:TensorDict", "<class 'tensordict._td.TensorDict'>")
_LEAF_KEYS = {"device", "shape", "dtype", "is_nested"}
_DTYPE_NAMES = {str(d): d for d in STORAGE_DTYPES.values()}


def _load_plain_memmap(path: Path, keys: set[str]):
    """``path/td`` as a TensorDict of read-only MemoryMappedTensors, after checking that it holds
    exactly one ``<key>.memmap`` per contract key of the size ``meta.json`` declares, and nothing else."""
    from tensordict import MemoryMappedTensor, TensorDict

    folder = path / TD_DIR

    def bad(msg: str) -> FeatureSetError:
        return FeatureSetError(f"{path}: cannot open the memmap in {TD_DIR}/ ({msg}); refused without loading it")

    if folder.is_symlink() or not folder.is_dir():
        raise bad(f"{folder} is not a folder")
    expected = {_META_FILE, *(f"{k}.memmap" for k in keys)}
    entries = {p.name: p for p in folder.iterdir()}
    extra = sorted(n + ("/" if entries[n].is_dir() else "") for n in set(entries) - expected)
    if extra:
        raise bad(f"unexpected entries {extra}: a feature set holds only {sorted(expected)}, no pickled or nested data")
    linked = sorted(n for n, p in entries.items() if p.is_symlink() or not p.is_file())
    if linked:
        raise bad(f"entries that are not regular files: {linked}")
    try:
        meta = json.loads(entries[_META_FILE].read_text()) if _META_FILE in entries else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"{_META_FILE} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise bad(f"no {_META_FILE} object")
    leaves = {k: v for k, v in meta.items() if k not in _TD_META_KEYS}
    if set(leaves) != keys:
        raise FeatureSetError(f"{path}: keys {sorted(leaves)} do not match the contract {sorted(keys)}")
    if meta.get("_class", _TD_CLASS[0]) not in _TD_CLASS or meta.get("_type", _TD_CLASS[1]) not in _TD_CLASS:
        raise bad(f"{_META_FILE} names class {meta.get('_class') or meta.get('_type')!r}, not a plain TensorDict")
    batch = meta.get("shape")
    if not (isinstance(batch, list) and len(batch) == 1 and isinstance(batch[0], int) and batch[0] >= 0):
        raise bad(f"{_META_FILE}: batch shape {batch!r} is not [rows]")
    tensors = {}
    for k, leaf in sorted(leaves.items()):
        if not isinstance(leaf, dict) or set(leaf) - _LEAF_KEYS or leaf.get("is_nested", False) or leaf.get("device", "cpu") != "cpu":
            raise bad(f"key {k!r} is not a plain tensor: {leaf!r}")
        shape, dtype = leaf.get("shape"), _DTYPE_NAMES.get(leaf.get("dtype"))
        if dtype is None:
            raise bad(f"key {k!r} has dtype {leaf.get('dtype')!r}, not one of {sorted(_DTYPE_NAMES)}")
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape) and shape[0] == batch[0]):
            raise bad(f"key {k!r} has shape {shape!r}, not [{batch[0]}, ...]")
        file = entries.get(f"{k}.memmap")
        want = math.prod(shape) * dtype.itemsize
        if file is None and want == 0:  # tensordict writes no file for an empty tensor
            tensors[k] = torch.empty(shape, dtype=dtype)
            continue
        if file is None:
            raise bad(f"no {k}.memmap for key {k!r}")
        if file.stat().st_size != want:
            raise bad(f"{file.name} holds {file.stat().st_size} bytes, its shape {shape} and dtype need {want}")
        tensors[k] = MemoryMappedTensor.from_filename(file, dtype=dtype, shape=torch.Size(shape), mode="r")
    return TensorDict(tensors, batch_size=batch)


@dataclass
class FeatureSet:
    """A feature directory opened read-only and checked against the data contract."""

    path: Path
    mode: str
    kind: str
    storage_dtype: str
    ids: list[str]
    texts: list[str]
    td: "object"  # tensordict.TensorDict of MemoryMappedTensors, rows = samples

    @classmethod
    def open(cls, path: str | os.PathLike, *, mode: str | None = None, kind: str | None = None) -> "FeatureSet":
        """Open ``path``; ``mode``/``kind``, when given, must match what the directory holds.

        Feature sets travel (``dvc pull``), so ``td/`` is read as plain data: its layout and
        ``meta.json`` are checked first and anything but plain tensors (a pickled entry, a nested
        folder, a class to import) is refused before a byte of it is loaded; tensordict's own
        loader, which would unpickle such entries, is never called on it.
        """
        path = Path(path)
        info_file = path / INFO_JSON
        if not info_file.is_file():
            raise FeatureSetError(f"{path}: not a feature set (no {INFO_JSON})")
        try:
            info = json.loads(info_file.read_text())
        except json.JSONDecodeError as e:
            raise FeatureSetError(f"{path}: {INFO_JSON} is not valid JSON ({e})") from e
        for name, want in (("mode", mode), ("kind", kind)):
            if want is not None and info.get(name) != want:
                raise FeatureSetError(f"{path}: holds {name} {info.get(name)!r}, expected {want!r}")
        try:
            shapes = feature_shapes(info.get("mode"), info.get("kind"))
        except ValueError as e:
            raise FeatureSetError(f"{path}: {INFO_JSON}: {e}") from e
        storage = info.get("storage_dtype", "float32")
        if storage not in STORAGE_DTYPES:
            raise FeatureSetError(f"{path}: unknown storage dtype {storage!r}")
        td = _load_plain_memmap(path, set(shapes))
        try:
            rows = read_tsv(path / SAMPLES_TSV, ("id", TEXT_COLUMN[info["kind"]]))
        except TableError as e:
            raise FeatureSetError(f"{path}: {e}") from e
        n = td.batch_size[0] if td.batch_size else -1
        if len(rows) != n:
            raise FeatureSetError(f"{path}: {SAMPLES_TSV} has {len(rows)} rows but the memmap has {n}")
        if "rows" in info and info["rows"] != n:
            raise FeatureSetError(f"{path}: {INFO_JSON} says {info['rows']} rows but the memmap has {n}")
        for k, shape in shapes.items():
            t = td[k]
            if tuple(t.shape[1:]) != shape:
                raise FeatureSetError(f"{path}: key {k!r} has per-sample shape {tuple(t.shape[1:])}, expected {shape}")
            if t.dtype != STORAGE_DTYPES[storage]:
                raise FeatureSetError(f"{path}: key {k!r} is {t.dtype}, info.json says {storage}")
        return cls(
            path=path,
            mode=info["mode"],
            kind=info["kind"],
            storage_dtype=storage,
            ids=[r["id"] for r in rows],
            texts=[r[TEXT_COLUMN[info["kind"]]] for r in rows],
            td=td,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
        """A batch of rows in one indexing call per key (no per-item collation)."""
        out = {}
        for k in self.td.keys():
            t = self.td[k][index]
            out[k] = t.to(dtype) if dtype is not None and t.dtype != dtype else t
        return out
