"""What every stage entry point shares: argument parsing into (stage options, Hydra overrides)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mmaudio.config import Params, load_params


def setup_logging(rank: int = 0) -> None:
    """INFO on rank 0, WARNING elsewhere, one line per record with the time."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s" if rank else "%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def parse_stage_args(
    description: str, argv: Sequence[str] | None = None, *, dataset: bool = False
) -> tuple[argparse.Namespace, Params]:
    """``[--dataset NAME] [key=value ...]``: the overrides go to Hydra on top of params.yaml."""
    parser = argparse.ArgumentParser(description=description)
    if dataset:
        parser.add_argument("--dataset", required=True, help="dataset name under audio_datasets/video_datasets")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides of params.yaml, e.g. partition.max_segments=3")
    args = parser.parse_args(argv)
    return args, load_params(args.overrides)
