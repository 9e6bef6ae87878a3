"""Time the full training step of the flow network: ours (several kernel choices) against upstream's.

    python bench/perf/train_step.py --network small_16k --batch 256 [--upstream DIR] [--profile] [--out DIR]
    torchrun --standalone --nproc_per_node=2 bench/perf/train_step.py --batch 512 --variants gemm
    python bench/perf/train_step.py --network large_44k --batch 64 --variants gemm,upstream

One step = what training does per optimizer step, on synthetic features already on the GPU (the loader
is timed by bench/perf/loader.py): draw the step's randomness, the flow-matching loss under bf16 autocast,
backward, grad-norm clipping, fused AdamW, lr schedule, EMA update of two widths. Variants:

    eager     our step without torch.compile, plain kernels (the numerical reference)
    native    compiled; convolutions through cuDNN on transposed views (the code before this bench)
    cl        compiled; convolutions as channels-last conv2d, fused SwiGLU input projections (our default)
    clnf      as cl without the fused SwiGLU input projections
    gemm      compiled; convolutions as im2col matmuls, fused SwiGLU input projections
    <v>+flash our variant <v> with attention forced to the FlashAttention-2 kernel (default: SDPA's choice)
    upstream  upstream's Runner.train_fn compiled as upstream compiles it, its network DDP-wrapped as
              upstream wraps it (also on one GPU), fused AdamW, nitrous_ema PostHocEMA; imported from
              --upstream DIR (needs einops, nitrous_ema, omegaconf importable)

Every variant starts from the same random weights (non-zero adaLN gates, so every layer matters) and
the same random stream; "loss / first" is the first step's loss over that of the first variant listed
(eager by default: the numerical reference; ours draw the randomness in upstream's order, so
upstream's first loss is comparable too). FLOPs come from
torch.utils.flop_counter on one eager forward + backward with the plain kernels (model FLOPs: the
im2col path performs the same multiply-adds); MFU = achieved FLOP/s over the card's dense bf16 peak.
Timings are printed, never asserted. Results go to stdout and, with --out, to DIR/train_step.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import math
import os
import socket
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.parity.common import upstream_package  # noqa: E402
from bench.parity.network import _randomize, _upstream_network  # noqa: E402
from mmaudio.config import validate  # noqa: E402
from mmaudio.modes import mode_spec  # noqa: E402
from mmaudio.model import layers  # noqa: E402
from mmaudio.model.network import build_network, get_network_preset  # noqa: E402
from mmaudio.training.ema import PowerEMA  # noqa: E402
from mmaudio.training.loader import Batch, rank_slice  # noqa: E402
from mmaudio.training.schedule import build_scheduler  # noqa: E402
from mmaudio.training.train import (  # noqa: E402
    FlowObjective,
    build_optimizer,
    configure_cuda_for_training,
    draw_step_noise,
    objective_inputs,
    optimizer_step,
)

# dense bf16 tensor-core peaks (no sparsity), FLOP/s
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
VARIANT_KERNELS = {
    "eager": dict(conv="native", fuse_glu=False),
    "native": dict(conv="native", fuse_glu=False),
    "cl": dict(conv="channels_last", fuse_glu=True),
    "clnf": dict(conv="channels_last", fuse_glu=False),
    "gemm": dict(conv="gemm", fuse_glu=True),
}


@dataclass
class Row:
    variant: str
    ms: float
    samples_per_s: float
    tflops: float
    mfu: float
    peak_gib: float
    loss_ratio: float
    compile_s: float


def peak_flops(name: str) -> float:
    for key, value in PEAK_BF16.items():  # "H100 PCIe" before "H100"
        if key in name:
            return value
    return math.nan


def init_process_group() -> tuple[int, int, torch.device]:
    """torchrun's group if launched by it, else a one-process NCCL group (upstream always wraps its
    network in DDP, which needs one)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    local = int(os.environ["LOCAL_RANK"])
    if not torch.cuda.is_available():  # CPU smoke test (gloo)
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), torch.device("cpu")
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(mode: str, rows: int, device: torch.device, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n, c = mode_spec(mode).latent_shape
    return Batch(
        latent_mean=torch.randn(rows, n, c, generator=g),
        latent_std=torch.rand(rows, n, c, generator=g) * 0.1,
        clip_features=torch.randn(rows, 64, 1024, generator=g),
        sync_features=torch.randn(rows, 192, 768, generator=g),
        text_features=torch.randn(rows, 77, 1024, generator=g),
        video_exist=torch.ones(rows, dtype=torch.bool),
    ).to(device)


@functools.cache
def train_config(network: str, batch: int):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    raw["train"].update(network=network, global_batch_size=batch)
    return validate(raw).train


def reference_state(network: str, seed: int) -> dict[str, torch.Tensor]:
    net = build_network(network)
    _randomize(net, seed)
    return {k: v.clone() for k, v in net.state_dict().items()}


# -- the two steps ---------------------------------------------------------------------------------


def our_step(variant: str, network: str, batch: Batch, global_batch: int, state: dict, world: int, rank: int,
             device: torch.device, seed: int) -> Callable[[], torch.Tensor]:
    layers.set_kernels(**VARIANT_KERNELS[variant.removesuffix("+flash")])
    cfg = train_config(network, global_batch)
    net = build_network(network)
    net.load_state_dict(state)
    net.to(device)
    objective = FlowObjective(net)
    model: torch.nn.Module = objective
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if variant != "eager":
        model = torch.compile(model)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    optimizer = build_optimizer(params, cfg, device.type == "cuda", device)
    scheduler = build_scheduler(optimizer, cfg)
    ema = PowerEMA(trainable, cfg.ema.sigma_rels) if rank == 0 else None
    gen = torch.Generator(device).manual_seed(seed)
    latent_shape = mode_spec(net.preset.mode).latent_shape
    part = rank_slice(global_batch, len(batch), rank)

    def step() -> torch.Tensor:
        noise = draw_step_noise(gen, global_batch, latent_shape, cfg, device)
        loss, _ = optimizer_step(model, objective_inputs(batch, noise.rows(part)), optimizer=optimizer,
                                 scheduler=scheduler, parameters=params, grad_clip=cfg.grad_clip, ema=ema,
                                 amp=device.type == "cuda")
        return loss

    return step


STAND_INS = ("av_bench", "av_bench.evaluate", "av_bench.extract", "mmaudio.model.utils.features_utils",
             "mmaudio.utils.logger", "mmaudio.utils.video_joiner")


@contextlib.contextmanager
def upstream_modules(upstream_dir: str) -> Iterator[None]:
    """While active, ``mmaudio.*`` names are upstream's package (ours is restored on exit). Runner's
    module imports its evaluation, logging and feature-extractor packages at the top; training needs
    none of them, so those imports get empty stand-ins (only ``Runner.train_fn`` is used). The
    upstream variant is compiled and run inside this context: dynamo re-imports the modules of the
    functions it traces by name."""
    stubs = {name: types.ModuleType(name) for name in STAND_INS}
    stubs["av_bench.evaluate"].evaluate = None
    stubs["av_bench.extract"].extract = None
    stubs["mmaudio.model.utils.features_utils"].FeaturesUtils = object
    stubs["mmaudio.utils.logger"].TensorboardLogger = object
    stubs["mmaudio.utils.video_joiner"].VideoJoiner = object
    with upstream_package(upstream_dir, []):
        saved = {k: sys.modules.get(k) for k in stubs}
        sys.modules.update(stubs)
        try:
            yield
        finally:
            for k, m in saved.items():
                if m is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = m


def import_upstream_runner() -> tuple[types.ModuleType, types.ModuleType, type]:
    """Upstream's networks, flow matching and Runner class (call inside ``upstream_modules``)."""
    networks = importlib.import_module("mmaudio.model.networks")
    flow = importlib.import_module("mmaudio.model.flow_matching")
    return networks, flow, importlib.import_module("mmaudio.runner").Runner


def upstream_step(network: str, batch: Batch, global_batch: int, state: dict, rank: int,
                  device: torch.device, seed: int, ema_dir: str) -> Callable[[], torch.Tensor]:
    from nitrous_ema import PostHocEMA

    networks, flow, runner_cls = import_upstream_runner()
    cfg = train_config(network, global_batch)
    preset = get_network_preset(network)
    net = _upstream_network(networks, preset)
    net.load_state_dict(state, strict=True)
    ddp = torch.nn.parallel.DistributedDataParallel(
        net.to(device), device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    holder = types.SimpleNamespace(
        network=ddp, rng=torch.Generator(device).manual_seed(seed), fm=flow.FlowMatching(0.0, inference_mode="euler", num_steps=25),
        log_normal_sampling_mean=cfg.logit_normal_mean, log_normal_sampling_scale=cfg.logit_normal_scale,
        null_condition_probability=cfg.null_condition_probability,
    )
    train_fn = torch.compile(types.MethodType(runner_cls.train_fn, holder))
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=[0.9, 0.95], eps=1e-6, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    ema = PostHocEMA(net, sigma_rels=list(cfg.ema.sigma_rels), update_every=1, checkpoint_every_num_steps=10**9,
                     checkpoint_folder=ema_dir) if rank == 0 else None
    video_exist = batch.video_exist
    text_exist = torch.ones_like(video_exist)

    def step() -> torch.Tensor:
        # upstream's train_pass: a fresh batch each step (train_fn writes into the features in place)
        clip_f, sync_f, text_f = batch.clip_features.clone(), batch.sync_features.clone(), batch.text_features.clone()
        with torch.amp.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            clip_f[~video_exist] = net.empty_clip_feat
            sync_f[~video_exist] = net.empty_sync_feat
            text_f[~text_exist] = net.empty_string_feat
            _, _, mean_loss, _ = train_fn(clip_f, sync_f, text_f, batch.latent_mean, batch.latent_std)
        optimizer.zero_grad(set_to_none=True)
        mean_loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update()
        scheduler.step()
        return mean_loss.detach()

    return step


# -- measurement -----------------------------------------------------------------------------------


def model_flops(network: str, batch: Batch, global_batch: int, state: dict, device: torch.device, seed: int) -> float:
    """FLOPs of one forward + backward of the loss on this rank's rows (plain kernels, eager)."""
    from torch.utils.flop_counter import FlopCounterMode

    layers.set_kernels(conv="native", fuse_glu=False)
    cfg = train_config(network, global_batch)
    net = build_network(network)
    net.load_state_dict(state)
    objective = FlowObjective(net.to(device))
    gen = torch.Generator(device).manual_seed(seed)
    noise = draw_step_noise(gen, len(batch), mode_spec(net.preset.mode).latent_shape, cfg, device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = objective(*objective_inputs(batch, noise)).mean()
        loss.backward()
    del objective, net
    return float(counter.get_total_flops())


def time_steps(step: Callable[[], torch.Tensor], warmup: int, steps: int, device: torch.device) -> tuple[float, float, float]:
    """(first loss, seconds of the warm-up incl. compilation, seconds per steady step)."""
    sync(device)
    t0 = time.perf_counter()
    first = float(step())
    for _ in range(warmup - 1):
        step()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return first, t1 - t0, (time.perf_counter() - t1) / steps


def profile_steps(step: Callable[[], torch.Tensor], steps: int, path: Path | None) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    if path is not None:
        path.write_text(table)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default="small_16k")
    ap.add_argument("--batch", type=int, default=256, help="global batch (per GPU = batch / processes)")
    ap.add_argument("--variants", default="eager,native,cl,gemm,upstream")
    ap.add_argument("--upstream", default=None, help="upstream MMAudio checkout (needed for the 'upstream' variant)")
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eager-steps", type=int, default=3)
    ap.add_argument("--profile", default=None, help="profile this variant for 5 steps after timing it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = True  # both sides, as upstream's train.py sets them
    torch.backends.cudnn.allow_tf32 = True
    configure_cuda_for_training()  # cudnn.benchmark (upstream sets it too); attention without cuDNN SDPA
    rank, world, device = init_process_group()
    out = Path(args.out) if args.out else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    per_rank = args.batch // world
    mode = get_network_preset(args.network).mode
    batch = synthetic_batch(mode, per_rank, device, args.seed + rank)
    state = reference_state(args.network, args.seed)
    flops = model_flops(args.network, batch, args.batch, state, device, args.seed) * world  # all ranks, per step
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_flops(card) * world
    rows: list[Row] = []
    ref_loss = math.nan
    header = (f"{args.network}, global batch {args.batch} ({per_rank}/GPU), {world} x {card}, torch {torch.__version__}, "
              f"model {flops / args.batch / 1e9:.1f} GFLOP/sample (fwd+bwd)")
    if rank == 0:
        print(header, flush=True)
    for variant in args.variants.split(","):
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if variant == "upstream" and not args.upstream:
            raise SystemExit("the 'upstream' variant needs --upstream DIR")
        with tempfile.TemporaryDirectory() as ema_dir, (
            upstream_modules(args.upstream) if variant == "upstream" else contextlib.nullcontext()
        ), (sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if variant.endswith("+flash") else contextlib.nullcontext()):
            if variant == "upstream":
                step = upstream_step(args.network, batch, args.batch, state, rank, device, args.seed, ema_dir)
            else:
                step = our_step(variant, args.network, batch, args.batch, state, world, rank, device, args.seed)
            eager = variant == "eager"
            first, warm_s, sec = time_steps(step, 1 if eager else args.warmup, args.eager_steps if eager else args.steps,
                                            device)
            if math.isnan(ref_loss):
                ref_loss = first
            if args.profile == variant:
                table = profile_steps(step, 5, out / f"profile_{variant}.txt" if out and rank == 0 else None)
                if rank == 0:
                    print(table, flush=True)
            del step
        row = Row(variant, sec * 1e3, args.batch / sec, flops / sec / 1e12, flops / sec / peak,
                  torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan, first / ref_loss, warm_s)
        rows.append(row)
        if rank == 0:
            print(f"{row.variant}: {row.ms:.1f} ms/step, {row.samples_per_s:.1f} samples/s, loss/first {row.loss_ratio:.5f}",
                  flush=True)
    base = {r.variant: r.samples_per_s for r in rows}.get("upstream", math.nan)
    lines = [header, "",
             "| variant | ms/step | samples/s | vs upstream | TFLOP/s | MFU | peak GiB/GPU | loss / first | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.ms:.1f} | {r.samples_per_s:.1f} | {r.samples_per_s / base:.2f}x | {r.tflops:.1f} "
                     f"| {100 * r.mfu:.1f}% | {r.peak_gib:.1f} | {r.loss_ratio:.5f} | {r.compile_s:.0f} |")
    if rank == 0:
        text = "\n".join(lines)
        print(text, flush=True)
        if out is not None:
            with open(out / "train_step.md", "a") as f:
                f.write(text + "\n\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
