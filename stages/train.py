"""Stage train: train the flow network on extracted feature sets (DDP, one process per GPU).

    torchrun --standalone --nproc_per_node=1 stages/train.py [train.learning_rate=2e-4 ...]
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 stages/train.py

Reads the feature sets named in train.datasets and train.val_dataset (<extract.out_dir>/<name>).
Writes <train.out_dir>/: checkpoints/ (kept between runs: a rerun with the same params, data and
code resumes from the latest checkpoint), weights.pth (EMA weights, official mmaudio_*.pth format),
metrics.json, plots/ (loss series, spectrograms), mlflow_run_id.txt.
"""

from __future__ import annotations

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.distributed import cleanup_distributed, init_distributed
from mmaudio.paths import check_stage_paths
from mmaudio.train_stage import train
from mmaudio.training.train import feature_dir


def main(argv=None) -> None:
    setup_logging()
    _, params = parse_stage_args(__doc__, argv)
    sets = [*params.train.datasets, *([params.train.val_dataset] if params.train.val_dataset else [])]
    check_stage_paths(params, {"train.out_dir": params.train.out_dir},
                      reads={f"extract.out_dir/{name}": feature_dir(params, name) for name in sets})
    ctx = init_distributed(params.train.device)
    setup_logging(ctx.rank)
    try:
        train(params, ctx)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_stage(main)
