"""Kill drills: SIGKILL the train and extract_audio stages at seeded random moments, restart them each
time, and check that the final outputs equal an uninterrupted run's bit for bit.

    python -m tests.reliability.kill_drills [--train-kills 10] [--extract-kills 5] [--seed 0] [--workdir DIR]

Training runs the real stage entry point (stages/train.py, through tests/training/ddp_driver.py which
only registers the test-size `micro_16k` preset; `--network tiny_16k` uses the registered tiny preset)
as one CPU process on small synthetic feature sets. Kill moments are drawn from a seeded RNG among:
while a checkpoint's temp file exists (mid-write), while its size/hash record's temp file exists,
while an EMA snapshot's temp file exists, during start-up, and after a random delay. Before each
restart the drill computes the newest valid checkpoint itself; the restarted process must log that
it resumed from exactly that step (or started fresh when there is none) and must not have skipped a
damaged checkpoint. Extraction kills stages/extract_audio.py after a random number of finished
shards or at a random delay, 5 times, and compares the final memmap with an uninterrupted run's.

Prints: process | kills tried | kills survived | final equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mmaudio.training.checkpoint import load_latest_checkpoint
from mmaudio.training.run_files import series_path

REPO = Path(__file__).resolve().parents[2]

TRAIN_MODES = ("ckpt_write", "sidecar_write", "ema_write", "startup", "delay")


@dataclass
class DrillResult:
    process: str
    tried: int = 0
    survived: int = 0
    equal: bool = False
    notes: list[str] = field(default_factory=list)


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    return env


def _wait_for(pred, proc: subprocess.Popen, timeout: float, poll: float = 0.0005) -> bool:
    """Poll ``pred`` until true (True), the process ends or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def _tmp_files(folder: Path, pattern: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if re.fullmatch(pattern, e.name)]
    except FileNotFoundError:
        return []


# -- training -------------------------------------------------------------------------------------


def _train_workspace(root: Path, name: str, feature_root: Path, network: str, steps: int) -> Path:
    from tests.training.conftest import train_raw

    ws = root / name
    ws.mkdir(parents=True)
    raw = train_raw(feature_root, ws / "out", network=network, num_iterations=steps, checkpoint_every=4, keep_last=2,
                    log_interval=4, val_interval=8,
                    ema={"sigma_rels": [0.05, 0.1], "snapshot_every": 2, "output_sigma_rel": 0.05})
    raw["tracking"] = {**raw["tracking"], "uri": f"sqlite:///{ws / 'mlflow.db'}"}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return ws


def _train_cmd() -> list[str]:
    return [sys.executable, str(REPO / "tests" / "training" / "ddp_driver.py")]


def _resumed_step(log_text: str) -> int | None:
    m = re.search(r"resumed from \S+ \(step (\d+)\)", log_text)
    return int(m.group(1)) if m else None


