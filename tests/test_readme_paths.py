"""Every script, module and test file the README and bench/RESULTS.md tell a user to run or read
exists under that name (files move in reorganisations; the prose must move with them)."""

from __future__ import annotations

import re

import pytest

from tests.training.conftest import REPO

_FILE = re.compile(r"(?<![\w./-])((?:bench|stages|mmaudio|tests)/[\w./-]*\.py)\b")
_MODULE = re.compile(r"python -m ((?:mmaudio|tests)(?:\.\w+)+)")


@pytest.mark.parametrize("doc", ["README.md", "bench/RESULTS.md"])
def test_the_files_and_modules_a_document_names_exist(doc):
    text = (REPO / doc).read_text()
    files = sorted(set(_FILE.findall(text)))
    modules = sorted(set(_MODULE.findall(text)))
    assert len(files) > 10, files  # the pattern still finds what the text names
    missing = [f for f in files if not (REPO / f).is_file()]
    missing += [m for m in modules if not (REPO / (m.replace(".", "/") + ".py")).is_file()
                and not (REPO / m.replace(".", "/") / "__main__.py").is_file()]
    assert missing == [], f"{doc} names files or modules that do not exist: {missing}"
