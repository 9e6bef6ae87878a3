"""torchrun entry point for tests: the train stage's own main(), with the test-only micro preset."""

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import os  # noqa: E402

from tests.training.presets import register  # noqa: E402

register()
if os.environ.get("MMAUDIO_TEST_NO_TRACKING"):  # GPU machines without mlflow: numerics only
    import mmaudio.training.train as train_module  # noqa: E402
    from tests.training.presets import NullRun  # noqa: E402

    train_module.StageRun = NullRun
stage = REPO / "stages" / "train.py"
sys.argv = [str(stage), *sys.argv[1:]]
runpy.run_path(str(stage), run_name="__main__")
