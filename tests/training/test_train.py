"""train() end to end on CPU: the loss falls, the MLflow run holds what it should, a stopped run
resumes to exactly the uninterrupted result, and bad batch sizes are refused naming the key."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from mmaudio.config import ConfigError, validate
from mmaudio.distributed import DistContext
from mmaudio.features import FeatureSet
from mmaudio.hashing import dvc_hash
from mmaudio.model.network import build_network, load_network_weights
from mmaudio.training.checkpoint import list_checkpoints, load_latest_checkpoint
from mmaudio.training.ema import list_snapshots
from mmaudio.training.loader import latent_stats
from mmaudio.train_stage import train
from mmaudio.training.loader import per_rank_batch_size
from tests.training.conftest import REPO, train_params, train_raw
from tests.training.presets import MICRO


@pytest.fixture(scope="module")
def long_run(feature_root, tmp_path_factory):
    """150 steps of the micro network in a git workspace with MLflow's default store."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")  # the train stage's declared params: what the run logs
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
            mp.delenv(var, raising=False)
        from mmaudio.model.network import NETWORK_PRESETS

        mp.setitem(NETWORK_PRESETS, MICRO.name, MICRO)
        params = train_params(feature_root, ws / "models" / "train", num_iterations=150, log_interval=10,
                              val_interval=50, checkpoint_every=100, num_audio_samples=1,
                              ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 50, "output_sigma_rel": 0.05})
        result = train(params)
    yield ws, params, result
    mlflow.set_tracking_uri(None)


def test_loss_falls_clearly(long_run):
    _, _, r = long_run
    losses = [row[1] for row in r.history if not math.isnan(row[1])]
    vals = [row[2] for row in r.history if not math.isnan(row[2])]
    assert len(losses) == 15 and len(vals) == 3 and r.step == 150
    assert 1.6 < losses[0] < 2.2  # ~2 = E|x1 - x0|^2 for unit-variance data and an untrained (zero) output
    assert sum(losses[-3:]) / 3 < 0.65 * losses[0], losses
    assert vals[-1] < 0.85 * vals[0] and r.val_loss == vals[-1]


def test_outputs_and_exported_weights(long_run, feature_root):
    ws, params, r = long_run
    out = ws / "models" / "train"
    assert r.weights == out / "weights.pth"
    net = build_network(MICRO)
    load_network_weights(net, r.weights)  # strict: the official layout
    mean, std = latent_stats(FeatureSet.open(feature_root / "syn_video"))  # the first video set
    assert torch.equal(net.latent_mean.flatten(), mean) and torch.equal(net.latent_std.flatten(), std)
    assert not net.empty_string_feat.any()  # tiny profile without ext_weights/tiny/empty_string.pth
    # EMA weights: near the final weights but not equal to them
    final = load_latest_checkpoint(r.checkpoint_dir)[0]["model"]
    w = "final_layer.conv.weight"
    assert not torch.equal(net.state_dict()[w], final[w])
    assert (net.state_dict()[w] - final[w]).abs().max() < 0.2 * final[w].abs().max()
    assert [s for s, _ in list_checkpoints(r.checkpoint_dir)] == [100, 150]
    assert [s for s, _ in list_snapshots(r.checkpoint_dir / "ema")] == [50, 100, 150]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"train": {"loss": round(r.loss, 6)}, "val": {"loss": round(r.val_loss, 6)}, "step": 150}
    train_rows = (out / "plots/metrics/train/loss.tsv").read_text().splitlines()
    assert train_rows[0] == "step\tloss" and len(train_rows) == 16 and train_rows[1].startswith("10\t")
    val_rows = (out / "plots/metrics/val/loss.tsv").read_text().splitlines()  # validation steps only
    assert [row.split("\t")[0] for row in val_rows] == ["step", "50", "100", "150"]
    assert float(val_rows[1].split("\t")[1]) == pytest.approx(r.history[4][2], rel=1e-5)
    assert (out / "mlflow_run_id.txt").read_text().splitlines()[0] == r.run_id


