"""The evaluate function end to end on a micro network and a 2-row synthetic feature set: samples and
scores.json are written, official metrics are skipped with reasons, and everything lands in an
existing MLflow run (a real SQLite store)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from mmaudio.config import validate
from mmaudio.evaluation import evaluate as evaluate_mod
from mmaudio.features import write_feature_set
from mmaudio.media import decode_audio
from mmaudio.model.network import NETWORK_PRESETS, build_network, save_network_weights
from mmaudio.tracking import write_run_id_file
from tests.evaluation.workspace import copy_tiny_decoders
from tests.training.presets import MICRO

REPO = Path(__file__).resolve().parents[2]
IDS = ["clip_a", "clip_b"]
RATE = 16000


def clicks(times: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wave = 0.01 * torch.randn(128_000, generator=g)
    for t in times:
        i = int(t * RATE)
        wave[i : i + 400] += 0.8 * torch.exp(-torch.arange(400) / 60.0) * torch.randn(400, generator=g).sign()
    return wave


@pytest.fixture
def ws(tmp_path, monkeypatch):
    NETWORK_PRESETS.setdefault(MICRO.name, MICRO)
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["extract"]["out_dir"] = "features"
    raw["train"]["network"] = MICRO.name
    raw["train"]["out_dir"] = "train"
    raw["video_datasets"] = {"syn_test": {"media_dir": "media", "list_tsv": "l.tsv", "index_tsv": "i.tsv",
                                          "rejects_tsv": "r.tsv", "split": "test", "normalize_audio": False}}
    raw["evaluate"] = {**raw["evaluate"], "dataset": "syn_test", "num_steps": 2, "device": "cpu",
                       "events_tsv": "events.tsv", "out_dir": "eval", "num_logged_samples": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = validate(raw)
    copy_tiny_decoders(tmp_path)
    g = torch.Generator().manual_seed(0)
    write_feature_set(
        tmp_path / "features" / "syn_test", mode="16k", kind="video", ids=IDS, texts=["a", "b"],
        tensors={"mean": torch.randn(2, 250, 20, generator=g), "std": torch.full((2, 250, 20), 0.1),
                 "text_features": torch.randn(2, 77, 1024, generator=g),
                 "clip_features": torch.randn(2, 64, 1024, generator=g),
                 "sync_features": torch.randn(2, 192, 768, generator=g)},
    )
    torch.manual_seed(1)
    net = build_network(MICRO.name, latent_mean=torch.zeros(20), latent_std=torch.ones(20))
    save_network_weights(net, tmp_path / "train" / "weights.pth")
    # only clip_a has known events; the file's event at 9 s lies outside the 8 s window
    (tmp_path / "events.tsv").write_text("id\tkind\ttime_sec\nclip_a\tflash_click\t1.0\nclip_a\timpact\t4.0\n"
                                         "clip_a\tflash_click\t9.0\n")
    gt = {"clip_a": clicks([1.0, 4.0], 1), "clip_b": clicks([2.0, 6.0], 2)}
    monkeypatch.setattr(evaluate_mod, "CREPE_HOP_SEC", 0.25)  # 64 CREPE frames per set: enough, and fast
    monkeypatch.setattr(evaluate_mod, "ground_truth_audio", lambda p, ids, rate, n, dataset=None: {i: gt[i] for i in ids})
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path, params


def test_evaluate_writes_scores_and_logs_into_existing_run(ws):
    import mlflow
    from mlflow.tracking import MlflowClient

    root, params = ws
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mmaudio")
    run_id = client.create_run(exp).info.run_id
    client.log_metric(run_id, "train.loss", 1.0)
    write_run_id_file(root / "train" / "mlflow_run_id.txt", run_id, root / "train" / "weights.pth")

    scores = evaluate_mod.evaluate(params)

    for key in ("proxy_fd_logmel", "proxy_onset_gt_f1", "proxy_onset_event_f1", "proxy_fd_crepe",
                "baseline_proxy_fd_logmel", "baseline_proxy_onset_gt_f1", "baseline_proxy_fd_crepe"):
        assert key in scores, key
    assert scores["proxy_onset_event_num_clips"] == 1.0  # only clip_a has events
    assert scores["proxy_onset_gt_num_clips"] == 2.0
    assert scores["proxy_fd_logmel"] > 0 and math.isfinite(scores["proxy_fd_logmel"])
    # scores.json: the headline scores only (dvc exp show stays narrow); all of them go to MLflow
    doc = json.loads((root / "eval" / "scores.json").read_text())
    # (no official file here: the proxies stand in; the shuffled control's sync score only)
    assert doc == {group: {k: pytest.approx(scores[prefix + k]) for k in keys} for group, prefix, keys in (
        ("test", "", ("proxy_fd_logmel", "proxy_onset_event_f1")),
        ("baseline", "baseline_", ("proxy_fd_logmel", "proxy_onset_event_f1")),
        ("shuffled", "shuffled_", ("proxy_onset_event_f1",)))}
    for folder in ("samples", "baseline_samples", "gt"):
        for i in IDS:
            track = decode_audio(root / "eval" / folder / f"{i}.flac")
            assert track.sample_rate == RATE and track.num_samples == 128_000

    runs = client.search_runs([exp])
    child = [r for r in runs if r.info.run_id != run_id]
    assert len(runs) == 2 and len(child) == 1  # the training run and one evaluation run nested under it
    child_id = child[0].info.run_id
    data = client.get_run(run_id).data
    assert data.metrics["train.loss"] == 1.0
    assert data.metrics["test/proxy_fd_logmel"] == pytest.approx(scores["proxy_fd_logmel"])
    assert data.metrics["baseline/proxy_fd_logmel"] == pytest.approx(scores["baseline_proxy_fd_logmel"])
    assert data.metrics["test/proxy_onset_event_num_clips"] == 1.0
    assert data.tags["eval.run_id"] == child_id
    assert not any(k.startswith("evaluate.") for k in data.params)  # the training run's params stay its own
    for metric in ("fd_panns", "fd_vgg", "fd_passt", "desync", "ib_score"):
        assert data.tags[f"eval.skipped.{metric}"].startswith("weights absent"), metric
    sub = client.get_run(child_id).data
    assert sub.tags["mlflow.parentRunId"] == run_id
    assert sub.params["evaluate.cfg_strength"] == "4.5" and sub.params["evaluate.num_steps"] == "2"
    assert sub.metrics["test/proxy_fd_logmel"] == pytest.approx(scores["proxy_fd_logmel"])
    assert sub.metrics["baseline/proxy_fd_logmel"] == pytest.approx(scores["baseline_proxy_fd_logmel"])
    assert sub.tags["eval.skipped.fd_vgg"].startswith("weights absent")
    assert sub.params["data.in.train/weights.pth"] == data.tags["eval.in.train/weights.pth"]
    artifacts = [a.path for a in client.list_artifacts(child_id, "evaluate/samples")]
    assert artifacts == ["evaluate/samples/clip_a.flac"]
    assert client.list_artifacts(run_id, "evaluate/samples") == []  # samples belong to the evaluation run


@pytest.mark.parametrize("case", ["missing", "deleted"])
def test_a_run_the_store_lacks_gives_a_new_run_and_one_warning(ws, caplog, case):
    """mlflow_run_id.txt outlives the store it points into (a new mlflow.db, a deleted run): the
    evaluation logs into a new top-level run and says so once, instead of failing at its end."""
    from mlflow.tracking import MlflowClient

    root, params = ws
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("mmaudio")
    if case == "deleted":
        stale = client.create_run(exp).info.run_id
        client.delete_run(stale)
    else:
        stale = "ab" * 16  # a well-formed id of a run this store never had
    write_run_id_file(root / "train" / "mlflow_run_id.txt", stale, root / "train" / "weights.pth")

    with caplog.at_level("WARNING"):
        scores = evaluate_mod.evaluate(params)

    assert scores["proxy_fd_logmel"] > 0
    named = [r.getMessage() for r in caplog.records if stale in r.getMessage()]
    assert len(named) == 1 and f"is {'not' if case == 'missing' else 'deleted'} in the store" in named[0], named
    assert "train/mlflow_run_id.txt" in named[0]
    runs = client.search_runs([exp])  # live runs only
    assert len(runs) == 1 and runs[0].info.run_id != stale
    new = runs[0].data
    assert "mlflow.parentRunId" not in new.tags and new.params["evaluate.num_steps"] == "2"
    assert new.metrics["test/proxy_fd_logmel"] == pytest.approx(scores["proxy_fd_logmel"])
    if case == "deleted":
        assert client.get_run(stale).data.metrics == {}  # nothing was logged into the deleted run


def test_baseline_is_computed_once_per_configuration_and_reused(ws, monkeypatch, caplog):
    """A second evaluation (another trained network, same baseline configuration) reuses the cached
    baseline: same scores, byte-identical samples, no sampling of the untrained network; a changed
    train.seed changes the key and samples it again."""
    import dataclasses
    import logging

    root, params = ws
    first = evaluate_mod.evaluate(params)
    entries = list((root / ".cache" / "baseline").iterdir())
    assert len(entries) == 1 and (entries[0] / "samples" / "clip_a.flac").is_file()
    flac = (root / "eval" / "baseline_samples" / "clip_a.flac").read_bytes()
    png = (root / "eval" / "spectrograms" / "baseline_clip_a.png").read_bytes()
    assert png.startswith(b"\x89PNG") and (entries[0] / "spectrograms" / "clip_a.png").read_bytes() == png
    shutil.rmtree(root / "eval" / "spectrograms")  # as DVC clears the stage's outs before a rerun

    torch.manual_seed(2)  # another trained network with the same buffers: the baseline does not change
    net = build_network(MICRO.name, latent_mean=torch.zeros(20), latent_std=torch.ones(20))
    save_network_weights(net, root / "train" / "weights.pth")
    sampled = []
    real_untrained = evaluate_mod.untrained_network
    monkeypatch.setattr(evaluate_mod, "untrained_network", lambda *a, **k: sampled.append(a) or real_untrained(*a, **k))
    with caplog.at_level(logging.INFO, logger="mmaudio.evaluation.evaluate"):
        second = evaluate_mod.evaluate(params)
    assert sampled == [] and "baseline: reusing" in caplog.text
    assert {k: v for k, v in second.items() if k.startswith("baseline_")} == pytest.approx(
        {k: v for k, v in first.items() if k.startswith("baseline_")}, nan_ok=True)
    assert (root / "eval" / "baseline_samples" / "clip_a.flac").read_bytes() == flac
    assert (root / "eval" / "spectrograms" / "baseline_clip_a.png").read_bytes() == png  # a hit writes a miss's files

    other = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=params.train.seed + 1))
    evaluate_mod.evaluate(other)
    assert len(sampled) == 1 and len(list((root / ".cache" / "baseline").iterdir())) == 2


def test_two_evaluations_of_one_training_keep_their_settings(ws):
    """`dvc exp run -S evaluate.cfg_strength=3` after a default evaluation: both runs, both settings, in a
    real SQLite store, nested under the one training run."""
    from mlflow.tracking import MlflowClient

    root, params = ws
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("mmaudio")
    run_id = client.create_run(exp).info.run_id
    write_run_id_file(root / "train" / "mlflow_run_id.txt", run_id, root / "train" / "weights.pth")
    quick = {"crepe": False, "baseline": False, "num_logged_samples": 0}
    first = evaluate_mod.evaluate(dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, **quick)))
    second = evaluate_mod.evaluate(
        dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, cfg_strength=3.0, **quick)))

    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])
    assert [c.data.params["evaluate.cfg_strength"] for c in children] == ["4.5", "3.0"]
    assert [c.data.metrics["test/proxy_fd_logmel"] for c in children] == [
        pytest.approx(first["proxy_fd_logmel"]), pytest.approx(second["proxy_fd_logmel"])]
    train = client.get_run(run_id).data
    assert train.tags["eval.run_id"] == children[1].info.run_id  # the latest evaluation
    assert train.metrics["test/proxy_fd_logmel"] == pytest.approx(second["proxy_fd_logmel"])
