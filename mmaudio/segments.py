"""Rows to decoded training clips, for the extraction stages.

Audio datasets: the partition stage's clip TSV (``id, name, start_sample, end_sample``) plus captions
keyed by file stem. Video datasets: the index stage's TSV (usable rows with their file). Either gives
a :class:`RowList`, sorted by id, with the rows earlier stages could not use (``carried``) and those
this stage cannot list (``rejects``: no caption, no file), kept apart so each is counted where it arose.

The datasets return a :class:`Decoded` clip or a :class:`Rejected` record for every row (never
``None``), so a DataLoader worker can decode while the main process encodes, and nothing is lost.
Upstream semantics (MMAudio's WavTextClipsDataset and VGGSound datasets):

- audio: mono, peak-normalised to 0.95 over the whole file (silent files rejected), cut at the native
  rate, resampled, and the full clip length required; a file is streamed once for all its clips, so
  memory holds the clips, not the file;
- video: the first 8 s at 8 fps / 384 px and 25 fps / 224 px (frames as libavfilter's ``fps`` filter
  picks them, see :mod:`mmaudio.media`), the audio track on the same timeline; peak-normalised (silent
  rejected) only for training lists (``normalize_audio``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmaudio.config import AudioDatasetConfig, VideoDatasetConfig
from mmaudio.media import CLIP_FRAMES, SYNC_FRAMES, MediaError, decode_audio_segments, load_video_clip, resample
from mmaudio.media_index import VIDEO_SUFFIXES, MediaFolder
from mmaudio.partition import AUDIO_SUFFIXES, CLIP_COLUMNS
from mmaudio.tables import REJECT_COLUMNS, TableError, nonnegative_int, plain_file_name, read_tsv

PEAK_LEVEL = 0.95  # upstream scales each file so that max |x| is this
SILENCE_PEAK = 1e-6  # a file whose peak is at or below this is silent and rejected


@dataclass(frozen=True)
class ClipRow:
    """One clip to extract: where it comes from and its text (caption or label)."""

    id: str
    text: str
    path: str
    start_sample: int = 0  # native-rate cut (audio datasets); video clips start at 0
    end_sample: int | None = None


@dataclass
class RowList:
    rows: list[ClipRow]  # sorted by id
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): rows this stage cannot list
    carried: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): the earlier stage's rejects


def _carried_rejects(path: str | os.PathLike) -> list[tuple[str, str]]:
    """An earlier stage's rejects manifest. Its ids may be file names that were rejected precisely
    because they are not valid ids, so they are carried as text, unchecked and not necessarily unique."""
    return [(r["id"], r["reason"]) for r in read_tsv(path, REJECT_COLUMNS, id_column=None)]


def _int_field(row: dict[str, str], column: str, source: str) -> int:
    try:
        return int(row[column])
    except ValueError as e:
        raise TableError(f"{source}: id {row['id']!r}: {column} {row[column]!r} is not an integer") from e


def audio_rows(ds: AudioDatasetConfig) -> RowList:
    """The clips of an audio dataset with their captions; clips of uncaptioned files are rejects."""
    folder = MediaFolder(ds.media_dir, AUDIO_SUFFIXES)
    captions = {r["id"]: r["caption"] for r in read_tsv(ds.captions_tsv, ("id", "caption"))}
    rejects: list[tuple[str, str]] = []
    rows: list[ClipRow] = []
    checks = {"name": plain_file_name, "start_sample": nonnegative_int, "end_sample": nonnegative_int}
    for r in sorted(read_tsv(ds.clips_tsv, CLIP_COLUMNS, checks=checks), key=lambda r: r["id"]):
        name = r["name"]
        if name not in captions:
            rejects.append((r["id"], f"no caption for file {name!r} in {ds.captions_tsv}"))
            continue
        try:
            path = folder.resolve(name)
        except (FileNotFoundError, ValueError) as e:
            rejects.append((r["id"], str(e)))
            continue
        start = _int_field(r, "start_sample", str(ds.clips_tsv))
        end = _int_field(r, "end_sample", str(ds.clips_tsv))
        if end <= start:
            raise TableError(f"{ds.clips_tsv}: id {r['id']!r}: end_sample {end} is not after start_sample {start}")
        rows.append(ClipRow(r["id"], captions[name], str(path), start, end))
    return RowList(rows, rejects, _carried_rejects(ds.rejects_tsv))


def video_rows(ds: VideoDatasetConfig) -> RowList:
    """The usable rows of a video dataset's index, with the index stage's rejects carried forward."""
    media_dir = Path(ds.media_dir)
    # The index is generated, but read back it is an input like any other: its file column is joined
    # to the media folder, so it must name a file of that folder, and the one its id names.
    index = read_tsv(ds.index_tsv, ("id", "label", "file"), checks={"file": plain_file_name})
    for r in index:
        file = Path(r["file"])
        if file.stem != r["id"] or file.suffix.lower() not in VIDEO_SUFFIXES:
            raise TableError(
                f"{ds.index_tsv}: id {r['id']!r}: file {r['file']!r} is not {r['id']!r} with one of {', '.join(VIDEO_SUFFIXES)}"
            )
    rows = [ClipRow(r["id"], r["label"], str(media_dir / r["file"])) for r in sorted(index, key=lambda r: r["id"])]
    return RowList(rows, [], _carried_rejects(ds.rejects_tsv))


# -- decoded clips ---------------------------------------------------------------------------------


@dataclass
class Decoded:
    """A clip ready for the encoders."""

    index: int  # position in the row list
    id: str
    text: str
    audio: torch.Tensor  # (L,) float32 at the target rate
    clip_frames: torch.Tensor | None = None  # (64, 3, 384, 384) uint8, video only
    sync_frames: torch.Tensor | None = None  # (200, 3, 224, 224) uint8, video only


@dataclass
class Rejected:
    """A row that cannot give a clip, and why (goes to the rejects manifest verbatim)."""

    index: int
    id: str
    reason: str


def _silent_reason(peak: float) -> str:
    return f"silent audio (peak {peak:.3g} <= {SILENCE_PEAK:g})"


class AudioClipDataset(Dataset):
    """Clip rows of audio files -> :class:`Decoded` (audio only) or :class:`Rejected`."""

    def __init__(self, rows: Sequence[ClipRow], *, sample_rate: int, num_samples: int):
        self.rows = list(rows)
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        # A file is streamed once for all of its clips (they are neighbours in the sorted list and land
        # in the same batch), keeping only the clips and the file's peak.
        self._clips_of: dict[str, list[int]] = {}
        for i, r in enumerate(self.rows):
            self._clips_of.setdefault(r.path, []).append(i)
        self._last: tuple[str, int, float, dict[int, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _cut(self, i: int) -> tuple[torch.Tensor, int, float]:
        """Row i's native-rate mono cut, the file's rate and its peak."""
        path = self.rows[i].path
        if self._last is None or self._last[0] != path:
            self._last = None  # a failed decode must not leave the previous file's clips behind
            wanted = self._clips_of[path]
            got = decode_audio_segments(path, [(self.rows[j].start_sample, self.rows[j].end_sample) for j in wanted])
            self._last = (path, got.sample_rate, got.peak, dict(zip(wanted, got.segments)))
        _, rate, peak, cuts = self._last
        return cuts[i], rate, peak

    def __getitem__(self, i: int) -> Decoded | Rejected:
        row = self.rows[i]
        try:
            cut, rate, peak = self._cut(i)
        except MediaError as e:
            return Rejected(i, row.id, e.reason)
        if peak <= SILENCE_PEAK:
            return Rejected(i, row.id, _silent_reason(peak))
        wave = cut * (PEAK_LEVEL / peak)
        wave = resample(wave, rate, self.sample_rate)
        if wave.shape[0] < self.num_samples:
            return Rejected(
                i, row.id, f"audio too short: {wave.shape[0]} samples at {self.sample_rate} Hz, need {self.num_samples}"
            )
        return Decoded(i, row.id, row.text, wave[: self.num_samples].contiguous())


class VideoClipDataset(Dataset):
    """Video rows -> :class:`Decoded` (audio, CLIP and Synchformer frames) or :class:`Rejected`."""

    def __init__(
        self,
        rows: Sequence[ClipRow],
        *,
        sample_rate: int,
        num_samples: int,
        duration_sec: float,
        normalize_audio: bool,
    ):
        self.rows = list(rows)
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.duration_sec = duration_sec
        self.normalize_audio = normalize_audio

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Decoded | Rejected:
        row = self.rows[i]
        try:
            clip = load_video_clip(
                row.path,
                duration_sec=self.duration_sec,
                specs=(CLIP_FRAMES, SYNC_FRAMES),
                audio_rate=self.sample_rate,
                audio_samples=self.num_samples,
            )
        except MediaError as e:
            return Rejected(i, row.id, e.reason)
        audio = clip.audio  # (L,)
        if self.normalize_audio:
            if clip.audio_peak <= SILENCE_PEAK:
                return Rejected(i, row.id, _silent_reason(clip.audio_peak))
            # Resampling is linear, so scaling after it equals upstream's scaling before it.
            audio = audio * (PEAK_LEVEL / clip.audio_peak)
        return Decoded(i, row.id, row.text, audio, clip.frames[CLIP_FRAMES.name], clip.frames[SYNC_FRAMES.name])


# -- batches ---------------------------------------------------------------------------------------


@dataclass
class ClipBatch:
    """What the DataLoader hands the encoders: the decoded clips stacked, and the rejects."""

    indices: list[int]
    ids: list[str]
    texts: list[str]
    audio: torch.Tensor  # (B, L)
    clip_frames: torch.Tensor | None  # (B, 64, 3, 384, 384) uint8
    sync_frames: torch.Tensor | None  # (B, 200, 3, 224, 224) uint8
    rejects: list[Rejected]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device, non_blocking: bool = False) -> "ClipBatch":
        """The same batch with its tensors on ``device`` (uint8 frames travel as uint8: 4x fewer bytes
        than float; the encoders convert and normalise them on the device)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return ClipBatch(self.indices, self.ids, self.texts, move(self.audio), move(self.clip_frames),
                         move(self.sync_frames), self.rejects)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.audio, self.clip_frames, self.sync_frames) if t is not None]


