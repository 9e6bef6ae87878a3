"""The evaluate stage under real torchrun: two CPU processes (gloo) sample disjoint shards of the rows
and rank 0 writes them; the FLAC files are byte-identical to those of a one-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.evaluation.workspace import REPO, make_workspace

IDS = ["sweep_002", "flash_003", "flash_002"]  # 3 rows: rank 0 samples rows 0 and 2, rank 1 row 1
DRIVER = """import runpy, sys
sys.path.insert(0, {repo!r})
from tests.training.presets import register
register()
runpy.run_path({repo!r} + "/stages/evaluate.py", run_name="__main__")
"""


def _run_stage(root, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    # the stage script itself, with the micro network preset registered first (tests only)
    driver = root / "evaluate_micro.py"
    driver.write_text(DRIVER.format(repo=str(REPO)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(driver)]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


@pytest.mark.slow
def test_two_process_sampling_matches_one_process(tmp_path, examples_dir):
    # one row per network call: a row's noise never depends on its batch, but matmuls over a batch
    # of 2 and of 1 may differ in the last float bit, which can flip a 16-bit sample
    make_workspace(tmp_path, examples_dir, IDS, extractors=False, evaluate={"batch_size": 1})
    _run_stage(tmp_path, 1)
    (tmp_path / "eval").rename(tmp_path / "eval_1proc")
    _run_stage(tmp_path, 2)
    for folder in ("samples", "baseline_samples", "gt"):
        one = sorted(p.name for p in (tmp_path / "eval_1proc" / folder).iterdir())
        assert one == sorted(f"{i}.flac" for i in IDS), folder
        for name in one:
            a = (tmp_path / "eval_1proc" / folder / name).read_bytes()
            b = (tmp_path / "eval" / folder / name).read_bytes()
            assert a == b, f"{folder}/{name} differs between 1 and 2 processes"
    assert (tmp_path / "eval" / "scores.json").read_text() == (tmp_path / "eval_1proc" / "scores.json").read_text()
