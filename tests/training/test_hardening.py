"""Training fails safe: a NaN loss stops the run at its step with the last good checkpoint kept, EMA
snapshots carry a size/hash record, identical runs write identical checkpoint bytes, one run per
output folder, and a torchrun worker dies with its launcher."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmaudio.features import FeatureSet, write_feature_set
from mmaudio.locks import LOCK_NAME, FolderBusyError, exclusive_folder
from mmaudio.training.checkpoint import CheckpointError, list_checkpoints, load_plain_file
from mmaudio.training.ema import PowerEMA, list_snapshots, synthesize_ema
from mmaudio.training.loader import TrainLoader, TrainSource
from mmaudio.train_stage import train
from mmaudio.training.train import NonFiniteLossError
from tests.training.conftest import REPO, synthetic_rows, train_params, train_raw, write_synthetic_set

DRIVER = Path(__file__).with_name("ddp_driver.py")


def _first_step_of_each_audio_row(root: Path, seed: int, steps: int) -> dict[int, int]:
    """Row of syn_audio -> the first optimizer step (1-based) whose batch holds it, from the loader itself."""
    sources = [TrainSource("syn_video", FeatureSet.open(root / "syn_video", mode="16k"), 2),
               TrainSource("syn_audio", FeatureSet.open(root / "syn_audio", mode="16k"), 1)]
    loader = TrainLoader(sources, mode="16k", global_batch_size=8, rank=0, world_size=1, seed=seed,
                         device=torch.device("cpu"))
    first: dict[int, int] = {}
    for s in range(steps):
        src, row = loader.global_rows(*divmod(s, loader.steps_per_epoch))
        for a, b in zip(src.tolist(), row.tolist()):
            if a == 1:
                first.setdefault(b, s + 1)
    return first


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(workspace, tmp_path):
    root = tmp_path / "features"
    write_synthetic_set(root / "syn_video", 24, "video", seed=1)
    write_synthetic_set(root / "syn_val", 6, "video", seed=3)
    ids, texts, tensors = synthetic_rows(12, "audio", seed=2)
    write_feature_set(root / "syn_audio", mode="16k", kind="audio", ids=ids, texts=texts, tensors=tensors)
    seed = train_params(root, tmp_path / "x").train.seed
    first = _first_step_of_each_audio_row(root, seed, 40)
    row, bad_step = max(first.items(), key=lambda kv: kv[1])
    assert bad_step >= 3, first  # room for good checkpoints before it

    # the same rows with one NaN in the poisoned row's latent mean (an upstream extraction gone wrong)
    shutil.rmtree(root / "syn_audio")
    tensors["mean"][row, 17, 3] = float("nan")
    write_feature_set(root / "syn_audio", mode="16k", kind="audio", ids=ids, texts=texts, tensors=tensors)
    out = tmp_path / "out"
    params = train_params(root, out, num_iterations=bad_step + 5, checkpoint_every=1, keep_last=2, log_interval=1)
    with pytest.raises(NonFiniteLossError, match=rf"the loss or gradient norm at step {bad_step} is NaN or inf .*"
                                                 rf"the last good checkpoint is .*ckpt-{bad_step - 1:09d}\.pt "
                                                 rf"\(step {bad_step - 1}\)"):
        train(params)
    ckpt_dir = next((out / "checkpoints").iterdir())
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [bad_step - 2, bad_step - 1]
    last = load_plain_file(list_checkpoints(ckpt_dir)[-1][1])
    assert all(bool(torch.isfinite(v).all()) for v in last["model"].values())
    assert all(bool(torch.isfinite(v).all()) for avg in last["ema"]["averages"] for v in avg.values())
    assert all(s < bad_step for s, _ in list_snapshots(ckpt_dir / "ema"))
    assert not (out / "weights.pth").exists()


def _snapshots(folder: Path) -> list[Path]:
    net = torch.nn.Linear(4, 3)
    ema = PowerEMA(net.named_parameters(), [0.05, 0.1])
    paths = []
    for _ in range(2):
        for _ in range(5):
            with torch.no_grad():
                net.weight.add_(0.1)
            ema.update()
        paths.append(ema.snapshot(folder))
    return paths


def test_ema_snapshots_carry_a_record_and_a_flipped_bit_is_caught(tmp_path):
    paths = _snapshots(tmp_path)
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "ema-000000005.pt", "ema-000000005.pt.sum", "ema-000000010.pt", "ema-000000010.pt.sum"]
    before = synthesize_ema(tmp_path, 0.05).state["weight"]

    data = bytearray(paths[0].read_bytes())
    data[len(data) // 2] ^= 0x04  # one bit, inside the tensor data
    paths[0].write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{paths[0]} has SHA-256 [0-9a-f]{{16}}\.\.\., its record "
                                              r"ema-000000005\.pt\.sum says [0-9a-f]{16}\.\.\.$"):
        synthesize_ema(tmp_path, 0.05)
    assert before.isfinite().all()


def test_ema_snapshot_without_its_record_is_refused(tmp_path):
    paths = _snapshots(tmp_path)
    Path(str(paths[1]) + ".sum").unlink()
    with pytest.raises(CheckpointError, match=rf"^{paths[1]} has no size/hash record ema-000000010\.pt\.sum"):
        synthesize_ema(tmp_path, 0.05)


def test_identical_runs_in_separate_folders_write_identical_checkpoint_bytes(workspace, feature_root, monkeypatch):
    """The MLflow run id (different every run) stays out of the files, so DVC sees one hash."""
    trees = []
    for name in ("a", "b"):
        ws = workspace / name
        ws.mkdir()
        shutil.copy(workspace / "params.yaml", ws / "params.yaml")
        monkeypatch.chdir(ws)
        # relative out_dir: the resolved config stored in a checkpoint is the same in both clones
        result = train(train_params(feature_root, Path("models/train"), num_iterations=10, checkpoint_every=5))
        assert result.run_id is not None  # tracked, so each run has its own id
        ckpt_dir = ws / "models" / "train" / "checkpoints"
        trees.append({p.relative_to(ckpt_dir).as_posix(): p.read_bytes() for p in sorted(ckpt_dir.rglob("*")) if p.is_file()})
    names = sorted(trees[0])
    assert names == sorted(trees[1]) and sum(n.endswith(".pt") for n in names) == 4  # 2 checkpoints, 2 EMA snapshots
    for n in names:
        assert trees[0][n] == trees[1][n], n


def test_a_second_run_on_a_locked_output_folder_names_the_holder(workspace, feature_root, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mmaudio.locks import exclusive_folder\n"
         f"with exclusive_folder({str(out)!r}, 'training run'):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=rf"^{out} is in use by another training run \(pid {holder.pid} on "):
            train(train_params(feature_root, out, num_iterations=2))
        assert not (out / "checkpoints").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    with exclusive_folder(out, "test"):  # released by the kernel when its holder died
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited already
        return f.read().split(")")[-1].split()[0] != "Z"


def test_torchrun_worker_dies_with_its_launcher_and_frees_the_folder(workspace, feature_root):
    """SIGKILL of the launcher's process group (a killed `dvc repro`) must not leave the worker, which
    torchrun starts in a session of its own, training on."""
    raw = train_raw(feature_root, workspace / "out", num_iterations=100_000, checkpoint_every=50)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                 str(DRIVER)], cwd=workspace, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    lock = workspace / "out" / LOCK_NAME
    worker = None
    try:
        deadline = time.monotonic() + 240
        while worker is None and time.monotonic() < deadline and launcher.poll() is None:
            text = lock.read_text() if lock.is_file() else ""
            if text.startswith("pid "):
                worker = int(text.split()[1])
            time.sleep(0.2)
        assert worker is not None and worker != launcher.pid, "the worker never took the folder's lock"
        assert os.getsid(worker) != os.getsid(launcher.pid)  # out of reach of a process-group kill
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 60
        while _pid_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _pid_alive(worker), f"worker {worker} trains on after its launcher was killed"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        if worker is not None and _pid_alive(worker):
            os.kill(worker, signal.SIGKILL)
    # the rerun can start: the lock goes once the worker's last thread has exited (its main thread
    # shows as a zombie a little earlier)
    deadline = time.monotonic() + 60
    while True:
        try:
            with exclusive_folder(workspace / "out", "rerun"):
                break
        except FolderBusyError:
            assert time.monotonic() < deadline, "the killed worker's lock was never released"
            time.sleep(0.2)
