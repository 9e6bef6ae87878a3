"""The untrained baseline's samples and scores, computed once per configuration and reused.

The baseline (the network as training initialises it, ``train.seed`` at step 0) gives the same
numbers in every experiment that does not change what decides them, so the evaluate stage keeps them
in ``<tracking root>/.cache/baseline/<key>/`` (``scores.json``, ``samples/{id}.flac`` and
``spectrograms/{id}.png``) and reuses them. The key hashes everything that decides them: the network
preset and seed, the data-derived buffers the baseline borrows from the trained network (latent
stats, empty-string features), the sampling settings, the feature set, the scoring settings and
the files they read (events, the profile's decoders, the extractor files found), the device type
and the code the evaluation runs (its import closure, ``mmaudio.code_deps.code_digest``). The
tracking root is ``$DVC_ROOT`` or the repository root, so a `dvc exp run` in a temporary copy
shares the cache. Delete the folder to recompute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from mmaudio.code_deps import code_digest
from mmaudio.config import Params
from mmaudio.evaluation.resolver import MissingWeightsError, resolve_weight
from mmaudio.hashing import dvc_hash

log = logging.getLogger(__name__)

CACHE_DIR = Path(".cache") / "baseline"


def _file_stamp(path: Path) -> list:
    # size and mtime, not a content hash: extractor files are GBs, and a cache key may be conservative
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _extractor_files(extractor_dir: Path) -> dict[str, list | None]:
    from mmaudio.evaluation.official import OFFICIAL_EXTRACTORS

    out: dict[str, list | None] = {}
    for name, spec in OFFICIAL_EXTRACTORS.items():
        try:
            out[name] = _file_stamp(resolve_weight(spec.filename, ext_dir=extractor_dir))
        except MissingWeightsError:
            out[name] = None
    return out


def baseline_key(params: Params, trained: torch.nn.Module, features_path: Path, extractor_dir: Path,
                 decoder_dir: Path, device: torch.device) -> str:
    """Short hash of what decides the baseline's samples and scores (see the module docstring)."""
    cfg = params.evaluate
    state = trained.state_dict()
    buffers = hashlib.sha256()
    for name in ("latent_mean", "latent_std", "empty_string_feat"):
        buffers.update(state[name].detach().float().cpu().numpy().tobytes())
    doc = {
        "network": params.train.network, "seed": params.train.seed, "buffers": buffers.hexdigest(),
        "sampling": [cfg.solver, cfg.num_steps, cfg.cfg_strength, cfg.seed, cfg.batch_size],
        "features": dvc_hash(features_path), "mode": params.extract.mode, "profile": params.profile,
        "decoders": [_file_stamp(f) for f in sorted(Path(decoder_dir).rglob("*")) if f.is_file()],
        "scoring": [cfg.crepe, cfg.extractor_preset, dvc_hash(cfg.events_tsv) if cfg.events_tsv else None],
        "extractors": _extractor_files(extractor_dir), "device": device.type, "code": code_digest("mmaudio.evaluation.evaluate"),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BaselineCache:
    """``<root>/.cache/baseline/<key>/``: ``scores.json`` (every score, without the baseline_ prefix),
    ``samples/{id}.flac`` and ``spectrograms/{id}.png`` (the bytes the evaluation writes for a logged
    sample); written aside and renamed, so a killed run leaves no half entry."""

    def __init__(self, root: Path, key: str):
        # the folder is deleted and replaced on store: only a key this module makes (hex) may name it,
        # never '', '.', '..' or a path that would reach the cache root or outside it
        if not re.fullmatch(r"[0-9a-f]{16}", key):
            raise ValueError(f"baseline cache key must be 16 hex digits (baseline_key()), got {key!r}")
        self.key = key
        self.dir = Path(root) / CACHE_DIR / key

    def load(self, ids: list[str]) -> dict[str, float] | None:
        """The cached scores when the entry holds every id's sample and spectrogram, else None."""
        scores = self.dir / "scores.json"
        files = [self.dir / "samples" / f"{i}.flac" for i in ids] + [self.dir / "spectrograms" / f"{i}.png" for i in ids]
        if not scores.is_file() or any(not f.is_file() for f in files):
            return None
        return {k: (float("nan") if v is None else float(v)) for k, v in json.loads(scores.read_text()).items()}

    def copy_samples(self, ids: list[str], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for i in ids:
            shutil.copyfile(self.dir / "samples" / f"{i}.flac", dest / f"{i}.flac")

    def copy_spectrogram(self, i: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.dir / "spectrograms" / f"{i}.png", dest)
        return dest

    def store(self, scores: Mapping[str, float], samples: Path, ids: list[str], spectrograms: Mapping[str, bytes]) -> None:
        missing = [i for i in ids if i not in spectrograms]
        if missing:
            raise ValueError(f"baseline cache {self.dir}: no spectrogram for ids {missing[:5]}")
        tmp = self.dir.with_name(f"{self.key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "samples").mkdir(parents=True)
        (tmp / "spectrograms").mkdir()
        for i in ids:
            shutil.copyfile(samples / f"{i}.flac", tmp / "samples" / f"{i}.flac")
            (tmp / "spectrograms" / f"{i}.png").write_bytes(spectrograms[i])
        doc = {k: (v if v == v else None) for k, v in sorted(scores.items())}  # NaN -> null
        (tmp / "scores.json").write_text(json.dumps(doc, indent=1) + "\n")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.replace(tmp, self.dir)
        log.info("baseline scores and samples cached in %s", self.dir)
