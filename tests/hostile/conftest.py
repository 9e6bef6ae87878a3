"""The good files every hostile case sets beside its hostile input, generated once per session."""

from __future__ import annotations

import pytest
import torch

from tests.hostile.generators import GoodMedia, make_good_media


@pytest.fixture(scope="session")
def good(tmp_path_factory: pytest.TempPathFactory) -> GoodMedia:
    return make_good_media(tmp_path_factory.mktemp("good_media"))



@pytest.fixture(autouse=True)
def _one_thread():
    """Decoding and resizing tiny frames: one thread is fastest on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
