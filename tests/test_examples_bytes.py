"""The example media are the same bytes in every process, so `dvc repro` on a fresh clone
reproduces the committed dvc.lock.

libx264's macroblock tree read uninitialised heap memory on the small sync pictures: the same
pixels became different H.264 streams from one process to the next (issue 18, item 6). glibc's
MALLOC_PERTURB_ fills fresh and freed heap memory with a chosen byte, so two processes given two
values see different "uninitialised" contents; bytes that depend on them differ. (On a libc without
MALLOC_PERTURB_ both processes run alike and the test shows less; CI runs on glibc.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.training.conftest import REPO

_WRITE = """
import hashlib, json, sys
from pathlib import Path
from mmaudio.examples import generate_examples
from mmaudio.sync_examples import SyncSetSpec
out = Path(sys.argv[1])
generate_examples(out, seed=0, sync_set=SyncSetSpec(train=24, val=2, test=6, frame_size=64))
print(json.dumps({str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(out.rglob("*")) if p.is_file()}))
"""


def _generate(out: Path, perturb: int) -> dict[str, str]:
    env = {**os.environ, "MALLOC_PERTURB_": str(perturb), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _WRITE, str(out)], env=env, capture_output=True, text=True,
                          check=True, timeout=600)
    return json.loads(proc.stdout.splitlines()[-1])


def test_two_processes_with_different_heap_contents_write_the_same_bytes(tmp_path):
    a = _generate(tmp_path / "a", perturb=77)
    b = _generate(tmp_path / "b", perturb=255)
    assert len(a) == 10 + 32 + 5 + 5  # videos (format variety + sync), audio files, 5 TSVs
    assert sum(name.endswith(".mp4") and name.startswith("video/sync_") for name in a) == 32
    differ = sorted(name for name in a if a[name] != b.get(name))
    assert a.keys() == b.keys() and not differ, f"example files whose bytes depend on heap contents: {differ}"
