"""Stage index_videos@<dataset>: resolve a video list to files and check their streams.

    python stages/index_videos.py --dataset examples_train

Writes the dataset's index_tsv (usable rows with stream facts) and rejects_tsv (`id, reason`).
"""

from __future__ import annotations

import logging

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.config import ConfigError
from mmaudio.media_index import INDEX_COLUMNS, index_video_list
from mmaudio.paths import check_stage_paths
from mmaudio.tables import log_reject_summary, write_rejects, write_tsv
from mmaudio.tracking import StageRun

log = logging.getLogger("index_videos")


def main(argv=None) -> None:
    setup_logging()
    args, params = parse_stage_args(__doc__, argv, dataset=True)
    if args.dataset not in params.video_datasets:
        raise ConfigError(f"no video dataset {args.dataset!r} in params.yaml (have {sorted(params.video_datasets)})")
    ds = params.video_datasets[args.dataset]
    key = f"video_datasets.{args.dataset}"
    check_stage_paths(params, {f"{key}.index_tsv": ds.index_tsv, f"{key}.rejects_tsv": ds.rejects_tsv},
                      reads={f"{key}.list_tsv": ds.list_tsv, f"{key}.media_dir": ds.media_dir})
    with StageRun(f"index_videos@{args.dataset}", params, inputs=[ds.list_tsv, ds.media_dir]) as run:
        result = index_video_list(ds.list_tsv, ds.media_dir, params.index.min_duration_sec)
        write_tsv(ds.index_tsv, INDEX_COLUMNS, result.rows)
        write_rejects(ds.rejects_tsv, result.rejects)
        log_reject_summary(log, result.rejects)
        log.info("%s: %d usable, %d rejected -> %s", args.dataset, len(result.rows), len(result.rejects), ds.index_tsv)
        run.log_metrics({"videos": len(result.rows), "rejects": len(result.rejects)})
        run.log_outputs([ds.index_tsv, ds.rejects_tsv])


if __name__ == "__main__":
    run_stage(main)
