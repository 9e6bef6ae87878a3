"""The result of issue 13, held.

A cold `dvc repro` of the default pipeline trains a codec that reproduces the example sounds and a
network whose samples beat the untrained network's. The documented sync experiment
(:data:`SYNC_EXPERIMENT`, the README's command, 27-28 minutes cold on 2 quiet cores) trains long
enough that the onsets follow the video: it must beat the untrained network and the shuffled-video
control by the issue's margin (trained onset-vs-event F1 >= 0.6 at +-100 ms, each control at most half).

Slow tier. Measured values (bench/RESULTS.md): default params, codec round-trip onset F1 0.996;
onset-vs-event F1 trained 0.216, untrained 0.0, shuffled video 0.216; proxy_fd_logmel 258 trained vs
402 untrained. Sync experiment (4500 steps): trained 0.766, untrained 0.0, shuffled 0.373. The thresholds of the
default run sit below the measured values with room for run-to-run variation across machines (CPU
kernels differ in the last bits); the sync experiment's are the issue's own.
"""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest

from tests.conftest import _COPY_IGNORE, REPO, run


# The README's sync experiment, word for word (tests/test_readme_sync.py holds the README to it).
SYNC_EXPERIMENT = ["dvc", "exp", "run", "-n", "sync", "-S", "train.num_iterations=4500", "-S", "train.global_batch_size=16",
                   "-S", "train.learning_rate=2e-3", "-S", "train.schedule=cosine", "-S", "train.warmup_steps=100",
                   "-S", "train.val_interval=1000"]


def _pipeline_run(tmp_path_factory, command: list[str]):
    """A fresh copy of the repo, committed, where ``command`` runs the whole pipeline cold; returns
    the codec's metrics and the evaluation's scores (MLflow keys, ``test/`` dropped, ``baseline/x`` as
    ``baseline_x``)."""
    dst = tmp_path_factory.mktemp("sync") / "repo"
    shutil.copytree(REPO, dst, ignore=_COPY_IGNORE)
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dst)
    run(command, dst)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dst / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mmaudio").experiment_id
    codec = client.search_runs([exp], filter_string="tags.`mmaudio.stage` = 'tiny_weights'")[0].data.metrics
    # scores.json keeps the headline scores; the evaluation's own (nested) run holds every one, as
    # test/<key>, baseline/<key>, shuffled/<key>
    evaluation = client.search_runs([exp], filter_string="tags.`mmaudio.stage` = 'evaluate'")[0].data.metrics
    scores = {k.replace("test/", "", 1) if k.startswith("test/") else k.replace("/", "_", 1): v
              for k, v in evaluation.items()}
    headline = json.loads((dst / "models/evaluate/scores.json").read_text())
    assert headline["test"]["proxy_fd_logmel"] == pytest.approx(scores["proxy_fd_logmel"])
    return codec, scores


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return _pipeline_run(tmp_path_factory, ["dvc", "repro"])


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
    return _pipeline_run(tmp_path_factory, SYNC_EXPERIMENT)


@pytest.mark.slow
def test_codec_reproduces_the_example_sounds(default_run):
    codec, _ = default_run
    assert codec["codec_16k/roundtrip_onset_f1"] >= 0.9
    assert codec["codec_16k/roundtrip_lsd_db"] < 20.0


@pytest.mark.slow
def test_trained_network_beats_the_untrained_one_on_the_test_clips(default_run):
    _, s = default_run
    assert s["proxy_onset_event_num_clips"] >= 16
    assert s["proxy_onset_event_f1"] >= 0.1, s
    assert s["baseline_proxy_onset_event_f1"] <= s["proxy_onset_event_f1"] / 2, s
    assert s["proxy_fd_logmel"] < 0.8 * s["baseline_proxy_fd_logmel"], s


@pytest.mark.slow
def test_onsets_follow_the_video_not_just_the_caption(sync_run):
    _, s = sync_run
    assert s["proxy_onset_event_num_clips"] >= 16
    assert s["proxy_onset_event_f1"] >= 0.6, s
    assert s["baseline_proxy_onset_event_f1"] <= s["proxy_onset_event_f1"] / 2, s
    assert s["shuffled_proxy_onset_event_f1"] <= s["proxy_onset_event_f1"] / 2, s