def collate_clips(items: Sequence[Decoded | Rejected]) -> ClipBatch:
    """Stack the decoded clips of a batch; rejects travel alongside (a batch may be all rejects)."""
    ok = [x for x in items if isinstance(x, Decoded)]
    rejects = [x for x in items if isinstance(x, Rejected)]

    def stack(name: str) -> torch.Tensor | None:
        parts = [getattr(x, name) for x in ok]
        if not parts or parts[0] is None:
            return None
        return torch.stack(parts)

    audio = stack("audio")
    return ClipBatch(
        indices=[x.index for x in ok],
        ids=[x.id for x in ok],
        texts=[x.text for x in ok],
        audio=audio if audio is not None else torch.empty(0, 0),
        clip_frames=stack("clip_frames"),
        sync_frames=stack("sync_frames"),
        rejects=rejects,
    )


def merge_batches(parts: Sequence[ClipBatch], *, pin_memory: bool = False) -> ClipBatch:
    """One batch from consecutive partial batches (e.g. single clips decoded by different workers),
    in order. With ``pin_memory`` the stacked tensors are written straight into page-locked memory,
    so the host-to-device copy can run asynchronously; that is one copy of the frames, where
    stacking and then pinning would be two."""
    ok = [p for p in parts if len(p)]

    def cat(name: str) -> torch.Tensor | None:
        ts = [getattr(p, name) for p in ok]
        if not ts or ts[0] is None:
            return None
        out = torch.empty((sum(t.shape[0] for t in ts), *ts[0].shape[1:]), dtype=ts[0].dtype, pin_memory=pin_memory)
        return torch.cat(ts, out=out)

    audio = cat("audio")
    return ClipBatch(
        indices=[i for p in ok for i in p.indices],
        ids=[i for p in ok for i in p.ids],
        texts=[t for p in ok for t in p.texts],
        audio=audio if audio is not None else torch.empty(0, 0),
        clip_frames=cat("clip_frames"),
        sync_frames=cat("sync_frames"),
        rejects=[r for p in parts for r in p.rejects],
    )
