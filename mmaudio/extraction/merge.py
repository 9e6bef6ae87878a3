"""The merge: a run's finished shards, concatenated in order into one feature set."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from mmaudio.extraction.settings import ExtractResult, ExtractSettings
from mmaudio.extraction.shards import Shard, ShardStore
from mmaudio.features import FeatureSetWriter


def merge_shards(
    store: ShardStore,
    shards: Sequence[Shard],
    fingerprints: Mapping[int, str],
    settings: ExtractSettings,
    *,
    out_dir: str | os.PathLike,
    carried_rejects: Sequence[tuple[str, str]] = (),
    listing_rejects: Sequence[tuple[str, str]] = (),
    info: Mapping[str, object] | None = None,
) -> ExtractResult:
    """Concatenate finished shards in order into the feature set at ``out_dir``. Rejects are written
    carried (earlier stages) first, then this stage's: rows it could not list, then rows it could not
    decode; ``new_rejects`` counts this stage's."""
    manifests = []
    for s in shards:
        m = store.manifest(s, fingerprints[s.index])
        if m is None:
            raise RuntimeError(f"{store.dir}: {s.name} is missing or stale after every rank finished")
        manifests.append(m)
    ids = [i for m in manifests for i in m.ids]
    texts = [t for m in manifests for t in m.texts]
    new_rejects = [*listing_rejects, *(r for m in manifests for r in m.rejects)]
    rejects = [*carried_rejects, *new_rejects]
    with FeatureSetWriter(
        out_dir, mode=settings.mode, kind=settings.kind, num_rows=len(ids), storage_dtype=settings.storage_dtype, info=info
    ) as writer:
        for s, m in zip(shards, manifests):
            if m.ids:
                writer.append(store.tensors(s))
        writer.commit(ids, texts, rejects)
    return ExtractResult(
        rows=sum(s.end - s.start for s in shards),
        clips=len(ids),
        rejects=rejects,
        new_rejects=len(new_rejects),
        shards=len(shards),
        shards_resumed=0,
        clips_encoded=0,
        clips_per_sec=0.0,
        seconds=0.0,
    )
