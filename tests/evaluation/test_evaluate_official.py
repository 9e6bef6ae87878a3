"""The evaluate stage with av-benchmark's extractors: tiny extractor files in the official formats make
every official metric appear (trained and baseline), finite and untagged; without the files every one
is skipped with a reason naming the file and its source. Runs on the example media (two test clips)."""

from __future__ import annotations

import json
import math

import pytest

from mmaudio.evaluation import evaluate as evaluate_mod
from mmaudio.evaluation import metrics, official
from mmaudio.evaluation.official import OFFICIAL_METRICS
from tests.evaluation.workspace import RecordingRun, make_workspace

IDS = ["sweep_002", "flash_003"]  # the example test split
# the paper's metrics; isc_panns is its IS
PAPER_METRICS = ("fd_passt", "fd_panns", "fd_vgg", "kl_panns", "kl_passt", "isc_panns", "ib_score", "desync")
ALL_OFFICIAL = (*OFFICIAL_METRICS, "isc_panns_std", "isc_passt_std")


@pytest.fixture
def ws(tmp_path, monkeypatch, examples_dir):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    runs: list[RecordingRun] = []

    def recording_run(*args, **kwargs):
        runs.append(RecordingRun())
        return runs[-1]

    monkeypatch.setattr(evaluate_mod, "StageRun", recording_run)
    return tmp_path, examples_dir, runs


def _fast_fd(monkeypatch) -> None:
    # FD of 2048-d PANNs embeddings is a 2048x2048 sqrtm (~40 s on 2 shared cores, twice with the
    # baseline): here the real FD runs on the first 64 dims; the slow test runs it in full.
    real = metrics.frechet_distance
    monkeypatch.setattr(official, "frechet_distance", lambda a, b: real(a[:, :64], b[:, :64]))


def _check_all_official(root, run, scores, baseline: bool) -> dict:
    doc = scores  # every score (scores.json keeps the headline ones)
    headline = json.loads((root / "eval" / "scores.json").read_text())
    # with the official files the official scores replace the proxies that stand in for them
    assert headline["test"] == {"fd_passt": pytest.approx(scores["fd_passt"]), "desync": pytest.approx(scores["desync"])}
    assert headline["shuffled"] == {"desync": pytest.approx(scores["shuffled_desync"])}
    for prefix in ("", "baseline_") if baseline else ("",):
        for key in ALL_OFFICIAL:
            assert doc.get(prefix + key) is not None and math.isfinite(doc[prefix + key]), prefix + key
    for key in OFFICIAL_METRICS:
        assert f"eval.skipped.{key}" not in run.tags, key
    assert 0 <= doc["desync"] <= 2.0 and round(doc["desync"] / 0.2, 4) % 1 == 0  # mean of two grid offsets / clip
    assert -1 <= doc["ib_score"] <= 1
    assert doc["isc_panns"] >= 1.0 and doc["isc_passt"] >= 1.0  # exp of a mean KL
    assert doc["kl_panns"] > -1e-5 and doc["kl_passt"] > -1e-5  # >= 0 up to float32 rounding
    assert doc["fd_passt"] > 0 and doc["fd_vgg"] > 0
    logged = {k: v for k, v, _ in run.metrics}
    assert logged["test/fd_vgg"] == pytest.approx(doc["fd_vgg"])
    if baseline:
        # the trained and the untrained network generate different audio: some official score differs
        assert any(doc[k] != doc[f"baseline_{k}"] for k in ("fd_passt", "fd_vgg", "kl_passt", "ib_score"))
        assert logged["baseline/fd_vgg"] == pytest.approx(doc["baseline_fd_vgg"])
    # 2 clips < 10 splits: IS over one split, said in a note
    assert "1 split" in run.tags["eval.note.isc_panns"]
    assert run.tags["eval.extractor_preset"] == "tiny"
    assert any(k.startswith("eval.in.ext_eval/") for k in run.tags)  # the extractor files' hashes
    return doc


def test_official_metrics_with_tiny_extractor_files(ws, monkeypatch):
    root, examples, runs = ws
    _fast_fd(monkeypatch)
    # no baseline here (half the sampling and decoding); the slow test scores it too
    params = make_workspace(root, examples, IDS, extractors=True, evaluate={"baseline": False})
    scores = evaluate_mod.evaluate(params)
    doc = _check_all_official(root, runs[0], scores, baseline=False)
    assert scores["ib_score"] == doc["ib_score"]
    assert "proxy_fd_logmel" in doc  # proxies still computed


@pytest.mark.slow
def test_official_metrics_full_fd(ws):
    """With the baseline and the real 2048-d FD of PANNs (slow: two 2048x2048 matrix square roots)."""
    root, examples, runs = ws
    params = make_workspace(root, examples, IDS, extractors=True)
    scores = evaluate_mod.evaluate(params)
    doc = _check_all_official(root, runs[0], scores, baseline=True)
    assert doc["fd_panns"] >= 0


def test_official_metrics_skipped_without_files(ws, caplog):
    import logging

    root, examples, runs = ws
    params = make_workspace(root, examples, IDS, extractors=False, evaluate={"baseline": False})
    with caplog.at_level(logging.INFO, logger="mmaudio.evaluation.evaluate"):
        doc = evaluate_mod.evaluate(params)
    # one short line per missing file, naming the metrics it would give
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    official = [line for line in skipped if "not found in" in line]
    assert len(official) == len(set(OFFICIAL_METRICS.values())) == 5, skipped
    assert any(line.startswith("skipped fd_panns, isc_panns, kl_panns: Cnn14_16k_mAP=0.438.pth not found") for line in official)
    assert all(len(line) < 200 for line in official), official
    assert not set(ALL_OFFICIAL) & set(doc)
    assert doc["proxy_fd_logmel"] > 0
    # the headline scores of the trained network and of the shuffled-video control (no baseline here)
    assert json.loads((root / "eval" / "scores.json").read_text()) == {
        "test": {"proxy_fd_logmel": pytest.approx(doc["proxy_fd_logmel"]),
                 "proxy_onset_event_f1": pytest.approx(doc["proxy_onset_event_f1"])},
        "shuffled": {"proxy_onset_event_f1": pytest.approx(doc["shuffled_proxy_onset_event_f1"])}}
    tags = runs[0].tags
    for key, filename in OFFICIAL_METRICS.items():
        reason = tags[f"eval.skipped.{key}"]
        assert reason.startswith("weights absent") and filename in reason and "ext_eval" in reason, key
    assert "zenodo.org" in tags["eval.skipped.fd_panns"]  # where to get it
    assert "dl.fbaipublicfiles.com" in tags["eval.skipped.ib_score"]