def test_mlflow_run_holds_config_hashes_tags_and_metrics(long_run, feature_root):
    ws, params, r = long_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    run = client.get_run(r.run_id)
    p, tags, m = run.data.params, run.data.tags, run.data.metrics
    assert p["train.learning_rate"] == "0.002" and p["train.network"] == "micro_16k"
    assert p["train.global_batch_size"] == "8" and p["train.ema.sigma_rels"] == "[0.05, 0.1]"
    assert p["train.world_size"] == "1" and p["train.steps_per_epoch"] == "7" and int(p["train.num_parameters"]) > 0
    for name in ("syn_video", "syn_audio", "syn_val"):
        assert p[f"data.in.{feature_root / name}"] == dvc_hash(feature_root / name)
    weights_key = "data.out.models/train/weights.pth"
    assert p[weights_key] == dvc_hash(ws / "models" / "train" / "weights.pth")
    assert tags["mmaudio.stage"] == "train" and tags["mmaudio.profile"] == "tiny"
    assert tags["train.init"] == "random" and tags["train.empty_string"] == "zeros"
    assert tags["train.latent_stats_dataset"] == "syn_video" and "git.commit" in tags
    assert tags["train.audio_samples"].startswith("skipped: weight profile 'tiny'")  # no ext_weights/tiny here
    history = client.get_metric_history(r.run_id, "train/loss")
    assert [h.step for h in history] == list(range(10, 151, 10))
    assert history[-1].value == pytest.approx(r.loss)
    assert [h.step for h in client.get_metric_history(r.run_id, "val/loss")] == [50, 100, 150]
    assert {"train/lr", "train/grad_norm", "train/samples_per_sec", "train/ema_synthesis_error"} <= set(m)
    assert m["train/lr"] == pytest.approx(2e-3) and run.info.status == "FINISHED"
    # the params the train stage reads (dvc.yaml's declaration), not the whole config
    assert "partition.max_segments" not in p and "evaluate.out_dir" not in p
    assert p["train.sampling.num_steps"] == "25"  # the stage's own sampling settings
    assert "evaluate.num_steps" not in p  # the evaluate stage's sampling is not the train stage's
    artifacts = [a.path for a in client.list_artifacts(r.run_id, "weights")]
    assert artifacts == ["weights/weights.pth"]  # the exported weights go through the tracking server
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert inputs[str(feature_root / "syn_video")] == dvc_hash(feature_root / "syn_video")


def test_fine_tuning_starts_from_a_weight_file(long_run, workspace, feature_root):
    _, _, trained = long_run
    params = train_params(feature_root, workspace / "ft", num_iterations=3, log_interval=1, val_interval=100,
                          weights=str(trained.weights))
    r = train(params)
    fresh_first_loss = trained.history[0][1]  # mean of the first 10 steps from scratch, ~1.9
    assert r.history[0][1] < 0.75 * fresh_first_loss
    net = build_network(MICRO)
    load_network_weights(net, r.weights)
    start = torch.load(trained.weights, weights_only=True)
    assert torch.equal(net.latent_mean, start["latent_mean"])  # the file's statistics, as upstream
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    tags = client.get_run(r.run_id).data.tags
    assert tags["train.init"] == f"weights {trained.weights}"
    assert client.get_run(r.run_id).data.params[f"data.in.{trained.weights}"] == dvc_hash(trained.weights)


