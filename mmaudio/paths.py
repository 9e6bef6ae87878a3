"""Where stages may write: one check of every output path, and the only code that replaces a folder.

Two layers, so that no typed value can delete data:

1. :func:`check_stage_paths`, called by every stage before any work, refuses an output that is empty
   or ``.``, the repository root or a parent of it, inside ``.git``/``.dvc``, the official weights
   folder (``ext_weights/``) or a parent of it, or equal to, a parent of or inside an input (this
   stage's reads and every source the pipeline reads: media folders, caption and list TSVs, weight
   files). It also checks that the output can be written (an existing folder, or the nearest
   existing parent), so a read-only place fails at once instead of after hours of work. Errors name
   the params key and the path.
2. :func:`replace_dir` / :func:`clear_dir` (every folder a library function replaces or empties goes
   through them) refuse a folder that holds anything its writer did not make (``owns``), and any
   folder that is the current directory, one of its parents, a repository root or ``/``, whoever
   the caller is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mmaudio.choices import PROFILE_ROOTS, Profile
from mmaudio.config import ConfigError, Params, find_repo_root

REPO_MARKERS = (".git", ".dvc", "params.yaml")  # a folder holding one of these is a repository root


class OutputPathError(ConfigError):
    """An output path would overwrite or delete something that is not the stage's own output."""


@dataclass(frozen=True)
class Protected:
    path: Path  # absolute, resolved
    what: str  # how the error names it: "input 'video_datasets.x.media_dir'", "the repository root"


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _show(path: str | os.PathLike) -> str:
    return repr(os.fspath(path))


def official_weights_dir(root: Path) -> Path:
    return (root / PROFILE_ROOTS[Profile.OFFICIAL]).resolve()


def tiny_weights_dir(root: Path) -> Path:
    return (root / PROFILE_ROOTS[Profile.TINY]).resolve()


def pipeline_sources(params: Params) -> dict[str, str]:
    """Every path the pipeline reads that no stage writes, by params key (user data and weights)."""
    out: dict[str, str] = {}
    for name, a in params.audio_datasets.items():
        out[f"audio_datasets.{name}.media_dir"] = a.media_dir
        out[f"audio_datasets.{name}.captions_tsv"] = a.captions_tsv
    for name, v in params.video_datasets.items():
        out[f"video_datasets.{name}.media_dir"] = v.media_dir
        out[f"video_datasets.{name}.list_tsv"] = v.list_tsv
    for key, value in (("train.weights", params.train.weights), ("train.empty_string", params.train.empty_string),
                       ("evaluate.events_tsv", params.evaluate.events_tsv), ("evaluate.extractor_dir", params.evaluate.extractor_dir)):
        if value:
            out[key] = value
    return out


def check_output_path(
    key: str,
    path: str | os.PathLike,
    *,
    root: Path,
    protected: Iterable[Protected] = (),
    owned: Iterable[Path] = (),
) -> Path:
    """The resolved ``path`` of output ``key`` if writing there cannot harm anything, else
    :class:`OutputPathError` naming ``key`` and the path. ``owned``: folders this output may be or lie
    in even though they sit inside a protected one (the tiny profile's folder for its own stage)."""
    raw = os.fspath(path)
    if raw.strip() in ("", ".", "./"):
        raise OutputPathError(f"key '{key}' is {raw!r}: an output must be a folder or file of its own, not the current folder")
    target = _resolve(raw)
    root = root.resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor) or _inside(root, target) or _inside(cwd, target):
        raise OutputPathError(f"key '{key}' = {_show(raw)} is the repository root, the current folder or a parent of them ({target})")
    for marker in (".git", ".dvc"):
        if _inside(target, root / marker):
            raise OutputPathError(f"key '{key}' = {_show(raw)} lies inside {root / marker}")
    owned = [_resolve(o) for o in owned]
    for p in protected:
        if _inside(p.path, target):
            rel = "is" if p.path == target else "contains"
            raise OutputPathError(f"key '{key}' = {_show(raw)} {rel} {p.what} ({p.path}); refusing to write over it")
        if _inside(target, p.path) and not any(_inside(target, o) and not _inside(p.path, o) for o in owned):
            raise OutputPathError(f"key '{key}' = {_show(raw)} lies inside {p.what} ({p.path}); refusing to write into it")
    _check_writable(key, raw, target)
    return target


def _check_writable(key: str, raw: str, target: Path) -> None:
    probe = target
    while not probe.exists():
        probe = probe.parent
    if probe != target and not probe.is_dir():
        raise OutputPathError(f"key '{key}' = {_show(raw)}: {probe} is a file, so nothing can be created under it")
    folder = probe if probe.is_dir() else probe.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(folder) else "no write permission"
        raise OutputPathError(f"key '{key}' = {_show(raw)}: {folder} is not writable ({reason})")


