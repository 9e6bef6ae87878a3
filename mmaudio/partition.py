"""Clip partitioning of audio-only files (upstream training/partition_clips.py, as a library).

A file shorter than ``min_duration_sec`` is skipped into the rejects manifest, and so is a file whose
name is not valid UTF-8 (its id could not be written to a TSV; the manifest names it with the
undecodable bytes as ``\\xNN``). Suffixes match in any case (``NAME.WAV``), as extraction resolves them.
Files are counted by streaming their audio, so an hour-long file costs constant memory. A longer one gives
``min(max_segments, length // segment)`` segments of ``segment_sec``, evenly spaced from the start
to the end, as sample indices at the file's native rate; segment ``i`` has id ``{stem}_{i}``.

Durations are converted to samples with exact decimal arithmetic, so a duration given in params
never loses a sample to binary rounding (for 8.1 s at the usual rates this equals upstream's
``int(sample_rate * 8.1)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmaudio.config import PartitionConfig
from mmaudio.media import MediaError, count_audio_samples, display_name, exact_samples
from mmaudio.tables import TableError, check_id, lookalike_key

AUDIO_SUFFIXES = (".flac", ".wav")
CLIP_COLUMNS = ("id", "name", "start_sample", "end_sample")


@dataclass(frozen=True)
class Segment:
    start_sample: int
    end_sample: int


def partition_samples(num_samples: int, sample_rate: int, cfg: PartitionConfig) -> list[Segment]:
    """Evenly spaced segments of one file; empty if it is shorter than ``cfg.min_duration_sec``."""
    if num_samples < exact_samples(cfg.min_duration_sec, sample_rate):
        return []
    seg = exact_samples(cfg.segment_sec, sample_rate)
    n = min(cfg.max_segments, num_samples // seg)
    step = (num_samples - seg) // (n - 1) if n > 1 else 0
    return [Segment(i * step, i * step + seg) for i in range(n)]


@dataclass
class PartitionResult:
    clips: list[dict[str, object]]
    rejects: list[tuple[str, str]]
    files_seen: int
    files_used: int


def partition_folder(audio_dir: str | os.PathLike, cfg: PartitionConfig) -> PartitionResult:
    """Partition every file of ``audio_dir`` (sorted by name). Unusable files become rejects."""
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder does not exist: {folder}")
    clips: list[dict[str, object]] = []
    rejects: list[tuple[str, str]] = []
    seen_stems: dict[str, str] = {}
    files = sorted(p for p in folder.iterdir() if not p.is_dir())
    used = 0
    for path in files:
        stem = path.stem
        if display_name(path.name) != path.name:
            rejects.append((display_name(path.name), "file name is not valid UTF-8"))
            continue
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            rejects.append((path.name, f"not a {'/'.join(AUDIO_SUFFIXES)} file"))
            continue
        try:
            check_id(stem, source=str(path))
        except TableError as e:
            rejects.append((path.name, str(e)))
            continue
        key = lookalike_key(stem)
        if key in seen_stems:
            other = seen_stems[key]
            same = "the same stem" if Path(other).stem == stem else "a stem that looks the same (Unicode NFKC)"
            rejects.append((path.name, f"duplicate id {stem!r}: {other} has {same}"))
            continue
        seen_stems[key] = path.name
        try:
            num_samples, sample_rate = count_audio_samples(path)
        except MediaError as e:
            rejects.append((stem, e.reason))
            continue
        segments = partition_samples(num_samples, sample_rate, cfg)
        if not segments:
            rejects.append((stem, f"shorter than {cfg.min_duration_sec:g} s ({num_samples / sample_rate:.3f} s)"))
            continue
        used += 1
        for i, s in enumerate(segments):
            clips.append({"id": f"{stem}_{i}", "name": stem, "start_sample": s.start_sample, "end_sample": s.end_sample})
    return PartitionResult(clips, rejects, files_seen=len(files), files_used=used)
