"""What every stage entry point shares: argument parsing into (stage options, Hydra overrides)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mmaudio.config import ConfigError, Params, error_report, load_params

QUIET_LOGGERS = ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "torchcrepe", "httpx")
CONFIG_ERROR_EXIT = 2  # like argparse's usage errors: the command line or params.yaml is wrong


def run_stage(main: Callable[[], None]) -> None:
    """A stage script's ``__main__``: a :class:`ConfigError` prints :func:`error_report` (three lines:
    the key, its value, what is allowed) and exits 2 instead of a traceback. Under torchrun only rank 0
    prints it (every rank fails the same way)."""
    try:
        main()
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":
            print(error_report(e), file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT) from None


def setup_logging(rank: int = 0) -> None:
    """INFO on rank 0, WARNING elsewhere, one line per record with the time."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s" if rank else "%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # third-party INFO lines say nothing a user acts on (alembic's migrations of a new mlflow.db, ...)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # mlflow sets its own logger's level when it is first imported (later, lazily): tell it instead
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_root_info)


def _quiet_root_info(record: logging.LogRecord) -> bool:
    """open_clip logs through the root logger ("Using default SimpleTokenizer."): drop its INFO lines."""
    return not (record.name == "root" and record.levelno < logging.WARNING and "open_clip" in record.pathname)


def parse_stage_args(
    description: str, argv: Sequence[str] | None = None, *, dataset: bool = False
) -> tuple[argparse.Namespace, Params]:
    """``[--dataset NAME] [key=value ...]``: the overrides go to Hydra on top of params.yaml."""
    # the description is the stage's docstring: its command examples keep their lines
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if dataset:
        parser.add_argument("--dataset", required=True, help="dataset name under audio_datasets/video_datasets")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml (Hydra syntax), as in the examples above")
    args = parser.parse_args(argv)
    return args, load_params(args.overrides)
