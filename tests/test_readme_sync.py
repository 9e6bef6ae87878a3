"""The README names the sync experiment that the slow tier runs (tests/slow/test_sync_result.py), word
for word, so the command a user copies is the one whose result is held."""

from __future__ import annotations

from tests.conftest import REPO
from tests.slow.test_sync_result import SYNC_EXPERIMENT


def test_readme_gives_the_sync_experiment_the_slow_tier_runs():
    command = " ".join(SYNC_EXPERIMENT)
    readme = (REPO / "README.md").read_text()
    assert command in readme, f"README.md must give the sync experiment as: {command}"
    results = (REPO / "bench" / "RESULTS.md").read_text()
    assert command in results, f"bench/RESULTS.md must give the command of its sync table: {command}"
