"""Every params.yaml key a stage reads is declared under its dvc.yaml `params:`, and nothing else.

Each stage's own `main` runs in this process on the example media, in pipeline order, with every
read of the loaded config recorded (tests/param_reads.py). The keys read must be covered by the
stage's declared params (so `dvc exp run -S key=...` reruns every stage that uses the key), and each
declared key must be read (so changing a key reruns no stage that ignores it). `tracking.*` is
declared by no stage: where a run is logged does not change what it computes.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.param_reads import recording, undeclared, unread

REPO = Path(__file__).resolve().parents[1]

# (dvc.yaml stage, foreach key or None, overrides that keep the run small; they change no code path)
SMALL_TRAIN = ["train.num_iterations=4", "train.val_interval=2", "train.eval_interval=4", "train.checkpoint_every=2",
               "train.ema.snapshot_every=2", "train.log_interval=1", "train.num_audio_samples=1",
               "train.global_batch_size=2", "train.warmup_steps=1", "train.milestones=[2,3]",
               "train.sampling.num_steps=2", "train.sampling.batch_size=2"]
SMALL_EVAL = ["evaluate.num_steps=2", "evaluate.crepe=false", "evaluate.batch_size=2", "evaluate.num_logged_samples=1"]
RUNS = [
    ("make_examples", None, ["examples.sync_clips.train=2", "examples.sync_clips.val=1", "examples.sync_clips.test=2"]),
    ("tiny_weights", None, ["tiny_weights.codec.vae_steps=2", "tiny_weights.codec.vocoder_steps=2"]),
    ("partition", "examples_audio", []),
    *[("index_videos", k, []) for k in ("examples_train", "examples_val", "examples_test")],
    ("extract_audio", "examples_audio", ["extract.num_workers=0"]),
    *[("extract_video", k, ["extract.num_workers=0"]) for k in ("examples_train", "examples_val", "examples_test")],
    ("train", None, SMALL_TRAIN + SMALL_EVAL),
    ("evaluate", None, SMALL_TRAIN + SMALL_EVAL),
]


def declared_params(stage: str, key: str | None, raw_params: dict) -> list[str]:
    """The stage's `params:` from dvc.yaml with `${key}` and `${section.name}` templates resolved."""
    st = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    st = st.get("do", st)

    def value(path: str) -> str:
        if path == "key":
            return key
        node = raw_params
        for part in path.split("."):
            node = node[part]
        return str(node)

    return [re.sub(r"\$\{([^}]+)\}", lambda m: value(m.group(1)), p) for p in st.get("params", [])]


def _main(script: str):
    spec = importlib.util.spec_from_file_location(f"stage_{script}", REPO / "stages" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class StageReads:
    """Runs the stages of RUNS in order in one project folder, as far as asked; the keys each read."""

    def __init__(self, project: Path):
        self.project = project
        self.done: dict[tuple[str, str | None], set[str]] = {}
        shutil.copy(REPO / "params.yaml", project / "params.yaml")

    def of(self, stage: str, key: str | None) -> set[str]:
        mp = pytest.MonkeyPatch()
        mp.chdir(self.project)
        for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            mp.delenv(var, raising=False)
        threads = torch.get_num_threads()
        try:
            for name, k, overrides in RUNS:
                if (name, k) in self.done:
                    continue
                with recording() as reads:
                    _main(name)([*(["--dataset", k] if k else []), *overrides])
                self.done[(name, k)] = reads
                if (name, k) == (stage, key):
                    break
        finally:
            torch.set_num_threads(threads)
            mp.undo()
        return self.done[(stage, key)]


@pytest.fixture(scope="module")
def stage_reads(tmp_path_factory) -> StageReads:
    return StageReads(tmp_path_factory.mktemp("stage_params"))


FAST = {"make_examples", "tiny_weights", "partition", "index_videos"}  # seconds; the others run encoders and the network


@pytest.mark.parametrize(
    "stage,key",
    [pytest.param(s, k, marks=() if s in FAST else pytest.mark.slow, id=f"{s}@{k}" if k else s) for s, k, _ in RUNS],
)
def test_stage_declares_exactly_the_params_it_reads(stage_reads, stage, key):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    declared = declared_params(stage, key, raw)
    reads = stage_reads.of(stage, key)
    assert reads, f"{stage}: no param read was recorded (is the recorder working?)"
    assert not undeclared(reads, declared), f"dvc.yaml stage {stage!r} reads undeclared params: {undeclared(reads, declared)}"
    assert not unread(reads, declared), f"dvc.yaml stage {stage!r} declares params it never reads: {unread(reads, declared)}"
    assert not any(d == "tracking" or d.startswith("tracking.") for d in declared)


def test_no_stage_declares_tracking():
    """Renaming the MLflow experiment or moving the store must not rerun (or invalidate) any stage."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        params = st.get("do", st).get("params", [])
        assert not [p for p in params if str(p).split(".")[0] == "tracking"], name


def test_the_recorder_sees_nested_and_dataset_reads(tmp_path, monkeypatch):
    from mmaudio.config import load_params

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with recording() as reads:
        params = load_params()
        assert params.train.ema.snapshot_every == 100 and params.video_datasets["examples_val"].split == "val"
        _ = params.train  # a section alone is not a key
    assert reads == {"train.ema.snapshot_every", "video_datasets.examples_val.split"}
    assert undeclared(reads, ["train", "video_datasets.examples_val.media_dir"]) == ["video_datasets.examples_val.split"]
    assert unread(reads, ["train.ema", "evaluate.seed"]) == ["evaluate.seed"]


def test_only_the_evaluate_stage_declares_how_it_samples():
    """`dvc exp run -S evaluate.cfg_strength=3` reruns evaluate alone: the train stage samples with its
    own train.sampling.* keys (not part of its run key), so it declares none of evaluate's."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for key in ("evaluate.solver", "evaluate.num_steps", "evaluate.cfg_strength", "evaluate.seed", "evaluate.batch_size"):
        declaring = [name for name, st in stages.items() if key in st.get("do", st).get("params", [])]
        assert declaring == ["evaluate"], (key, declaring)