def test_stopped_run_resumes_to_exactly_the_uninterrupted_result(workspace, feature_root):
    kw = dict(num_iterations=12, checkpoint_every=4, log_interval=3, val_interval=6, keep_last=3,
              ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 2, "output_sigma_rel": 0.05})
    whole = train(train_params(feature_root, workspace / "a", **kw))
    assert whole.resumed_from is None

    halted = train(train_params(feature_root, workspace / "b", **kw), halt_after_step=7)  # "killed" after step 7
    assert halted.halted and halted.weights is None and halted.step == 7
    assert halted.checkpoint_dir.name == whole.checkpoint_dir.name  # out_dir is not part of the run key
    assert [s for s, _ in list_snapshots(halted.checkpoint_dir / "ema")][-1] == 6
    resumed = train(train_params(feature_root, workspace / "b", **kw))
    assert resumed.resumed_from == 4
    assert repr(resumed.history) == repr(whole.history)  # bit-equal floats, nan where not measured
    a = torch.load(whole.weights, weights_only=True)
    b = torch.load(resumed.weights, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (load_latest_checkpoint(r.checkpoint_dir)[0] for r in (whole, resumed))
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert torch.equal(ca["optimizer"]["state"][0]["exp_avg_sq"], cb["optimizer"]["state"][0]["exp_avg_sq"])
    assert ca["loader"] == cb["loader"] and ca["loader"]["epoch"] == 1

    # a finished run started again does no more steps; a changed param starts a fresh run elsewhere
    again = train(train_params(feature_root, workspace / "b", **kw))
    assert again.resumed_from == 12 and again.step == 12
    changed = train(train_params(feature_root, workspace / "b", **{**kw, "learning_rate": 1e-3}))
    assert changed.resumed_from is None and changed.checkpoint_dir != resumed.checkpoint_dir


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from mmaudio.encoders.tiny import write_tiny_weights

    out = tmp_path_factory.mktemp("weights") / "tiny"
    write_tiny_weights(out, seed=0)
    return out


def test_audio_samples_and_the_profile_empty_string(workspace, feature_root, tiny_weights):
    from mmaudio.encoders.clip import load_empty_string

    shutil.copytree(tiny_weights, workspace / "ext_weights" / "tiny")
    r = train(train_params(feature_root, workspace / "e", num_iterations=2, val_interval=2, num_audio_samples=2))
    net = build_network(MICRO)
    load_network_weights(net, r.weights)
    assert torch.equal(net.empty_string_feat, load_empty_string(tiny_weights / "empty_string.pth"))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    run = client.get_run(r.run_id)
    assert run.data.tags["train.empty_string"] == "ext_weights/tiny/empty_string.pth"
    assert run.data.tags["train.audio_samples"] == "2 rows of syn_val"
    names = sorted(a.path for a in client.list_artifacts(r.run_id, "samples/step_0000002"))
    assert len(names) == 8 and "samples/step_0000002/video3_000_sample.wav" in names
    wav = Path(client.download_artifacts(r.run_id, "samples/step_0000002/video3_000_sample.wav", str(workspace)))
    import wave

    with wave.open(str(wav)) as f:
        assert f.getframerate() == 16000 and f.getnframes() == 128000  # 8 s decoded from 250 latent frames


def test_a_rerun_at_the_final_checkpoint_writes_the_fresh_runs_sample_images(workspace, feature_root, tiny_weights):
    """DVC deletes the uncached plots/ before rerunning the stage; a rerun whose run key is unchanged
    resumes at the final checkpoint and trains nothing, yet must leave the same files as a fresh run."""
    shutil.copytree(tiny_weights, workspace / "ext_weights" / "tiny")
    params = train_params(feature_root, workspace / "r", num_iterations=3, val_interval=2, num_audio_samples=1)
    fresh = train(params)
    images = workspace / "r" / "plots" / "images"
    written = {p.name: p.read_bytes() for p in sorted(images.iterdir())}
    assert sorted(written) == ["video3_000_sample.png", "video3_000_truth.png"]
    shutil.rmtree(workspace / "r" / "plots")

    again = train(params)
    assert again.resumed_from == 3 and again.step == 3
    assert {p.name: p.read_bytes() for p in sorted(images.iterdir())} == written  # byte for byte
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    assert again.run_id != fresh.run_id
    names = sorted(a.path for a in client.list_artifacts(again.run_id, "samples/step_0000003"))
    assert names == [f"samples/step_0000003/video3_000_{k}.{e}" for k in ("sample", "truth") for e in ("png", "wav")]


def _declared_outputs(stage: str, out_dir: Path) -> list[Path]:
    """The outs and metrics dvc.yaml declares for ``stage``, with ``${train.out_dir}`` set to ``out_dir``."""
    entry = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    paths = [next(iter(o)) if isinstance(o, dict) else o for o in entry.get("outs", []) + entry.get("metrics", [])]
    assert all(p.startswith("${train.out_dir}/") for p in paths), paths
    return [out_dir / p.removeprefix("${train.out_dir}/") for p in paths]


def test_two_fresh_runs_write_what_dvc_lock_records_byte_for_byte(workspace, feature_root, tiny_weights):
    """A fresh clone's `dvc repro` must leave dvc.lock (and git) as committed: every file the train
    stage declares is byte-identical between two fresh runs, and what differs per run (the MLflow run
    id) is neither declared nor git-tracked."""
    kw = dict(num_iterations=4, log_interval=2, val_interval=2, checkpoint_every=2, num_audio_samples=1,
              ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 2, "output_sigma_rel": 0.05})
    results, dirs = [], []
    for clone in ("clone_a", "clone_b"):  # two clones, each with its own MLflow store, as on two checkouts
        root = workspace / clone
        root.mkdir()
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        shutil.copytree(tiny_weights, root / "ext_weights" / "tiny")
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            # the out_dir as params.yaml names it (relative): the checkpoints hold the resolved config
            results.append(train(train_params(feature_root, Path("models/train"), **kw)))
        dirs.append(root / "models" / "train")
    assert results[0].run_id != results[1].run_id and all(r.resumed_from is None for r in results)

    declared = [_declared_outputs("train", d) for d in dirs]
    assert [p.name for p in declared[0]] == ["checkpoints", "weights.pth", "plots", "metrics.json"]
    for a, b in zip(*declared):
        assert dvc_hash(a) == dvc_hash(b), f"{a.name} differs between two fresh runs: dvc.lock would change"
    # what a run writes outside its declared outs: only the run-id file (and the folder lock)
    for d, outs in zip(dirs, declared):
        undeclared = sorted(p.name for p in d.iterdir() if p not in outs)
        assert undeclared == [".mmaudio.lock", "mlflow_run_id.txt"], undeclared
    ids = [(d / "mlflow_run_id.txt").read_text().splitlines()[0] for d in dirs]
    assert ids == [r.run_id for r in results]
    ignored = subprocess.run(["git", "check-ignore", "-q", "models/train/mlflow_run_id.txt"], cwd=REPO)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "models/train/mlflow_run_id.txt"], cwd=REPO,
                             capture_output=True)
    assert ignored.returncode == 0 and tracked.returncode != 0, "the run-id file must stay out of git"


