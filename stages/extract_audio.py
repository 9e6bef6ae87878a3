"""Stage extract_audio@<dataset>: encode an audio dataset into a feature set (TensorDict memmap + TSV).

    python stages/extract_audio.py --dataset examples_audio [extract.mode=44k train.network=tiny_44k]
    torchrun --standalone --nproc_per_node=8 stages/extract_audio.py --dataset wavcaps

Reads the partition stage's clips_tsv (and carries its rejects_tsv forward), the captions_tsv keyed
by file stem and the audio files. Writes <extract.out_dir>/<dataset>/: td/ (mean, std, text_features),
samples.tsv (id, caption), rejects.tsv (id, reason), info.json. Finished shards of a killed run are
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
        extract_dataset("audio", args.dataset, params, ctx)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_stage(main)
