"""Index of a video list: resolve each id to its file and check it can give a training clip.

The check reads container headers only (streams, duration); the extraction stage decodes fully and
rejects what headers could not reveal. Every row of the list ends up either in the index or in
the rejects manifest with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmaudio.media import MediaError, check_frame_size, probe
from mmaudio.tables import check_id, read_tsv

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
INDEX_COLUMNS = ("id", "label", "file", "duration_sec", "fps", "width", "height", "audio_rate", "audio_channels")


def resolve_media(media_dir: Path, media_id: str, suffixes=VIDEO_SUFFIXES) -> Path:
    """The single file ``media_dir/{id}.{suffix}``; raises FileNotFoundError or ValueError (ambiguous).

    ``media_id`` must be a plain file name (else TableError, a ValueError), whichever table it came
    from: a name column is not checked like an id column, and ``..`` or ``/`` would leave the folder.
    """
    check_id(media_id, source=str(media_dir))
    found = [media_dir / f"{media_id}{s}" for s in suffixes if (media_dir / f"{media_id}{s}").is_file()]
    if not found:
        raise FileNotFoundError(f"no file for id {media_id!r} in {media_dir} (tried {', '.join(suffixes)})")
    if len(found) > 1:
        raise ValueError(f"id {media_id!r} matches several files in {media_dir}: {[p.name for p in found]}")
    return found[0]


@dataclass
class IndexResult:
    rows: list[dict[str, object]]
    rejects: list[tuple[str, str]]


def index_video_list(list_tsv: str | os.PathLike, media_dir: str | os.PathLike, min_duration_sec: float) -> IndexResult:
    """Check every ``id, label`` row of ``list_tsv`` against ``media_dir``. A bad TSV raises TableError."""
    media_dir = Path(media_dir)
    entries = read_tsv(list_tsv, ("id", "label"))
    rows: list[dict[str, object]] = []
    rejects: list[tuple[str, str]] = []
    for e in entries:
        vid = e["id"]
        try:
            path = resolve_media(media_dir, vid)
        except (FileNotFoundError, ValueError) as err:
            rejects.append((vid, str(err)))
            continue
        try:
            info = probe(path)
            check_frame_size(path, info.width, info.height)
        except MediaError as err:
            rejects.append((vid, err.reason))
            continue
        if not info.has_video:
            rejects.append((vid, "no video stream"))
            continue
        if not info.has_audio:
            rejects.append((vid, "no audio stream"))
            continue
        if info.duration_sec < min_duration_sec:
            rejects.append((vid, f"shorter than {min_duration_sec:g} s ({info.duration_sec:.3f} s)"))
            continue
        rows.append(
            {
                "id": vid,
                "label": e["label"],
                "file": path.name,
                "duration_sec": f"{info.duration_sec:.3f}",
                "fps": f"{info.fps:.3f}",
                "width": info.width,
                "height": info.height,
                "audio_rate": info.audio_rate,
                "audio_channels": info.audio_channels,
            }
        )
    return IndexResult(rows, rejects)
