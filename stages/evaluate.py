"""Stage evaluate: sample the test feature set with the trained network and score it.

    torchrun --standalone --nproc_per_node=1 stages/evaluate.py [evaluate.solver=adaptive ...]

Reads <train.out_dir>/weights.pth; logs the scores and this evaluation's params into an MLflow run
nested under the training run (the id in <train.out_dir>/mlflow_run_id.txt), the scores also into
the training run. Writes <evaluate.out_dir>/: samples/, baseline_samples/, gt/
(FLAC at the model rate) and scores.json (DVC metrics; the untrained network's scores as baseline_*).
"""

from __future__ import annotations

from pathlib import Path

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.distributed import cleanup_distributed, init_distributed
from mmaudio.evaluation.evaluate import evaluate
from mmaudio.paths import check_stage_paths


def main(argv=None) -> None:
    setup_logging()
    _, params = parse_stage_args(__doc__, argv)
    check_stage_paths(params, {"evaluate.out_dir": params.evaluate.out_dir},
                      reads={"train.out_dir": params.train.out_dir,
                             f"extract.out_dir/{params.evaluate.dataset}": Path(params.extract.out_dir) / params.evaluate.dataset})
    ctx = init_distributed(params.evaluate.device)
    setup_logging(ctx.rank)
    try:
        evaluate(params, ctx)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_stage(main)