def train_drill(root: Path, kills: int, seed: int, network: str, steps: int, timeout: float) -> DrillResult:
    from tests.training.conftest import write_synthetic_set

    res = DrillResult("train")
    features = root / "features"
    write_synthetic_set(features / "syn_video", 24, "video", seed=1)
    write_synthetic_set(features / "syn_audio", 12, "audio", seed=2)
    write_synthetic_set(features / "syn_val", 6, "video", seed=3)

    ref = _train_workspace(root, "train_ref", features, network, steps)
    t0 = time.monotonic()
    out = subprocess.run(_train_cmd(), cwd=ref, env=_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"uninterrupted training failed:\n{out.stderr[-3000:]}")
    ref_seconds = time.monotonic() - t0

    ws = _train_workspace(root, "train_killed", features, network, steps)
    rng = random.Random(seed)
    modes = [TRAIN_MODES[i % len(TRAIN_MODES)] for i in range(kills)]
    rng.shuffle(modes)
    expected: int | None = None  # step the next start must resume from (None: a fresh start)
    logs = ws / "logs"
    logs.mkdir()
    attempt = 0
    prev_killed = False
    seen_tmp: set[str] = set()
    for mode in [*modes, "finish"]:
        attempt += 1
        log_path = logs / f"{attempt:02d}-{mode}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(_train_cmd(), cwd=ws, env=_env(), stdout=subprocess.DEVNULL, stderr=log_file)
        ckpt_root = ws / "out" / "checkpoints"

        def ckpt_dir() -> Path:
            dirs = list(ckpt_root.glob("*")) if ckpt_root.is_dir() else []
            return dirs[0] if dirs else ckpt_root / "none"

        def started() -> bool:
            return "training " in log_path.read_text()

        killed_during = ""
        if mode == "finish":
            proc.wait(timeout=timeout)
        else:
            if mode == "startup":
                time.sleep(rng.uniform(0.5, 4.0))
            else:
                if not _wait_for(started, proc, timeout, poll=0.05):
                    raise RuntimeError(f"{log_path}: the stage ended before training started")
                if mode == "delay":
                    time.sleep(rng.uniform(0.0, ref_seconds * 0.25))
                else:
                    skip = rng.randrange(0, 2)  # let a write pass at times so kills land at different steps
                    if mode == "sidecar_write":
                        # between the checkpoint's rename and its size/hash record's rename (hashing, writing)
                        def pending() -> set[str]:
                            names = set(_tmp_files(ckpt_dir(), r"ckpt-\d{9}\.pt(\.sum)?"))
                            return {n for n in names if not n.endswith(".sum") and f"{n}.sum" not in names}
                    else:
                        pattern = {"ckpt_write": r"\.ckpt-\d{9}\.pt\..*\.tmp", "ema_write": r"\.ema-\d{9}\.pt\..*\.tmp"}[mode]
                        folder = (lambda: ckpt_dir() / "ema") if mode == "ema_write" else ckpt_dir

                        def pending() -> set[str]:
                            return set(_tmp_files(folder(), pattern))
                    # left behind by earlier kills: not a write in progress
                    stale = pending()
                    seen: set[str] = set()
                    while _wait_for(lambda: bool(pending() - stale), proc, timeout):
                        names = pending() - stale
                        if skip == 0 and names:
                            break  # a temp file of this kind exists right now: kill mid-write
                        if names and not names & seen:
                            skip -= 1
                            seen |= names
                        time.sleep(0.0002)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
                res.tried += 1
                # what the kill cut short: new temp files, a checkpoint without its size/hash record
                leftovers = set(_tmp_files(ckpt_dir(), r".*\.tmp") + _tmp_files(ckpt_dir() / "ema", r".*\.tmp"))
                names = set(_tmp_files(ckpt_dir(), r"ckpt-\d{9}\.pt(\.sum)?"))
                unrecorded = sorted(n for n in names if not n.endswith(".sum") and f"{n}.sum" not in names)
                cut = sorted(leftovers - seen_tmp) + [f"{n} (no .sum yet)" for n in unrecorded]
                seen_tmp |= leftovers
                killed_during = f"; cut short: {cut}" if cut else ""
            proc.wait()
        text = log_path.read_text()
        resumed = _resumed_step(text)
        # a start killed before it chose a checkpoint cannot be checked; the next one is
        resumed_right = ("training " not in text and "Traceback" not in text) or resumed == expected
        damaged = "skipping damaged checkpoint" in text
        this_ok = resumed_right and not damaged and (mode != "finish" or proc.returncode == 0)
        if attempt > 1 and prev_killed:
            # the previous kill is survived if this start found the newest valid checkpoint
            res.survived += this_ok
        if not this_ok:
            res.notes.append(f"start {attempt}: resumed from {resumed}, expected {expected}, damaged={damaged}, "
                             f"rc={proc.returncode}\n{text[-2000:]}")
        if mode != "finish":
            prev_killed = killed
            if not killed:
                res.notes.append(f"start {attempt:2d} {mode}: the process ended before the kill moment")
            res.notes.append(f"kill {attempt:2d} {mode:13s} (this start resumed from {expected}){killed_during}")
        found = load_latest_checkpoint(ckpt_dir()) if ckpt_dir().is_dir() else None
        expected = int(found[0]["step"]) if found else None

    a = torch.load(ref / "out" / "weights.pth", weights_only=True)
    w = ws / "out" / "weights.pth"
    b = torch.load(w, weights_only=True) if w.is_file() else {}
    res.equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for series in ("train/loss", "val/loss"):  # the plot files (mmaudio.training.run_files)
        res.equal &= series_path(ref / "out", series).read_text() == series_path(ws / "out", series).read_text()
    return res


# -- extraction -----------------------------------------------------------------------------------


def _extract_project(root: Path, clips: int) -> Path:
    from mmaudio.config import ExtractConfig, load_params
    from mmaudio.encoders.tiny import write_tiny_weights
    from mmaudio.examples import generate_examples
    from mmaudio.partition import CLIP_COLUMNS, partition_folder
    from mmaudio.tables import write_rejects, write_tsv

    proj = root / "extract"
    ex = proj / "examples"
    generate_examples(ex, seed=0)
    write_tiny_weights(proj / "ext_weights" / "tiny", seed=0)
    part = partition_folder(ex / "audio", load_params(root=REPO).partition)
    # many offset clips of the example files: enough shards to kill between
    many = [{"id": f"{c['name']}_m{k:02d}", "name": c["name"], "start_sample": int(c["start_sample"]) + 100 * k,
             "end_sample": int(c["end_sample"])} for k, c in zip(range(clips), part.clips * 8)]
    write_tsv(proj / "many.tsv", CLIP_COLUMNS, many)
    write_rejects(proj / "none.tsv", [])
    params = {
        "profile": "tiny",
        "audio_datasets": {"many": {"media_dir": str(ex / "audio"), "captions_tsv": str(ex / "audio_captions.tsv"),
                                    "clips_tsv": str(proj / "many.tsv"), "rejects_tsv": str(proj / "none.tsv")}},
        "extract": {**dataclasses.asdict(ExtractConfig()), "device": "cpu", "num_workers": 0, "batch_size": 2,
                    "shard_size": 2, "out_dir": "features"},
        "tracking": {"uri": f"sqlite:///{proj / 'mlflow.db'}", "experiment": "drill"},
    }
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return proj


