"""Stage partition@<dataset>: cut the audio files of one audio dataset into 8.1 s clips.

    python stages/partition.py --dataset examples_audio [partition.max_segments=3]

Writes the dataset's clips_tsv (`id, name, start_sample, end_sample`) and rejects_tsv (`id, reason`).
"""

from __future__ import annotations

import logging

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.config import ConfigError
from mmaudio.paths import check_stage_paths
from mmaudio.partition import CLIP_COLUMNS, partition_folder
from mmaudio.tables import log_reject_summary, write_rejects, write_tsv
from mmaudio.tracking import StageRun

log = logging.getLogger("partition")


def main(argv=None) -> None:
    setup_logging()
    args, params = parse_stage_args(__doc__, argv, dataset=True)
    if args.dataset not in params.audio_datasets:
        raise ConfigError(f"no audio dataset {args.dataset!r} in params.yaml (have {sorted(params.audio_datasets)})")
    ds = params.audio_datasets[args.dataset]
    key = f"audio_datasets.{args.dataset}"
    check_stage_paths(params, {f"{key}.clips_tsv": ds.clips_tsv, f"{key}.rejects_tsv": ds.rejects_tsv},
                      reads={f"{key}.media_dir": ds.media_dir})
    with StageRun(f"partition@{args.dataset}", params, inputs=[ds.media_dir]) as run:
        result = partition_folder(ds.media_dir, params.partition)
        write_tsv(ds.clips_tsv, CLIP_COLUMNS, result.clips)
        write_rejects(ds.rejects_tsv, result.rejects)
        log_reject_summary(log, result.rejects)
        log.info(
            "%s: %d files, %d used, %d clips, %d rejected -> %s",
            args.dataset, result.files_seen, result.files_used, len(result.clips), len(result.rejects), ds.clips_tsv,
        )
        run.log_metrics(
            {"files": result.files_seen, "files_used": result.files_used, "clips": len(result.clips), "rejects": len(result.rejects)}
        )
        run.log_outputs([ds.clips_tsv, ds.rejects_tsv])


if __name__ == "__main__":
    run_stage(main)
