"""Stage tiny_weights: write the `tiny` weight profile's encoder files.

    python stages/tiny_weights.py [tiny_weights.seed=1]

Writes tiny_weights.out_dir (ext_weights/tiny): every encoder at its tiny preset with weights drawn
from tiny_weights.seed, under the official file names and in the official formats (v1-16.pth,
v1-44.pth, best_netG.pt, bigvgan_v2_44khz_128band_512x/, synchformer_state_dict.pth,
DFN5B-CLIP-ViT-H-14-384/, empty_string.pth). The same seed gives byte-identical files.

With tiny_weights.examples_dir set (params.yaml: the example set), the VAE and vocoder of each mode in
tiny_weights.codec.modes are then trained on its audio (mmaudio.codec_training) and written back in
the same formats; their round-trip scores are logged. A killed run resumes from <out_dir>.work/.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmaudio.cli import parse_stage_args, run_stage, setup_logging
from mmaudio.codec_training import train_tiny_codec
from mmaudio.config import find_repo_root
from mmaudio.encoders.profiles import get_profile
from mmaudio.encoders.tiny import write_tiny_weights
from mmaudio.paths import check_stage_paths
from mmaudio.tracking import StageRun

log = logging.getLogger("tiny_weights")


def main(argv=None) -> None:
    setup_logging()
    _, params = parse_stage_args(__doc__, argv)
    cfg = params.tiny_weights
    expected = find_repo_root() / get_profile("tiny").root
    check_stage_paths(params, {"tiny_weights.out_dir": cfg.out_dir}, owned=[expected])
    if Path(cfg.out_dir).resolve() != expected.resolve():
        log.warning("tiny_weights.out_dir=%s is not %s, where the `tiny` profile reads its weights", cfg.out_dir, expected)
    with StageRun("tiny_weights", params) as run:
        files = write_tiny_weights(cfg.out_dir, seed=cfg.seed)
        total = sum(f.stat().st_size for f in files)
        log.info("wrote %d files (%.1f MB) with seed %d to %s", len(files), total / 1e6, cfg.seed, cfg.out_dir)
        run.log_metrics({"files": len(files), "megabytes": total / 1e6})
        if cfg.examples_dir is not None and cfg.codec.modes:
            scores = train_tiny_codec(cfg.out_dir, cfg.examples_dir, cfg.codec, cfg.seed,
                                      work_dir=Path(f"{cfg.out_dir}.work"), on_metrics=run.log_metrics)
            log.info("codec round trips: %s", scores)
        run.log_outputs([cfg.out_dir])


if __name__ == "__main__":
    run_stage(main)
