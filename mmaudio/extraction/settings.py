"""What one extraction is configured with and what it produced (clip length and rate: mmaudio.modes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

@dataclass
class ExtractSettings:
    kind: str  # 'audio' | 'video'
    mode: str  # '16k' | '44k'
    storage_dtype: str
    batch_size: int
    shard_size: int
    num_workers: int
    fingerprint_settings: dict[str, Any] = field(default_factory=dict)  # profile, weights, normalisation, ...


@dataclass
class ExtractResult:
    rows: int  # rows given (after earlier stages' rejects)
    clips: int  # rows in the feature set
    rejects: list[tuple[str, str]]  # carried + new, as written to rejects.tsv
    new_rejects: int  # rows rejected by this stage (decode errors, silence, too short)
    shards: int
    shards_resumed: int  # finished shards found from an earlier run (all ranks)
    clips_encoded: int  # rows decoded and encoded in this run (all ranks), resumed ones excluded
    clips_per_sec: float  # decode + encode throughput of this run, all ranks together, model loading excluded
    seconds: float  # rank 0's wall time of the decode + encode phase
