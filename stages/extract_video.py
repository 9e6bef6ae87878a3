"""Stage extract_video@<dataset>: encode a video dataset into a feature set (TensorDict memmap + TSV).

    python stages/extract_video.py --dataset examples_train [extract.mode=44k train.network=tiny_44k]
    torchrun --standalone --nproc_per_node=8 stages/extract_video.py --dataset vgg_train

Reads the dataset's index_tsv (rows the index stage found usable) and carries its rejects_tsv forward.
Writes <extract.out_dir>/<dataset>/: td/ (mean, std, clip_features, sync_features, text_features),
samples.tsv (id, label), rejects.tsv (id, reason), info.json. Finished shards of a killed run are
kept in <extract.out_dir>/<dataset>.work/ and reused by the next run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from mmaudio.extraction import run_extract_stage


def main(argv=None) -> None:
    run_extract_stage("video", __doc__, argv)


if __name__ == "__main__":
    main()