def test_damaged_latest_checkpoint_is_skipped(workspace, feature_root):
    params = train_params(feature_root, workspace / "c", num_iterations=8, checkpoint_every=4, val_interval=100)
    first = train(params, halt_after_step=5)
    # a later checkpoint that is garbage (as after a disk fault): the run resumes from step 4
    (first.checkpoint_dir / "ckpt-000000005.pt").write_bytes(b"not a checkpoint")
    resumed = train(params)
    assert resumed.resumed_from == 4 and resumed.step == 8


def test_global_batch_must_divide_over_processes(workspace, feature_root):
    with pytest.raises(ConfigError, match=r"train.global_batch_size' \(10\) must be divisible by the number of processes \(4\)"):
        per_rank_batch_size(10, 4)
    params = train_params(feature_root, workspace / "d")
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        train(params, DistContext(rank=0, world_size=3, local_rank=0, device=torch.device("cpu")))
    with pytest.raises(ConfigError, match=r"'train.global_batch_size' \(8\) must be divisible by 'train.nproc_per_node' \(3\)"):
        validate(train_raw(feature_root, workspace / "d", nproc_per_node=3))


def test_config_errors_name_the_key(feature_root, tmp_path):
    for bad, key in (({"schedule": "poly"}, "train.schedule"), ({"milestones": [5, 2]}, "train.milestones"),
                     ({"datasets": {"syn_video": 0}}, "train.datasets.syn_video"),
                     ({"ema": {"sigma_rels": [0.05]}}, "train.ema.sigma_rels"), ({"learning_rat": 1.0}, "learning_rat")):
        with pytest.raises(ConfigError, match=key):
            validate(train_raw(feature_root, tmp_path, **bad))


