"""Stage extract_audio@<dataset>: encode an audio dataset into a feature set (TensorDict memmap + TSV).

    python stages/extract_audio.py --dataset examples_audio [extract.mode=44k train.network=tiny_44k]
    torchrun --standalone --nproc_per_node=8 stages/extract_audio.py --dataset wavcaps

Reads the partition stage's clips_tsv (and carries its rejects_tsv forward), the captions_tsv keyed
by file stem and the audio files. Writes <extract.out_dir>/<dataset>/: td/ (mean, std, text_features),
samples.tsv (id, caption), rejects.tsv (id, reason), info.json. Finished shards of a killed run are
kept in <extract.out_dir>/<dataset>.work/ and reused by the next run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from mmaudio.extraction import run_extract_stage


def main(argv=None) -> None:
    run_extract_stage("audio", __doc__, argv)


if __name__ == "__main__":
    main()
