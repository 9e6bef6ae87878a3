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

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

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
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        dtype = STORAGE_DTYPES[storage_dtype]
        # An expanded one-row template has the full shape but no memory behind it; memmap_like only
        # reads shapes and dtypes, so the files are allocated (sparse) without a copy in RAM.
        template = TensorDict(
            {k: torch.zeros((1, *shape), dtype=dtype).expand(self.num_rows, *shape) for k, shape in self.shapes.items()},
            batch_size=[self.num_rows],
        )
        self.td = template.memmap_like(prefix=self.tmp / TD_DIR)

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
        replace_dir(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        """Remove the partial folder (nothing happens after a commit)."""
        self.td = None
        if self.tmp.exists():
            shutil.rmtree(self.tmp)


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with at most a moment without either."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


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
        """Open ``path``; ``mode``/``kind``, when given, must match what the directory holds."""
        from tensordict import TensorDict

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
        try:
            td = TensorDict.load_memmap(path / TD_DIR, mode="r")
        except (FileNotFoundError, json.JSONDecodeError, RuntimeError, ValueError, KeyError) as e:
            raise FeatureSetError(f"{path}: cannot open the memmap in {TD_DIR}/ ({e})") from e
        keys = set(td.keys())
        if keys != set(shapes):
            raise FeatureSetError(f"{path}: keys {sorted(keys)} do not match the contract {sorted(shapes)}")
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