def extract_drill(root: Path, kills: int, seed: int, clips: int, timeout: float) -> DrillResult:
    from mmaudio.extraction.shards import work_dir_for
    from mmaudio.features import FeatureSet

    res = DrillResult("extract_audio")
    proj = _extract_project(root, clips)
    cmd = [sys.executable, str(REPO / "stages" / "extract_audio.py"), "--dataset", "many"]
    out = subprocess.run([*cmd, "extract.out_dir=ref"], cwd=proj, env=_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"uninterrupted extraction failed:\n{out.stderr[-3000:]}")
    work = work_dir_for(proj / "killed" / "many")
    rng = random.Random(seed + 1)
    num_shards = -(-clips // 2)
    done_at_kill: int | None = None
    for attempt in range(1, kills + 2):
        log_path = proj / f"extract-{attempt:02d}.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen([*cmd, "extract.out_dir=killed"], cwd=proj, env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=log_file)
        last = attempt == kills + 1
        if not last:
            done_before = len(list(work.glob("shard-*.json")))
            if rng.random() < 0.4:  # while a shard's tensor file is being written
                how = "mid-write"
                # a new temp file: earlier kills leave theirs behind (the next finished run deletes the folder)
                stale = set(_tmp_files(work, r"\.shard-\d{5}\.pt\..*\.tmp"))
                _wait_for(lambda: bool(set(_tmp_files(work, r"\.shard-\d{5}\.pt\..*\.tmp")) - stale), proc, timeout)
            else:  # after 1..3 more finished shards
                target = min(done_before + rng.randint(1, 3), num_shards - 1)
                how = f"after shard {target}"
                _wait_for(lambda: len(list(work.glob("shard-*.json"))) >= target, proc, timeout, poll=0.002)
        else:
            proc.wait(timeout=timeout)
        if not last and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            res.tried += 1
        proc.wait()
        text = log_path.read_text()
        if done_at_kill is not None:
            # this start follows a kill: it must reuse every shard finished before it and raise nothing
            m = re.search(r"rank 0: (\d+) of its \d+ shards are already done", text)
            reused = int(m.group(1)) if m else 0
            if "Traceback" not in text and reused == done_at_kill and (not last or proc.returncode == 0):
                res.survived += 1
            else:
                res.notes.append(f"start {attempt}: reused {reused} shards, {done_at_kill} were done; rc={proc.returncode}\n"
                                 + text[-2000:])
        if not last:
            done_at_kill = len(list(work.glob("shard-*.json")))
            res.notes.append(f"kill {attempt} {how}: {done_at_kill} finished shards")
    a = FeatureSet.open(proj / "ref" / "many")
    killed = proj / "killed" / "many"
    if killed.is_dir():
        b = FeatureSet.open(killed)
        res.equal = a.ids == b.ids and a.texts == b.texts and all(torch.equal(a.td[k][:], b.td[k][:]) for k in a.td.keys())
        res.equal &= (a.path / "rejects.tsv").read_text() == (b.path / "rejects.tsv").read_text()
    return res


def print_table(results: list[DrillResult]) -> str:
    lines = [f"{'process':15s} | kills tried | kills survived | final equal",
             f"{'-' * 15}-+-------------+----------------+------------"]
    lines += [f"{r.process:15s} | {r.tried:11d} | {r.survived:14d} | {'yes' if r.equal else 'no'}" for r in results]
    return "\n".join(lines)


def main(argv=None) -> list[DrillResult]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-kills", type=int, default=10)
    ap.add_argument("--extract-kills", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100, help="training steps")
    ap.add_argument("--clips", type=int, default=24, help="extraction rows (2 per shard)")
    ap.add_argument("--network", default="micro_16k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per process")
    ap.add_argument("--workdir", type=Path, default=None, help="kept after the run (default: a temp folder, removed)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="kill_drills_"))
    results = []
    try:
        if args.train_kills >= 0:
            results.append(train_drill(root / "t", args.train_kills, args.seed, args.network, args.steps, args.timeout))
        if args.extract_kills >= 0:
            results.append(extract_drill(root / "e", args.extract_kills, args.seed, args.clips, args.timeout))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    for r in results:
        if args.verbose or r.survived < r.tried or not r.equal:
            print(f"# {r.process}:\n" + "\n".join(f"#   {n}" for n in r.notes))
    print(print_table(results))
    return results


if __name__ == "__main__":
    rs = main()
    sys.exit(0 if all(r.equal and r.survived == r.tried for r in rs) else 1)
