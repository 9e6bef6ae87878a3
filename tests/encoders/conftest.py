"""Fixtures shared by the encoder tests: the tiny weight profile written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmaudio.encoders.profiles import get_profile
from mmaudio.encoders.tiny import write_tiny_weights


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository root whose ext_weights/tiny holds the tiny weights of seed 0."""
    root = tmp_path_factory.mktemp("tiny_root")
    write_tiny_weights(root / get_profile("tiny").root, seed=0)
    return root
