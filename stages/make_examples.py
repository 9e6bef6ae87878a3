"""Stage make_examples: write the deterministic example videos, audio files and TSVs.

    python stages/make_examples.py [examples.seed=1]
"""

from __future__ import annotations

import logging

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.examples import example_products, generate_examples
from mmaudio.paths import check_stage_paths
from mmaudio.sync_examples import SyncSetSpec
from mmaudio.tracking import StageRun

log = logging.getLogger("make_examples")


def main(argv=None) -> None:
    setup_logging()
    _, params = parse_stage_args(__doc__, argv)
    check_stage_paths(params, {"examples.out_dir": params.examples.out_dir}, products=example_products(params))
    with StageRun("make_examples", params) as run:
        cfg = params.examples
        sync_set = SyncSetSpec(cfg.sync_clips.train, cfg.sync_clips.val, cfg.sync_clips.test, cfg.sync_frame_size)
        counts = generate_examples(cfg.out_dir, seed=cfg.seed, sync_set=sync_set)
        log.info("wrote %d videos, %d audio files, %d events to %s", counts["videos"], counts["audios"], counts["events"], params.examples.out_dir)
        run.log_metrics({f"n_{k}": v for k, v in counts.items()})
        run.log_outputs([params.examples.out_dir])


if __name__ == "__main__":
    run_stage(main)
