"""Where the pretrained files of the evaluation extractors come from, and how one is found.

:func:`resolve_weight` looks, in order, at an explicit path, ``ext_weights/<file>``, and the local
Hugging Face cache (read only, never the network). It downloads only when asked to
(``allow_download=True``). A file that cannot be found raises :class:`MissingWeightError` naming the
file, where it was looked for, where to get it and its size when known.

:data:`EVALUATION_WEIGHTS` lists the files av-benchmark's extractors load, with the sources their
code names. Sizes are not stated anywhere in that code, so they are left unknown (None) rather than
guessed; checksums are recorded where the code states them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mmaudio.weights import WeightFileError

log = logging.getLogger(__name__)

DEFAULT_EXT_DIR = "ext_weights"


class MissingWeightError(FileNotFoundError):
    """An evaluation weight file is not present locally and no download was allowed."""


@dataclass(frozen=True)
class WeightSource:
    filename: str
    used_for: str  # which metric(s) need it
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None  # the file's path inside hf_repo, when it differs from filename
    size: int | None = None  # bytes; None where no upstream code states it
    md5: str | None = None
    sha256_prefix: str | None = None  # torch.hub convention: the hex digits after the last '-' in the name
    upstream: str = ""  # where av-benchmark (or the library it calls) names this file


EVALUATION_WEIGHTS: dict[str, WeightSource] = {
    source.filename: source
    for source in (
        WeightSource(
            filename="Cnn14_16k_mAP=0.438.pth",
            used_for="FD-PANN, KL-PANNS, ISC-PANNS (PANNs Cnn14 at 16 kHz; state dict under 'model')",
            url="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
            upstream="av-benchmark av_bench/panns/models.py:244-253",
        ),
        WeightSource(
            filename="vggish-10086976.pth",
            used_for="FD-VGG (VGGish, no PCA postprocessing)",
            url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
            sha256_prefix="10086976",
            upstream="av-benchmark av_bench/vggish/vggish.py:54 -> harritaylor/torchvggish hubconf.py",
        ),
        WeightSource(
            filename="passt-s-f128-p16-s10-ap.476-swa.pt",
            used_for="FD-PaSST, KL-PASST, ISC-PASST (PaSST passt_s_swa_p16_128_ap476)",
            url=(
                "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
                "passt-s-f128-p16-s10-ap.476-swa.pt"
            ),
            upstream=(
                "av-benchmark av_bench/extraction_models.py:42 -> hear21passt base.py get_basic_model -> "
                "models/passt.py default_cfgs"
            ),
        ),
        WeightSource(
            filename="synchformer_state_dict.pth",
            used_for="DeSync (Synchformer audio/visual features and sync head)",
            url="https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth",
            md5="5b2f5594b0730f70e41e549b7c94390c",
            upstream=(
                "av-benchmark README (Download Pretrained Models); "
                "md5 from MMAudio mmaudio/utils/download_utils.py:51-56"
            ),
        ),
        WeightSource(
            filename="imagebind_huge.pth",
            used_for="IB-score (ImageBind huge)",
            url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
            upstream=(
                "av-benchmark av_bench/extraction_models.py:45 -> "
                "hkchengrex/ImageBind imagebind_model.imagebind_huge"
            ),
        ),
        WeightSource(
            filename="music_speech_audioset_epoch_15_esc_89.98.pt",
            used_for="LAION-CLAP score (HTSAT-base, no fusion)",
            url="https://huggingface.co/lukewys/laion_clap/resolve/main/music_speech_audioset_epoch_15_esc_89.98.pt",
            hf_repo="lukewys/laion_clap",
            upstream="av-benchmark README (Download Pretrained Models), av_bench/extraction_models.py:15-16,47-48",
        ),
        WeightSource(
            filename="CLAP_weights_2023.pth",
            used_for="MS-CLAP score (msclap version '2023')",
            hf_repo="microsoft/msclap",
            upstream="av-benchmark av_bench/extraction_models.py:50 -> msclap CLAPWrapper.model_repo, model_name",
        ),
    )
}


def resolve_weight(
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
) -> Path:
    """Path of the weight file ``name`` (a file name, e.g. ``'Cnn14_16k_mAP=0.438.pth'``).

    Order: ``explicit`` (must exist if given) > ``ext_dir/name`` > the local Hugging Face cache of
    ``hf_repo`` > a download, only with ``allow_download``. Sources and size default to the entry of
    ``name`` in :data:`EVALUATION_WEIGHTS`; arguments override them. A found file whose size differs
    from a known ``size`` is refused (:class:`~mmaudio.weights.WeightFileError`).
    """
    if not name or Path(name).name != name:
        raise ValueError(f"weight name must be a plain file name, got {name!r}")
    known = EVALUATION_WEIGHTS.get(name)
    hf_repo = hf_repo if hf_repo is not None else (known.hf_repo if known else None)
    hf_filename = hf_filename or (known.hf_filename if known else None) or name
    url = url if url is not None else (known.url if known else None)
    size = size if size is not None else (known.size if known else None)

    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise MissingWeightError(
                f"weight file '{name}' not found at the given path {path}. " + _where_to_get(name, hf_repo, url, size)
            )
        return _checked(path, size)

    local = Path(ext_dir) / name
    if local.is_file():
        return _checked(local, size)

    cached = _find_in_hf_cache(hf_repo, hf_filename, hf_cache_dir) if hf_repo else None
    if cached is not None:
        return _checked(cached, size)

    looked_at = [str(local)] + ([f"Hugging Face cache of {hf_repo} ({hf_filename})"] if hf_repo else [])
    if not allow_download:
        raise MissingWeightError(
            f"weight file '{name}' not found (looked at: {'; '.join(looked_at)}). "
            + _where_to_get(name, hf_repo, url, size)
            + f" Place it at {local}"
            + (f" (`hf download {hf_repo} {hf_filename} --local-dir {Path(ext_dir)}`)" if hf_repo else "")
            + "; the pipeline never downloads (only a direct call with allow_download=True does)."
        )
    if hf_repo is not None:
        from huggingface_hub import hf_hub_download

        log.info("downloading %s from Hugging Face repo %s", hf_filename, hf_repo)
        return _checked(Path(hf_hub_download(hf_repo, hf_filename, cache_dir=hf_cache_dir)), size)
    if url is not None:
        md5 = known.md5 if known else None
        sha256_prefix = known.sha256_prefix if known else None
        return _download(url, local, size=size, md5=md5, sha256_prefix=sha256_prefix)
    raise MissingWeightError(
        f"weight file '{name}' not found (looked at: {'; '.join(looked_at)}) and no source is known to download it from"
    )


def _where_to_get(name: str, hf_repo: str | None, url: str | None, size: int | None) -> str:
    sources = [s for s in (url, f"Hugging Face repo {hf_repo}" if hf_repo else None) if s]
    source_text = " or ".join(sources) if sources else "no known source"
    size_text = f"{size} bytes" if size is not None else "size unknown"
    return f"Source of '{name}': {source_text} ({size_text})."


def _find_in_hf_cache(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    # None: not cached; a sentinel object: "known missing" was cached; a str: the file's path.
    return Path(found) if isinstance(found, str) else None


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
