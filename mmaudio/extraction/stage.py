"""The work of the extract_audio and extract_video stages, after their scripts parsed the arguments
and set up the processes: resolve the job from params, extract on every rank, and on rank 0 merge
the shards, report and log to MLflow."""

from __future__ import annotations

import logging

from mmaudio.config import Params
from mmaudio.distributed import DistContext
from mmaudio.extraction.jobs import (JOB_BUILDERS, check_extract_paths, encoder_factory, encoder_weight_paths,
                                     log_rejects, result_metrics, run_job)
from mmaudio.tracking import StageRun


def extract_dataset(kind: str, dataset: str, params: Params, ctx: DistContext) -> None:
    """``kind``: "audio" or "video"; ``dataset``: a key of ``<kind>_datasets`` in params."""
    stage = f"extract_{kind}"
    log = logging.getLogger(stage)
    weights = encoder_weight_paths(params, kind)
    job = JOB_BUILDERS[kind](params, dataset, ctx.device, weights)
    check_extract_paths(params, job, weights)
    log.info("%s: %d rows, %d carried rejects, %d process(es) on %s",
             dataset, len(job.rows), len(job.carried_rejects), ctx.world_size, ctx.device)
    with StageRun(f"{stage}@{dataset}", params, inputs=[*job.inputs, *weights], rank=ctx.rank) as run:
        result = run_job(job, encoder_factory(params, kind, ctx.device), ctx)
        if result is not None:  # rank 0 merged the shards
            log_rejects(log, result)
            log.info("%s: %d clips, %d rejects (%d here), %.2f clips/s -> %s",
                     dataset, result.clips, len(result.rejects), result.new_rejects, result.clips_per_sec, job.out_dir)
            run.log_metrics(result_metrics(result))
            run.log_outputs([job.out_dir])
