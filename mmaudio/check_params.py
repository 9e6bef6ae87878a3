"""Validate params.yaml (with optional overrides) and exit: 0 when valid, 2 with a three-line error.

    python -m mmaudio.check_params [key=value ...]

The torchrun stages in dvc.yaml run this before `torchrun`, so a bad value is reported by one process
in three lines instead of by torchrun's child-failure report. Every stage script also validates the
whole file at its start (mmaudio.config.load_params), so whichever stage `dvc repro` runs first fails
before any work.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mmaudio.cli import run_stage
from mmaudio.config import load_params


def main(argv: Sequence[str] | None = None) -> None:
    load_params(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run_stage(main)
