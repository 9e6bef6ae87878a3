"""The baseline cache deletes and replaces its entry folder, so the entry's name must be a key the
module made: anything that could reach the cache root, its parent or another path is refused before
any folder is touched."""

from __future__ import annotations

import pytest

from mmaudio.evaluation.baseline_cache import CACHE_DIR, BaselineCache


@pytest.mark.parametrize("key", ["", ".", "..", "../..", "/", "a/b", "0123456789ABCDEF", "0123456789abcdef0"])
def test_a_key_that_is_not_16_hex_digits_is_refused_before_anything_is_deleted(tmp_path, key):
    keep = tmp_path / CACHE_DIR / "other"
    keep.mkdir(parents=True)
    (keep / "f").write_text("x")
    with pytest.raises(ValueError, match="16 hex digits"):
        BaselineCache(tmp_path, key)
    assert (keep / "f").read_text() == "x"


def test_a_hex_key_names_its_folder_under_the_cache_root(tmp_path):
    cache = BaselineCache(tmp_path, "0123456789abcdef")
    assert cache.dir == tmp_path / CACHE_DIR / "0123456789abcdef"
