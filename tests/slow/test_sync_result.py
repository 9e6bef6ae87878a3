"""The result of issue 13, held: a cold `dvc repro` of the default pipeline trains a codec that
reproduces the example sounds, and a network whose samples beat the untrained network's; whether the
onsets follow the video is measured against the shuffled-video control.

Slow tier (a cold `dvc repro`: about 10 minutes on 2 quiet cores). Measured values (bench/RESULTS.md,
default params): codec round-trip onset F1 0.996; onset-vs-event F1 trained 0.192, untrained 0.0,
shuffled video 0.192; proxy_fd_logmel 258 trained vs 402 untrained (after 2500 steps, outside the
default: trained 0.494, shuffled 0.336). The thresholds sit below them with
room for run-to-run variation across machines (CPU kernels differ in the last bits).
"""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest

from tests.conftest import _COPY_IGNORE, REPO, run


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    dst = tmp_path_factory.mktemp("sync") / "repo"
    shutil.copytree(REPO, dst, ignore=_COPY_IGNORE)
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dst)
    run(["dvc", "repro"], dst)
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
@pytest.mark.xfail(strict=True, reason="issue 13's aim not reached on CPU: the tiny network does not use the video "
                                       "yet (shuffled-video F1 equals the trained F1); see bench/RESULTS.md")
def test_onsets_follow_the_video_not_just_the_caption(default_run):
    _, s = default_run
    assert s["proxy_onset_event_f1"] >= 0.6 and s["shuffled_proxy_onset_event_f1"] <= s["proxy_onset_event_f1"] / 2, s
