"""Every hostile case gives exactly its documented outcome, and the good data beside it is processed."""

from __future__ import annotations

import pytest

from tests.hostile.corpus import CASES, Case

_SLOW = pytest.mark.slow


def test_corpus_is_broad():
    by_category: dict[str, int] = {}
    for c in CASES:
        by_category[c.category] = by_category.get(c.category, 0) + 1
    assert len(CASES) >= 30 and set(by_category) == {"media", "tsv", "params", "weights", "paths", "features", "tracking"}, by_category
    assert len({c.name for c in CASES}) == len(CASES)


def _marks(c: Case) -> list[pytest.MarkDecorator]:
    marks = [_SLOW] if c.slow else []
    if c.known_bug:
        marks.append(pytest.mark.xfail(strict=True, reason=c.known_bug))
    return marks


@pytest.mark.parametrize("case", [pytest.param(c, marks=_marks(c), id=c.name) for c in CASES])
def test_hostile_case(case: Case, tmp_path, good):
    observed = case.run(tmp_path, good)
    assert case.handled(observed), f"\nexpected: {case.describe_expected()}\nobserved: {observed}"
