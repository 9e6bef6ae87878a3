"""How many training steps does the tiny codec of a mode need? Trains the VAE + vocoder pair of one
mode from the `tiny` profile's random files at several step counts and prints the round-trip scores.

    python bench/codec_steps.py --weights ext_weights/tiny --examples data/examples --mode 44k \
        --config 1000:600 --config 2000:2400 [--threads 1] [--work /tmp/codec_steps]

``--weights``: a `tiny` folder as stage tiny_weights wrote it (the pair of ``--mode`` must still be the
seeded random one: by default only 16k is trained, so 44k's files are); it is copied per config and
never written. ``--config VAE_STEPS:VOCODER_STEPS``, one per run; every other setting is
params.yaml's `tiny_weights.codec`. Each row: the scores of :func:`mmaudio.codec_training.roundtrip_quality`
(onsets at +-50 ms on the test-split videos) and the process CPU seconds the run took. Never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmaudio.codec_training import train_tiny_codec  # noqa: E402
from mmaudio.config import validate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("vae_mel_l1", "roundtrip_mel_l1", "roundtrip_lsd_db", "roundtrip_onset_precision",
           "roundtrip_onset_recall", "roundtrip_onset_f1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=REPO / "ext_weights" / "tiny")
    ap.add_argument("--examples", type=Path, default=REPO / "data" / "examples")
    ap.add_argument("--mode", default="44k", choices=("16k", "44k"))
    ap.add_argument("--config", action="append", required=True, help="VAE_STEPS:VOCODER_STEPS (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/codec_steps"))
    args = ap.parse_args(argv)

    params = validate(yaml.safe_load((REPO / "params.yaml").read_text()))
    base = params.tiny_weights.codec
    rows = []
    for spec in args.config:
        vae_steps, vocoder_steps = (int(x) for x in spec.split(":"))
        cfg = dataclasses.replace(base, modes=[args.mode], vae_steps=vae_steps, vocoder_steps=vocoder_steps,
                                  num_threads=args.threads)
        run_dir = args.work / f"{args.mode}_{vae_steps}_{vocoder_steps}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(args.weights, run_dir / "tiny")
        cpu, wall = time.process_time(), time.perf_counter()
        scores = train_tiny_codec(run_dir / "tiny", args.examples, cfg, params.tiny_weights.seed, work_dir=run_dir / "work")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows.append((vae_steps, vocoder_steps, cpu, wall, [scores.get(f"{args.mode}/{k}", float("nan")) for k in COLUMNS]))
        print(f"done {spec}: {cpu:.0f} CPU-s, {wall:.0f} s wall", flush=True)

    print(f"\n| mode | VAE steps | vocoder steps | CPU s | wall s | {' | '.join(COLUMNS)} |")
    print("|" + "---|" * (5 + len(COLUMNS)))
    for vae_steps, vocoder_steps, cpu, wall, values in rows:
        print(f"| {args.mode} | {vae_steps} | {vocoder_steps} | {cpu:.0f} | {wall:.0f} | "
              + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
