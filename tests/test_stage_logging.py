"""A stage's log: third-party INFO lines (alembic's migrations, open_clip's tokenizer note) are dropped,
the stage's own lines and every warning stay."""

from __future__ import annotations

import logging
import os

from mmaudio.cli import setup_logging


def test_third_party_info_lines_are_quiet(capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    setup_logging()
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # mlflow reads it when a stage first imports it
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger().handle(logging.LogRecord("root", logging.INFO, "/site-packages/open_clip/factory.py", 1,
                                                 "Using default SimpleTokenizer.", None, None))
    logging.getLogger("mmaudio.evaluation.evaluate").info("sampled 8/40 rows")
    logging.getLogger("alembic").warning("a warning stays")
    err = capsys.readouterr().err
    assert "SQLiteImpl" not in err and "SimpleTokenizer" not in err
    assert "sampled 8/40 rows" in err and "a warning stays" in err
