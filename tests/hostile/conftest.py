"""The good files every hostile case sets beside its hostile input, generated once per session."""

from __future__ import annotations

import pytest

from tests.helpers import one_thread  # noqa: F401  (autouse: decoding and resizing tiny frames)
from tests.hostile.generators import GoodMedia, make_good_media


@pytest.fixture(scope="session")
def good(tmp_path_factory: pytest.TempPathFactory) -> GoodMedia:
    return make_good_media(tmp_path_factory.mktemp("good_media"))
