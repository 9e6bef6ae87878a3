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

from mmaudio.tables import read_tsv, write_rejects, write_tsv

Mode = Literal["16k", "44k"]
Kind = Literal["video", "audio"]

LATENT_SHAPES: dict[str, tuple[int, int]] = {"16k": (250, 20), "44k": (345, 40)}
TEXT_SHAPE = (77, 1024)
CLIP_SHAPE = (64, 1024)
SYNC_SHAPE = (192, 768)
STORAGE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TEXT_COLUMN: dict[str, str] = {"video": "label", "audio": "caption"}

TD_DIR, SAMPLES_TSV, REJECTS_TSV, INFO_JSON = "td", "samples.tsv", "rejects.tsv", "info.json"


class FeatureSetError(ValueError):
    """A feature directory does not match the data contract; the message names it and the mismatch."""


def feature_shapes(mode: str, kind: str) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every key for ``mode`` ('16k'/'44k') and ``kind`` ('video'/'audio')."""
    if mode not in LATENT_SHAPES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(LATENT_SHAPES)}")
    if kind not in TEXT_COLUMN:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(TEXT_COLUMN)}")
    shapes: dict[str, tuple[int, ...]] = {
        "mean": LATENT_SHAPES[mode],
        "std": LATENT_SHAPES[mode],
        "text_features": TEXT_SHAPE,
    }
    if kind == "video":
        shapes["clip_features"] = CLIP_SHAPE
        shapes["sync_features"] = SYNC_SHAPE
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
    """Validate and write a feature set; the directory appears whole or not at all."""
    from tensordict import TensorDict

    out = Path(out_dir)
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
    n = len(ids)
    if len(texts) != n:
        raise ValueError(f"{out}: {n} ids but {len(texts)} texts")
    shapes = feature_shapes(mode, kind)
    if set(tensors) != set(shapes):
        raise FeatureSetError(f"{out}: keys {sorted(tensors)} do not match the contract {sorted(shapes)}")
    for k, shape in shapes.items():
        if tuple(tensors[k].shape) != (n, *shape):
            raise FeatureSetError(f"{out}: key {k!r} has shape {tuple(tensors[k].shape)}, expected {(n, *shape)}")
    dtype = STORAGE_DTYPES[storage_dtype]
    td = TensorDict({k: v.to(dtype).contiguous() for k, v in tensors.items()}, batch_size=[n])

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        td.memmap_(prefix=tmp / TD_DIR)
        write_tsv(tmp / SAMPLES_TSV, ("id", TEXT_COLUMN[kind]), [{"id": i, TEXT_COLUMN[kind]: t} for i, t in zip(ids, texts)])
        write_rejects(tmp / REJECTS_TSV, rejects)
        meta = {"mode": mode, "kind": kind, "storage_dtype": storage_dtype, "rows": n, **(info or {})}
        (tmp / INFO_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


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
        info = json.loads(info_file.read_text())
        for name, want in (("mode", mode), ("kind", kind)):
            if want is not None and info.get(name) != want:
                raise FeatureSetError(f"{path}: holds {name} {info.get(name)!r}, expected {want!r}")
        shapes = feature_shapes(info["mode"], info["kind"])
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
        rows = read_tsv(path / SAMPLES_TSV, ("id", TEXT_COLUMN[info["kind"]]))
        n = td.batch_size[0] if td.batch_size else -1
        if len(rows) != n:
            raise FeatureSetError(f"{path}: {SAMPLES_TSV} has {len(rows)} rows but the memmap has {n}")
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
