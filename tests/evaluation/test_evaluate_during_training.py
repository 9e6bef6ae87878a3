"""Evaluation inside the training loop: the val set sampled with the given network, every score logged
as val/<key> at the step, the reference side built once, the global RNG untouched; and the new keys
train.eval_interval, evaluate.extractor_dir / extractor_preset, and the ImageBind frame stream."""

from __future__ import annotations

import math

import pytest
import torch

from mmaudio.config import ConfigError, validate
from mmaudio.evaluation import evaluate as evaluate_mod
from mmaudio.evaluation import metrics, official
from mmaudio.evaluation.evaluate import TrainingEvaluation
from mmaudio.evaluation.official import OFFICIAL_METRICS
from mmaudio.evaluation.sampling import load_trained_network
from mmaudio.media import IMAGEBIND_FRAMES, load_video_clip, probe
from tests.evaluation.workspace import RecordingRun, make_workspace

IDS = ["sweep_002", "flash_003"]


@pytest.fixture
def ws(tmp_path, monkeypatch, examples_dir):
    monkeypatch.chdir(tmp_path)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    real = metrics.frechet_distance  # 2048-d sqrtm is ~40 s here: the real FD on 64 dims
    monkeypatch.setattr(official, "frechet_distance", lambda a, b: real(a[:, :64], b[:, :64]))
    params = make_workspace(tmp_path, examples_dir, IDS, extractors=True)
    net = load_trained_network(params.train.network, tmp_path / "train" / "weights.pth")
    return tmp_path, params, net


def test_evaluate_during_training_logs_eval_metrics_at_step(ws, monkeypatch):
    """Every official metric too (tiny extractor files), at two steps."""
    root, params, net = ws
    run = RecordingRun()
    net.train()
    rng = torch.get_rng_state()
    evaluation = TrainingEvaluation(params)
    scores = evaluation(net, 7, run)
    assert torch.equal(torch.get_rng_state(), rng)  # building extractors/decoders drew nothing from it
    assert net.training  # mode restored for the training loop

    logged = {k: (v, step) for k, v, step in run.metrics}
    for key in (*OFFICIAL_METRICS, "proxy_fd_logmel", "proxy_onset_gt_f1"):
        value, step = logged[f"val/{key}"]
        assert step == 7 and math.isfinite(value) and value == pytest.approx(scores[key]), key
    assert not [t for t in run.tags if t.startswith("train.eval.skipped.")]
    assert run.tags["train.eval.dataset"] == "ex_eval"

    # the reference side is built once; the same network gives the same scores at the next call
    scorer = evaluation.scorer
    built = []
    monkeypatch.setattr(evaluate_mod, "SetScorer", lambda *a, **k: built.append(1))
    again = evaluation(net, 14, run)
    assert evaluation.scorer is scorer and not built
    assert again == scores
    assert {step for k, _, step in run.metrics if k == "val/fd_vgg"} == {7, 14}


def test_evaluate_during_training_function_without_extractors(ws):
    root, params, net = ws
    for f in (root / "ext_eval").iterdir():
        f.unlink()
    run = RecordingRun()
    scores = TrainingEvaluation(params)(net, 3, run)
    assert not set(OFFICIAL_METRICS) & set(scores)
    assert {k for k, _, _ in run.metrics} >= {"val/proxy_fd_logmel", "val/proxy_onset_gt_f1"}
    assert run.tags["train.eval.skipped.desync"].startswith("weights absent")


def test_training_evaluation_needs_a_video_val_set(ws):
    _, params, _ = ws
    raw = {"train": {"val_dataset": None}}
    with pytest.raises(ValueError, match="train.val_dataset"):
        TrainingEvaluation(validate(_merge(params, raw)))


def _merge(params, raw):
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(params), raw)


def test_new_config_keys_are_validated(ws):
    _, params, _ = ws
    assert validate(_merge(params, {})).train.eval_interval == 0
    assert validate(_merge(params, {"train": {"eval_interval": 25}})).train.eval_interval == 25
    with pytest.raises(ConfigError, match="train.eval_interval"):
        validate(_merge(params, {"train": {"eval_interval": -1}}))
    with pytest.raises(ConfigError, match="evaluate.extractor_preset"):
        validate(_merge(params, {"evaluate": {"extractor_preset": "huge"}}))


def test_imagebind_frames_are_native_size_at_half_fps(examples_dir):
    path = examples_dir / "video" / "sweep_002.mp4"
    info = probe(path)
    clip = load_video_clip(path, duration_sec=8.0, specs=(IMAGEBIND_FRAMES,))
    ib = clip.frames[IMAGEBIND_FRAMES.name]
    assert ib.dtype == torch.uint8 and tuple(ib.shape) == (4, 3, info.height, info.width)  # t = 0, 2, 4, 6 s
    assert all(not torch.equal(ib[k], ib[k + 1]) for k in range(3))  # the square moves between frames


def test_train_logs_eval_scores_every_eval_interval(tmp_path, monkeypatch, examples_dir):
    """train() with train.eval_interval: the val set is scored at every interval and at the end, into
    the training run of a real MLflow store."""
    import mlflow
    import yaml

    from mmaudio.train_stage import train

    monkeypatch.chdir(tmp_path)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    make_workspace(tmp_path, examples_dir, IDS, extractors=False)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["tracking"] |= {"enabled": True, "uri": uri}
    raw["train"] |= {"num_iterations": 3, "eval_interval": 2, "global_batch_size": 2, "val_interval": 100,
                     "log_interval": 1, "num_audio_samples": 0, "device": "cpu", "compile": False}
    result = train(validate(raw))

    history = mlflow.tracking.MlflowClient(uri).get_metric_history(result.run_id, "val/proxy_fd_logmel")
    assert [m.step for m in history] == [2, 3]  # the interval, then the final step
    assert all(math.isfinite(m.value) for m in history)
