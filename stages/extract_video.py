"""Stage extract_video@<dataset>: encode a video dataset into a feature set (TensorDict memmap + TSV).

    python stages/extract_video.py --dataset examples_train [extract.mode=44k train.network=tiny_44k]
    torchrun --standalone --nproc_per_node=8 stages/extract_video.py --dataset vgg_train

Reads the dataset's index_tsv (rows the index stage found usable) and carries its rejects_tsv forward.
Writes <extract.out_dir>/<dataset>/: td/ (mean, std, clip_features, sync_features, text_features),
samples.tsv (id, label), rejects.tsv (id, reason), info.json. Finished shards of a killed run are
kept in <extract.out_dir>/<dataset>.work/ and reused by the next run.
"""

from __future__ import annotations

import logging

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.distributed import cleanup_distributed, init_distributed
from mmaudio.extraction.jobs import check_extract_paths, encoder_factory, encoder_weight_paths, log_rejects, result_metrics, run_job, video_job
from mmaudio.tracking import StageRun

log = logging.getLogger("extract_video")


def main(argv=None) -> None:
    setup_logging()
    args, params = parse_stage_args(__doc__, argv, dataset=True)
    ctx = init_distributed(params.extract.device)
    setup_logging(ctx.rank)
    try:
        weights = encoder_weight_paths(params, "video")
        job = video_job(params, args.dataset, ctx.device, weights)
        check_extract_paths(params, job, weights)
        log.info("%s: %d rows, %d carried rejects, %d process(es) on %s",
                 args.dataset, len(job.rows), len(job.carried_rejects), ctx.world_size, ctx.device)
        with StageRun(f"extract_video@{args.dataset}", params, inputs=[*job.inputs, *weights], rank=ctx.rank) as run:
            result = run_job(job, encoder_factory(params, "video", ctx.device), ctx)
            if result is not None:  # rank 0 merged the shards
                log_rejects(log, result)
                log.info("%s: %d clips, %d rejects (%d here), %.2f clips/s -> %s",
                         args.dataset, result.clips, len(result.rejects), result.new_rejects, result.clips_per_sec, job.out_dir)
                run.log_metrics(result_metrics(result))
                run.log_outputs([job.out_dir])
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_stage(main)
