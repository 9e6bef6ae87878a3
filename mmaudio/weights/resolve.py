"""The one way a weight file is found, and the one error when it is not.

:func:`resolve_file` looks, in order, at an explicit path, ``<ext_dir>/<name>``, and the local
Hugging Face cache (read only, never the network); it downloads only when the caller allows it
(``allow_download=True``). :func:`hf_cache_file` is the cache lookup every loader uses (encoder
profiles, CLIP, BigVGAN-v2, evaluation extractors). Whatever is absent raises
:class:`MissingWeightsError`, which lists every missing file with where it was looked for and where
to get it (:mod:`mmaudio.weights.manifest`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmaudio.weights.io import WeightFileError
from mmaudio.weights.manifest import WEIGHT_FILES

log = logging.getLogger(__name__)

DEFAULT_EXT_DIR = "ext_weights"


@dataclass(frozen=True)
class MissingWeight:
    relpath: str  # the file's name (relative to the folder it was looked for in)
    looked_at: str  # where it was looked for
    components: tuple[str, ...]  # what needs it
    hint: str  # where to get it


class MissingWeightsError(FileNotFoundError):
    """Weight files a request needs are absent; ``missing`` lists every one of them (one line each,
    under ``heading``, a sentence that names the request)."""

    def __init__(self, heading: str, missing: Sequence[MissingWeight]) -> None:
        self.missing = list(missing)
        lines = [heading]
        for m in self.missing:
            lines.append(f"  - {m.relpath} (for {', '.join(m.components)}): looked at {m.looked_at}; get it: {m.hint}")
        super().__init__("\n".join(lines))


def hf_cache_file(repo_id: str, names: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The first of ``names`` that the local Hugging Face cache holds for ``repo_id``; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        # None: not cached; a sentinel object: "known missing" was cached; a str: the file's path.
        if isinstance(found, str):
            return Path(found)
    return None


def hf_cache_location(cache_dir: str | os.PathLike | None = None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def where_to_get(name: str, hf_repo: str | None, url: str | None, size: int | None) -> str:
    sources = [s for s in (url, f"Hugging Face repo {hf_repo}" if hf_repo else None) if s]
    source_text = " or ".join(sources) if sources else "no known source"
    size_text = f"{size} bytes" if size is not None else "size unknown"
    return f"Source of '{name}': {source_text} ({size_text})."


def resolve_file(
    name: str,
    *,
    explicit: str | os.PathLike | None = None,
    ext_dir: str | os.PathLike = DEFAULT_EXT_DIR,
    hf_repo: str | None = None,
    hf_filename: str | None = None,
    url: str | None = None,
    size: int | None = None,
    allow_download: bool = False,
    hf_cache_dir: str | os.PathLike | None = None,
    used_for: str | None = None,
) -> Path:
    """Path of the weight file ``name`` (a file name, e.g. ``'Cnn14_16k_mAP=0.438.pth'``).

    Order: ``explicit`` (must exist if given) > ``ext_dir/name`` > the local Hugging Face cache of
    ``hf_repo`` > a download, only with ``allow_download``. Sources, size and checksums default to the
    entry of ``name`` in :data:`~mmaudio.weights.manifest.WEIGHT_FILES`; arguments override them. A
    found file whose size differs from a known ``size`` is refused (:class:`WeightFileError`).
    """
    if not name or Path(name).name != name:
        raise ValueError(f"weight name must be a plain file name, got {name!r}")
    known = WEIGHT_FILES.get(name)
    hf_repo = hf_repo if hf_repo is not None else (known.hf_repo if known else None)
    hf_filename = hf_filename or (known.hf_filename if known else None) or name
    url = url if url is not None else (known.url if known else None)
    size = size if size is not None else (known.size if known else None)
    used_for = used_for or (known.used_for if known else "weights")

    def missing(looked_at: str, hint: str) -> MissingWeightsError:
        return MissingWeightsError(f"weight file '{name}' not found:", [MissingWeight(name, looked_at, (used_for,), hint)])

    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise missing(f"the given path {path}", where_to_get(name, hf_repo, url, size))
        return _checked(path, size)

    local = Path(ext_dir) / name
    if local.is_file():
        return _checked(local, size)

    cached = hf_cache_file(hf_repo, [hf_filename], hf_cache_dir) if hf_repo else None
    if cached is not None:
        return _checked(cached, size)

    looked_at = [str(local)] + ([f"Hugging Face cache of {hf_repo} ({hf_filename})"] if hf_repo else [])
    if not allow_download:
        # `hf` is the CLI of the pinned huggingface_hub (it no longer installs `huggingface-cli`)
        fetch = f" (`hf download {hf_repo} {hf_filename} --local-dir {Path(ext_dir)}`)" if hf_repo else ""
        raise missing("; ".join(looked_at),
                      where_to_get(name, hf_repo, url, size) + f" Place it at {local}{fetch}; the pipeline never "
                      "downloads (only a direct call with allow_download=True does).")
    if hf_repo is not None:
        from huggingface_hub import hf_hub_download

        log.info("downloading %s from Hugging Face repo %s", hf_filename, hf_repo)
        return _checked(Path(hf_hub_download(hf_repo, hf_filename, cache_dir=hf_cache_dir)), size)
    if url is not None:
        md5 = known.md5 if known else None
        sha256_prefix = known.sha256_prefix if known else None
        return _download(url, local, size=size, md5=md5, sha256_prefix=sha256_prefix)
    raise missing("; ".join(looked_at), "no source is known to download it from")


def _checked(path: Path, size: int | None) -> Path:
    if size is not None and path.stat().st_size != size:
        raise WeightFileError(
            f"weight file {path} has {path.stat().st_size} bytes, expected {size} (truncated or a different file)"
        )
    return path


def _download(url: str, dest: Path, *, size: int | None, md5: str | None, sha256_prefix: str | None) -> Path:
    """Fetch ``url`` into ``dest`` through a temp file in the same folder, verified before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    md5_hash, sha256_hash = hashlib.md5(), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5_hash.update(chunk)
                sha256_hash.update(chunk)
        if md5 is not None and md5_hash.hexdigest() != md5:
            raise WeightFileError(f"download of {url} has md5 {md5_hash.hexdigest()}, expected {md5}")
        if sha256_prefix is not None and not sha256_hash.hexdigest().startswith(sha256_prefix):
            raise WeightFileError(
                f"download of {url} has sha256 {sha256_hash.hexdigest()}, expected prefix {sha256_prefix}"
            )
        _checked(Path(tmp), size)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