def _read_only_fs(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def check_stage_paths(
    params: Params,
    writes: Mapping[str, str | os.PathLike],
    *,
    reads: Mapping[str, str | os.PathLike] | None = None,
    products: Callable[[str, Path], bool] | None = None,
    owned: Iterable[str | os.PathLike] = (),
    root: Path | None = None,
) -> dict[str, Path]:
    """Check every output of a stage (``writes``: params key -> path) against the repository, the
    official weights, the stage's ``reads`` and every pipeline source. ``products(key, source)``
    says that a source path is made by this stage's output ``key`` (the example generator makes
    the example media folders) and so is not protected from it. Two outputs may not overlap."""
    root = root or find_repo_root()
    reads = dict(reads or {})
    sources = {**pipeline_sources(params), **reads}
    resolved: dict[str, Path] = {}
    for key, path in writes.items():
        protected = [Protected(official_weights_dir(root), "the official weights folder")]
        for skey, spath in sources.items():
            sp = _resolve(spath)  # relative paths are opened from the current folder, like the outputs
            if products is not None and skey not in reads and products(key, sp):
                continue
            protected.append(Protected(sp, f"input '{skey}'"))
        resolved[key] = check_output_path(key, path, root=root, protected=protected, owned=owned)
    keys = list(resolved)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if _inside(resolved[a], resolved[b]) or _inside(resolved[b], resolved[a]):
                raise OutputPathError(f"keys '{a}' and '{b}' overlap ({resolved[a]}, {resolved[b]}); each output needs its own path")
    return resolved


# -- the folders library code replaces ---------------------------------------------------------------


def _refuse_dangerous(path: Path, what: str) -> Path:
    raw = os.fspath(path)
    if raw.strip() in ("", ".", "./"):
        raise OutputPathError(f"{what}: refusing to replace {raw!r} (the current folder)")
    target = _resolve(path)
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor) or _inside(cwd, target):
        raise OutputPathError(f"{what}: refusing to replace {target}: it is the current folder or one of its parents")
    if target.is_dir() and any((target / m).exists() for m in REPO_MARKERS):
        raise OutputPathError(f"{what}: refusing to replace {target}: it is a repository root")
    return target


def foreign_entries(folder: Path, owns: Callable[[Path], bool]) -> list[str]:
    """Entries of ``folder`` (relative names, at most 5) that ``owns`` does not claim."""
    found = []
    for p in sorted(folder.iterdir()):
        if not owns(p):
            found.append(p.name + ("/" if p.is_dir() and not p.is_symlink() else ""))
            if len(found) == 5:
                break
    return found


def _check_owned(dst: Path, owns: Callable[[Path], bool], what: str) -> None:
    if dst.is_symlink() or not dst.is_dir():
        raise OutputPathError(f"{what}: {dst} exists and is not a folder; refusing to replace it")
    foreign = foreign_entries(dst, owns)
    if foreign:
        raise OutputPathError(
            f"{what}: {dst} holds entries this stage does not write ({', '.join(foreign)}); refusing to replace it. "
            "Move them away or choose another output path"
        )


def check_replaceable(dst: str | os.PathLike, *, owns: Callable[[Path], bool], what: str) -> Path:
    """Raise :class:`OutputPathError` unless ``dst`` is absent or a folder holding only what ``owns``
    claims, in a place that is safe to replace; call it before the work, so a refusal costs nothing."""
    dst = Path(dst)
    _refuse_dangerous(dst, what)
    if dst.exists() or dst.is_symlink():
        _check_owned(dst, owns, what)
    return dst


def clear_dir(path: str | os.PathLike, *, owns: Callable[[Path], bool], what: str) -> Path:
    """Remove the folder ``path`` so that its writer can start afresh; refused (nothing removed) if
    it holds anything ``owns`` does not claim or is a dangerous place. Returns ``path``."""
    path = check_replaceable(path, owns=owns, what=what)
    if path.exists():
        shutil.rmtree(path)
    return path


def replace_dir(src: Path, dst: Path, *, owns: Callable[[Path], bool], what: str) -> None:
    """Move the folder ``src`` to ``dst``, replacing an existing ``dst`` (which must hold only what
    ``owns`` claims) with at most a moment without either."""
    check_replaceable(dst, owns=owns, what=what)
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def staging_dir(dst: str | os.PathLike) -> Path:
    """The folder (not yet made) in which this process assembles what :func:`replace_dir` will move
    to ``dst``: ``.<name>.tmp-<pid>`` next to it. Leftovers of processes that are gone, and this
    process's own from an earlier failed attempt, are removed first."""
    dst = Path(dst)
    remove_stale_siblings(dst, ("tmp", "old"))
    return dst.with_name(f".{dst.name}.tmp-{os.getpid()}")


def remove_stale_siblings(path: Path, tags: Iterable[str]) -> list[Path]:
    """Remove ``.<name>.<tag>-<pid>`` folders next to ``path`` left by processes that are gone (a
    kill, SIGBUS, a power cut); a folder of a live process is left alone. Returns what was removed.
    ``path`` must name a folder of its own: '', '.', '..' and '/' have no name to match siblings by."""
    if Path(path).name in ("", ".", ".."):
        raise OutputPathError(f"refusing to clean up next to {os.fspath(path)!r}: it names no folder of its own")
    removed = []
    for tag in tags:
        for p in path.parent.glob(f".{path.name}.{tag}-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- free space ---------------------------------------------------------------------------------------


class NoSpaceError(OSError):
    """Not enough free space for what is about to be written; names the folder and both sizes."""


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raise :class:`NoSpaceError` (errno ENOSPC) if ``folder``'s file system has less than
    ``needed_bytes`` free (for the user: root's reserve does not count)."""
    import errno

    probe = _resolve(folder)
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize
    if needed_bytes > free:
        raise NoSpaceError(
            errno.ENOSPC,
            f"No space left on device: {what} needs {needed_bytes / 1e6:.1f} MB but {probe} has {free / 1e6:.1f} MB free",
            str(folder),
        )