def test_dvc_stage_reads_the_sets_params_name():
    """dvc.yaml cannot loop over train.datasets, so its train deps are listed by hand: they must
    cover every feature set the default params train and validate on."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    deps = {d.replace("${extract.out_dir}", params["extract"]["out_dir"]) for d in stage["deps"]}
    names = [*params["train"]["datasets"], params["train"]["val_dataset"]]
    assert {f"{params['extract']['out_dir']}/{n}" for n in names} <= deps
    # the params are checked (three-line error) before torchrun starts
    assert "train" in stage["params"] and stage["cmd"].startswith("python -m mmaudio.check_params && torchrun --standalone")
    ckpt = next(o for o in stage["outs"] if isinstance(o, dict) and "${train.out_dir}/checkpoints" in o)
    assert ckpt["${train.out_dir}/checkpoints"]["persist"] is True


def test_run_key_covers_what_changes_the_numbers(feature_root, tmp_path):
    from mmaudio.training.train import run_key

    hashes = {"a": "1.dir", "b": "2.dir"}

    def key(**train):
        return run_key(train_params(feature_root, tmp_path, **train).train, hashes)

    base = key()
    assert key(checkpoint_every=7, keep_last=5, log_interval=3, nproc_per_node=2, compile=True, device="auto") == base
    assert key(learning_rate=1e-4) != base and key(seed=1) != base
    assert key(datasets={"syn_audio": 1, "syn_video": 2}) != base  # the order lays out the epoch
    assert run_key(train_params(feature_root, tmp_path).train, {**hashes, "b": "3.dir"}) != base


def test_unreadable_checkpoint_files_name_the_file_and_the_reason(tmp_path):
    """A checkpoint another node cannot see (no shared train.out_dir), a truncated one and a pickle
    with code objects each get an error naming the file and saying which of these it is."""
    import pickle

    from mmaudio.training.checkpoint import CheckpointError, load_plain_file

    missing = tmp_path / "ckpt-000000010.pt"
    with pytest.raises(CheckpointError, match=r"ckpt-000000010\.pt does not exist on this machine.*shares"):
        load_plain_file(missing)

    good = tmp_path / "good.pt"
    torch.save({"step": 3, "w": torch.ones(4)}, good)
    assert load_plain_file(good)["step"] == 3
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is corrupt or truncated"):
        load_plain_file(truncated)

    code = tmp_path / "code.pt"
    code.write_bytes(pickle.dumps({"step": 3, "f": print}))
    with pytest.raises(CheckpointError, match=r"code\.pt holds objects other than tensors"):
        load_plain_file(code)


def test_dvc_plots_show_draws_true_curves(long_run, tmp_path):
    """`dvc plots show --json` (real DVC) of the run's files with the repo's dvc.yaml: the validation
    series holds the validation steps only, not zero-filled rows between them."""
    ws, _, r = long_run
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(ws / "models" / "train" / "plots", repo / "models" / "train" / "plots")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=repo, check=True, capture_output=True, text=True)
    plot = json.loads(shown.stdout)["data"]["loss"][0]["content"]
    assert plot["title"]["text"].startswith("Flow-matching loss")
    assert plot["encoding"]["x"]["title"] == "optimizer step"
    points = plot["data"]["values"]
    val = [(int(p["step"]), float(p["loss"])) for p in points if p["filename"] == "val/loss.tsv"]
    expected = [(int(s), v) for s, _, v in r.history if not math.isnan(v)]
    assert [s for s, _ in val] == [50, 100, 150] == [s for s, _ in expected]
    assert all(v == pytest.approx(e, rel=1e-5) and v > 0.1 for (_, v), (_, e) in zip(val, expected))
    train_steps = [int(p["step"]) for p in points if p["filename"] == "train/loss.tsv"]
    assert train_steps == list(range(10, 151, 10))


def test_the_stage_composes_inputs_and_callbacks_with_its_sampling_settings(workspace, feature_root, tiny_weights):
    """The trainer's audio samples follow train.sampling.* (cfg_strength included) and the sampler is the
    evaluation's: the guidance changes the sampled latents, the same settings reproduce them."""
    import dataclasses

    from mmaudio.distributed import DistContext
    from mmaudio.evaluation.audio_samples import AudioSamples
    from mmaudio.evaluation.sampling import sample_latents, sampling_options
    from mmaudio.train_stage import train_callbacks, train_inputs
    from mmaudio.training.loader import TrainSource, read_rows

    shutil.copytree(tiny_weights, workspace / "ext_weights" / "tiny")
    base = train_params(feature_root, workspace / "s", num_audio_samples=1, val_interval=7)
    sampling = dataclasses.replace(base.train.sampling, cfg_strength=3.0, num_steps=3)
    params = dataclasses.replace(base, train=dataclasses.replace(base.train, sampling=sampling))
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    callbacks = train_callbacks(params, ctx)
    assert [(c.interval, type(c.callback)) for c in callbacks] == [(7, AudioSamples)]  # eval_interval 0: no evaluation
    samples = callbacks[0].callback
    assert samples.options == sampling_options(params.train.sampling)
    assert (samples.options.cfg_strength, samples.options.num_steps) == (3.0, 3)
    assert train_callbacks(params, ctx._replace(rank=1)) == []  # samples are rank 0's
    inputs = train_inputs(params)
    assert inputs.empty_string_file == workspace / "ext_weights" / "tiny" / "empty_string.pth"
    assert inputs.empty_string_source == "ext_weights/tiny/empty_string.pth" and inputs.empty_string.shape[0] == 77

    torch.manual_seed(0)
    net = build_network(MICRO, latent_mean=torch.zeros(20), latent_std=torch.ones(20)).eval()
    with torch.no_grad():
        for p in net.parameters():  # the training init zeroes the output: give every path a say
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.arange(1)
    batch = read_rows([TrainSource("s", samples.features)], torch.zeros_like(idx), idx, "16k")
    args = (batch.clip_features, batch.sync_features, batch.text_features, [0])

    def latents(options):
        return sample_latents(net, *args, options, video_exist=batch.video_exist)

    at_3 = latents(samples.options)
    assert torch.equal(at_3, latents(samples.options))
    assert not torch.allclose(at_3, latents(dataclasses.replace(samples.options, cfg_strength=1.0)))
