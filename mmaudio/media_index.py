"""Index of a video list: resolve each id to its file and check it can give a training clip.

The check reads container headers (streams, duration) and the first video frame (its display
rotation, which decoding ignores as upstream does; the index records it so such files can be found);
the extraction stage decodes and rejects what headers could not reveal. Every row of the list ends
up either in the index or in the rejects manifest with the reason.

A media folder is listed once; an id matches ``{id}{suffix}`` with the suffix in any case
(``clip.MP4``, ``NAME.WAV``), the same rule for every stage that resolves ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmaudio.media import MediaError, check_frame_size, probe
from mmaudio.tables import check_id, read_tsv

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
INDEX_COLUMNS = (
    "id", "label", "file", "duration_sec", "fps", "width", "height", "audio_rate", "audio_channels", "rotation",
)


class MediaFolder:
    """The files of a media folder by stem, for resolving ids; listed on first use."""

    def __init__(self, folder: str | os.PathLike, suffixes: Sequence[str]):
        self.folder = Path(folder)
        self.suffixes = tuple(suffixes)
        self._by_stem: dict[str, list[str]] | None = None

    def _listing(self) -> dict[str, list[str]]:
        if self._by_stem is None:
            wanted = {s.lower() for s in self.suffixes}
            self._by_stem = {}
            if self.folder.is_dir():
                for entry in os.scandir(self.folder):
                    p = Path(entry.name)
                    if p.suffix.lower() in wanted and entry.is_file():
                        self._by_stem.setdefault(p.stem, []).append(entry.name)
        return self._by_stem

    def resolve(self, media_id: str) -> Path:
        """The single file ``{id}{suffix}``, suffix in any case; raises FileNotFoundError or ValueError
        (several files). ``media_id`` must be a plain file name (else TableError, a ValueError), whichever
        table it came from: a name column is not checked like an id column, and ``..`` or ``/`` would
        leave the folder."""
        check_id(media_id, source=str(self.folder))
        found = sorted(self._listing().get(media_id, []))
        if not found:
            tried = ", ".join(self.suffixes)
            raise FileNotFoundError(f"no file for id {media_id!r} in {self.folder} (tried {tried}, in any case)")
        if len(found) > 1:
            raise ValueError(f"id {media_id!r} matches several files in {self.folder}: {found}")
        return self.folder / found[0]


def resolve_media(media_dir: str | os.PathLike, media_id: str, suffixes: Sequence[str] = VIDEO_SUFFIXES) -> Path:
    """One id against a folder (lists the folder: for many ids, use one :class:`MediaFolder`)."""
    return MediaFolder(media_dir, suffixes).resolve(media_id)


@dataclass
class IndexResult:
    rows: list[dict[str, object]]
    rejects: list[tuple[str, str]]


def index_video_list(list_tsv: str | os.PathLike, media_dir: str | os.PathLike, min_duration_sec: float) -> IndexResult:
    """Check every ``id, label`` row of ``list_tsv`` against ``media_dir``. A bad TSV raises TableError."""
    folder = MediaFolder(media_dir, VIDEO_SUFFIXES)
    entries = read_tsv(list_tsv, ("id", "label"))
    rows: list[dict[str, object]] = []
    rejects: list[tuple[str, str]] = []
    for e in entries:
        vid = e["id"]
        try:
            path = folder.resolve(vid)
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
                "rotation": info.rotation,
            }
        )
    return IndexResult(rows, rejects)
