"""Training throughput of train() on synthetic feature sets (no MLflow): one row per setting.

    python bench/perf/train_throughput.py --network small_16k --batch 64 --steps 40 [--compile] [--no-amp]
    torchrun --standalone --nproc_per_node=2 bench/perf/train_throughput.py --network small_16k --batch 128

Prints network, processes, device, global batch, compile, amp, steady-state samples/s (the mean of the
logged windows after the first, which holds compilation and warm-up) and peak GPU memory.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mmaudio.config import validate  # noqa: E402
from mmaudio.distributed import cleanup_distributed, init_distributed  # noqa: E402
from mmaudio.features import feature_shapes, write_feature_set  # noqa: E402
from mmaudio.model.network import get_network_preset  # noqa: E402


def make_set(path: Path, mode: str, kind: str, rows: int) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn((rows, *shape), generator=g) for k, shape in feature_shapes(mode, kind).items()}
    tensors["std"] = tensors["std"].abs() * 0.1
    write_feature_set(path, mode=mode, kind=kind, ids=[f"r{i}" for i in range(rows)], texts=["x"] * rows, tensors=tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default="small_16k")
    ap.add_argument("--batch", type=int, default=64, help="global batch size")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--work", default=None, help="folder for the synthetic sets (default: a temp folder)")
    args = ap.parse_args()

    import mmaudio.train_stage as train_stage
    import mmaudio.training.train as train_module

    ctx = init_distributed("auto")
    mode = get_network_preset(args.network).mode
    work = Path(args.work or tempfile.mkdtemp(prefix="train_bench_"))
    if ctx.rank == 0 and not (work / "video").exists():
        make_set(work / "video", mode, "video", max(2 * args.batch, 64))
    if ctx.world_size > 1:
        torch.distributed.barrier()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["extract"]["out_dir"] = str(work)
    raw["tracking"]["enabled"] = False  # timing only; the GPU machine need not have mlflow
    raw["train"] = {**copy.deepcopy(raw["train"]), "network": args.network, "datasets": {"video": 1},
                    "val_dataset": None, "global_batch_size": args.batch, "num_iterations": args.steps,
                    "log_interval": 10, "checkpoint_every": 10**9, "val_interval": 10**9, "compile": args.compile,
                    "amp": not args.no_amp, "nproc_per_node": ctx.world_size, "num_audio_samples": 0,
                    # a fresh folder per run: a finished run in the same folder would be resumed, not timed
                    "out_dir": str(work / f"out-{os.environ.get('TORCHELASTIC_RUN_ID') or os.getpid()}"),
                    "ema": {"sigma_rels": [0.05, 0.1], "snapshot_every": 10**9, "output_sigma_rel": 0.05}}
    params = validate(raw)

    rates: list[float] = []
    orig = train_module.TrainLoader.next
    marks: list[float] = []

    def timed_next(self):
        marks.append(time.perf_counter())
        return orig(self)

    train_module.TrainLoader.next = timed_next
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = train_stage.train(params, ctx)
    steady = marks[len(marks) // 4 :]  # skip compilation and warm-up
    if len(steady) > 1:
        rates.append((len(steady) - 1) * args.batch / (steady[-1] - steady[0]))
    if ctx.rank == 0:
        mem = torch.cuda.max_memory_allocated() / 2**30 if ctx.device.type == "cuda" else math.nan
        name = torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu"
        print("| network | processes | device | global batch | compile | amp | samples/s | peak GiB/GPU |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {args.network} | {ctx.world_size} | {name} | {args.batch} | {args.compile} | {not args.no_amp} "
              f"| {rates[0]:.1f} | {mem:.1f} |")
        print(result)
    cleanup_distributed()


if __name__ == "__main__":
    main()
