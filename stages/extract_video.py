"""Stage extract_video@<dataset>: encode a video dataset into a feature set (TensorDict memmap + TSV).

    python stages/extract_video.py --dataset examples_train [extract.mode=44k train.network=tiny_44k]
    torchrun --standalone --nproc_per_node=8 stages/extract_video.py --dataset vgg_train

Reads the dataset's index_tsv (rows the index stage found usable) and carries its rejects_tsv forward.
Writes <extract.out_dir>/<dataset>/: td/ (mean, std, clip_features, sync_features, text_features),
samples.tsv (id, label), rejects.tsv (id, reason), info.json. Finished shards of a killed run are
kept in <extract.out_dir>/<dataset>.work/ and reused by the next run.
"""

from __future__ import annotations

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.distributed import cleanup_distributed, init_distributed
from mmaudio.extraction.stage import extract_dataset


def main(argv=None) -> None:
    setup_logging()
    args, params = parse_stage_args(__doc__, argv, dataset=True)
    ctx = init_distributed(params.extract.device)
    setup_logging(ctx.rank)
    try:
        extract_dataset("video", args.dataset, params, ctx)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_stage(main)
