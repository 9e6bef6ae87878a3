"""Training of the flow network: DDP over 1..N processes, flow matching with classifier-free dropout,
post-hoc EMA, exact resume from the latest checkpoint, tracked in MLflow on rank 0.

    result = train(load_params(["train.num_iterations=100"]))     # one process, in Python
    torchrun --standalone --nproc_per_node=2 stages/train.py      # the stage calls train(params, ctx)

One optimizer step, for a global batch of B rows split over G processes (b = B / G rows each):

1. the loader reads this rank's b rows (VAE posterior mean/std, CLIP, sync and text features);
2. a generator seeded the same on every rank draws the step's randomness for all B rows, in
   upstream's order: posterior noise, t ~ logit-normal, x0 ~ N(0, I), video dropout, text dropout;
   each rank keeps its b rows. So the numbers do not depend on G (a test compares 1 and 2
   processes), for the price of every rank drawing B rows of noise, which is cheap next to the
   network;
3. x1 = normalize(mean + std * noise); the video features of audio-only rows, and of rows whose
   video is dropped (probability p, CLIP and sync together), and dropped texts (probability p,
   independently) are swapped for the network's empty features;
4. per-sample flow-matching loss at x_t, mean over the rank's rows; DDP averages the gradients over
   ranks (= the mean over the global batch); the global grad norm is clipped; AdamW; the lr
   schedule; the EMA (rank 0).

Files under ``train.out_dir``:

    checkpoints/<run_key>/ckpt-<step>.pt   the last ``keep_last`` checkpoints (a persistent DVC out)
    checkpoints/<run_key>/ema/ema-<step>.pt  EMA snapshots, every ``ema.snapshot_every`` steps and at the end
    weights.pth          EMA synthesised at ``ema.output_sigma_rel``, in the official mmaudio_*.pth format
    metrics.json         final loss, val loss, steps (DVC metrics)
    loss.tsv             step, loss, val_loss (DVC plot)
    mlflow_run_id.txt    the MLflow run and the SHA-256 of the weights.pth it made, for the evaluation stage

``run_key`` hashes everything that decides the numbers: the train config except bookkeeping keys
(``RESUME_NEUTRAL_KEYS``), the content hashes of the inputs and the training/model code. A run
resumes only from checkpoints of its own key, so changing a param or the data starts a fresh run
(in its own folder) instead of silently continuing another one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mmaudio.config import ConfigError, Params, TrainConfig, find_repo_root
from mmaudio.distributed import DistContext, barrier, resolve_device
from mmaudio.features import LATENT_SHAPES, FeatureSet
from mmaudio.locks import exclusive_folder
from mmaudio.model.flow_matching import flow_matching_loss, interpolate, sample_logit_normal_t, sample_noise_like
from mmaudio.model.network import MMAudioNetwork, NetworkPreset, build_network, get_network_preset, load_network_weights
from mmaudio.tables import write_tsv
from mmaudio.tracking import RUN_ID_FILE, StageRun, redact_credentials, relpath, write_run_id_file
from mmaudio.training.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    load_plain_file,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from mmaudio.training.ema import PowerEMA, list_snapshots, remove_snapshots_after, synthesize_ema
from mmaudio.training.loader import Batch, TrainLoader, TrainSource, latent_stats, rank_slice, val_batches
from mmaudio.training.samples import AudioSampler
from mmaudio.training.schedule import build_scheduler
from mmaudio.weights import load_state_dict_strict, save_weight_file

log = logging.getLogger(__name__)

STAGE = "train"
# Keys that change how a run is carried out or recorded, not the numbers it produces: a run resumes
# across changes of these.
RESUME_NEUTRAL_KEYS = frozenset(
    {"checkpoint_every", "keep_last", "val_interval", "eval_interval", "log_interval", "nproc_per_node", "prefetch",
     "compile",
     "device", "out_dir", "ema.snapshot_every", "ema.output_sigma_rel"}
)
# Code whose change changes the numbers: part of the run key.
CODE_GLOBS = ("training/*.py", "model/*.py", "features.py")
VAL_SEED_OFFSET = 7_919  # the validation generator's seed is train.seed + this, reset every pass


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    loss: float  # mean training loss of the last logged window (nan if nothing was logged)
    val_loss: float | None  # last validation loss
    weights: Path | None  # exported EMA weights (None when halted early or on ranks other than 0)
    checkpoint_dir: Path
    run_id: str | None  # MLflow run (rank 0)
    history: list[list[float]]  # [step, loss, val_loss] rows (nan where not measured)
    resumed_from: int | None  # step of the checkpoint this execution resumed from
    halted: bool = False


def per_rank_batch_size(global_batch_size: int, world_size: int) -> int:
    if global_batch_size % world_size:
        raise ConfigError(
            f"key 'train.global_batch_size' ({global_batch_size}) must be divisible by the number of "
            f"processes ({world_size})"
        )
    return global_batch_size // world_size


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's implicit torch RNG (DiT's choice: distinct per rank, derived from the global seed)."""
    return seed * 65_537 + rank


# -- data ------------------------------------------------------------------------------------------


def feature_dir(params: Params, name: str) -> Path:
    return Path(params.extract.out_dir) / name


def open_training_sets(params: Params, mode: str) -> tuple[list[TrainSource], FeatureSet | None]:
    """The training mix (``train.datasets``) and the validation set, checked against ``mode``."""
    cfg = params.train
    if not cfg.datasets:
        raise ConfigError("key 'train.datasets' is empty: name at least one feature set to train on")
    sources = [TrainSource(name, FeatureSet.open(feature_dir(params, name), mode=mode), repeat)
               for name, repeat in cfg.datasets.items()]
    for s in sources:
        if len(s.features) == 0:
            raise ConfigError(f"key 'train.datasets.{s.name}': feature set {s.features.path} has no rows")
    val = FeatureSet.open(feature_dir(params, cfg.val_dataset), mode=mode) if cfg.val_dataset else None
    return sources, val


def latent_stats_source(cfg: TrainConfig, sources: list[TrainSource]) -> TrainSource:
    """``train.latent_stats_dataset``, else the first video set (upstream: VGGSound), else the first set."""
    if cfg.latent_stats_dataset is not None:
        return next(s for s in sources if s.name == cfg.latent_stats_dataset)
    return next((s for s in sources if s.is_video), sources[0])


def empty_string_path(params: Params) -> Path | None:
    """The file of the empty-string text features: ``train.empty_string``, else the weight profile's
    ``empty_string.pth``. A missing file is an error, except the tiny profile's (None: zeros), so that
    training on features made elsewhere needs no encoder weights."""
    from mmaudio.encoders.profiles import EMPTY_STRING_FILE, get_profile, resolve_weight

    if params.train.empty_string:
        path = Path(params.train.empty_string)
        if not path.is_file():
            raise FileNotFoundError(f"key 'train.empty_string': empty-string feature file {path} not found")
        return path
    found = resolve_weight(params.profile, EMPTY_STRING_FILE, root=find_repo_root())
    if found is None and params.profile != "tiny":
        raise FileNotFoundError(
            f"the '{params.profile}' profile's {get_profile(params.profile).root}/{EMPTY_STRING_FILE} is missing "
            "(or set train.empty_string)"
        )
    return found


def empty_string_features(params: Params) -> tuple[torch.Tensor | None, str]:
    """(77, 1024) text features of '' for the network's null text (None: zeros), and their source."""
    path = empty_string_path(params)
    if path is None:
        log.warning("the tiny profile's empty_string.pth is missing: the null text condition starts from zeros")
        return None, "zeros"
    from mmaudio.encoders.clip import load_empty_string  # open_clip is imported only when needed

    return load_empty_string(path), relpath(path, find_repo_root())


# -- the loss as a module, so DDP and torch.compile see one forward ---------------------------------


class FlowObjective(nn.Module):
    """Per-sample flow-matching loss of the network on one batch (B,), given the step's randomness."""

    def __init__(self, net: MMAudioNetwork):
        super().__init__()
        self.net = net

    def forward(
        self,
        latent_mean: torch.Tensor,  # (B, N, C)
        latent_std: torch.Tensor,  # (B, N, C)
        latent_noise: torch.Tensor,  # (B, N, C)
        clip_f: torch.Tensor,  # (B, 64, 1024)
        sync_f: torch.Tensor,  # (B, 192, 768)
        text_f: torch.Tensor,  # (B, 77, 1024)
        t: torch.Tensor,  # (B,)
        x0: torch.Tensor,  # (B, N, C)
        null_video: torch.Tensor,  # (B,) bool
        null_text: torch.Tensor,  # (B,) bool
    ) -> torch.Tensor:
        x1 = self.net.normalize(latent_mean + latent_std * latent_noise)  # a sample of the VAE posterior
        xt = interpolate(x0, x1, t)
        clip_f, sync_f, text_f = self.net.replace_with_empty(
            clip_f, sync_f, text_f, null_video=null_video, null_text=null_text
        )
        v = self.net(xt, clip_f, sync_f, text_f, t)
        return flow_matching_loss(v, x0, x1)  # (B,)


@dataclass
class StepNoise:
    latent: torch.Tensor  # (B, N, C) posterior noise
    t: torch.Tensor  # (B,)
    x0: torch.Tensor  # (B, N, C)
    drop_video: torch.Tensor  # (B,) bool
    drop_text: torch.Tensor  # (B,) bool

    def rows(self, part: slice) -> "StepNoise":
        return StepNoise(*(getattr(self, f.name)[part] for f in dataclasses.fields(self)))


def draw_step_noise(
    gen: torch.Generator, batch_rows: int, latent_shape: tuple[int, int], cfg: TrainConfig, device: torch.device
) -> StepNoise:
    """The randomness of one global batch, in upstream's draw order."""
    latent = sample_noise_like(torch.empty(batch_rows, *latent_shape, device=device), generator=gen)
    t = sample_logit_normal_t(
        batch_rows, generator=gen, mean=cfg.logit_normal_mean, scale=cfg.logit_normal_scale, device=device
    )
    x0 = sample_noise_like(latent, generator=gen)
    p = cfg.null_condition_probability
    drop_video = torch.rand(batch_rows, generator=gen, device=device) < p
    drop_text = torch.rand(batch_rows, generator=gen, device=device) < p
    return StepNoise(latent, t, x0, drop_video, drop_text)


def objective_inputs(batch: Batch, noise: StepNoise) -> tuple[torch.Tensor, ...]:
    return (
        batch.latent_mean, batch.latent_std, noise.latent, batch.clip_features, batch.sync_features,
        batch.text_features, noise.t, noise.x0, noise.drop_video | ~batch.video_exist, noise.drop_text,
    )


def optimizer_step(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parameters: list[torch.Tensor],
    grad_clip: float,
    ema: PowerEMA | None,
    amp: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: the mean loss of the rank's rows, backward (DDP averages the gradients
    across ranks), global grad-norm clipping, AdamW, the lr schedule and the EMA update.

    Returns (loss, grad_norm) as 0-dim device tensors: nothing here waits for the GPU, so the host
    runs ahead and queues the next step's work (bench/train_step.py times exactly this function).
    """
    device_type = inputs[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        loss = model(*inputs).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip, foreach=True)
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update()
    return loss.detach(), grad_norm.detach()


def configure_cuda_for_training() -> None:
    """Process-wide CUDA settings of the training step (bench/train_step.py applies the same).

    cudnn.benchmark: the shapes are fixed every step, so cuDNN may time its kernels once and keep the
    fastest. cuDNN attention is switched off: on an H100 with torch 2.11 its backward gave gradients of
    the attention-side parameters (q/k norm gains, the last joint block's CLIP adaLN) up to 0.9 off in
    relative terms, where the FlashAttention, memory-efficient and explicitly selected cuDNN kernels
    stay at bf16 noise (<0.09) against float32 (tests/model/test_kernels.py, GPU tier). FlashAttention
    is as fast here (bench/RESULTS.md: 143.1 vs 142.8 ms per small_16k step).
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.enable_cudnn_sdp(False)


def build_optimizer(parameters: list[torch.Tensor], cfg: TrainConfig, amp: bool, device: torch.device) -> torch.optim.AdamW:
    """AdamW as upstream configures it (betas 0.9/0.95, eps 1e-6 under bf16), fused on GPU."""
    return torch.optim.AdamW(
        parameters, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-6 if amp else 1e-8,
        weight_decay=cfg.weight_decay, fused=device.type == "cuda",
    )


# -- run identity ----------------------------------------------------------------------------------


def code_digest() -> str:
    root = Path(__file__).resolve().parents[1]  # the mmaudio package
    h = hashlib.sha256()
    for pattern in CODE_GLOBS:
        for p in sorted(root.glob(pattern)):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run_key(cfg: TrainConfig, input_hashes: Mapping[str, str]) -> str:
    """Short hash of what decides a run's numbers (see the module docstring)."""
    from mmaudio.config import to_flat_dict

    flat = {k: v for k, v in to_flat_dict(cfg).items() if k not in RESUME_NEUTRAL_KEYS}
    # the order of train.datasets lays out the epoch (and picks the latent-stats set): keep it
    flat["datasets.order"] = list(cfg.datasets)
    doc = json.dumps({"train": flat, "inputs": dict(sorted(input_hashes.items())), "code": code_digest()},
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _broadcast(obj: Any, ctx: DistContext) -> Any:
    if ctx.world_size == 1 or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def _gather(obj: Any, ctx: DistContext) -> list[Any]:
    if ctx.world_size == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.all_reduce(t)
    return t


# -- validation ------------------------------------------------------------------------------------


@torch.no_grad()
def validation_loss(
    objective: FlowObjective, val: FeatureSet, cfg: TrainConfig, ctx: DistContext, mode: str, amp: bool
) -> float:
    """Mean per-sample loss over the validation set, with upstream's dropout and a generator reset to
    the same seed every pass, so values at different steps are comparable. Sharded over ranks."""
    was_training = objective.training
    objective.eval()
    gen = torch.Generator(ctx.device).manual_seed(cfg.seed + VAL_SEED_OFFSET)
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (loss sum, rows)
    for rows, part, batch in val_batches(
        val, mode=mode, global_batch_size=cfg.global_batch_size, rank=ctx.rank, world_size=ctx.world_size
    ):
        noise = draw_step_noise(gen, rows, LATENT_SHAPES[mode], cfg, ctx.device)  # drawn for every row on every rank
        if batch is None:
            continue
        batch = batch.to(ctx.device)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = objective(*objective_inputs(batch, noise.rows(part)))
        total[0] += loss.double().sum()
        total[1] += loss.shape[0]
    _all_reduce_sum(total, ctx)
    objective.train(was_training)
    return float(total[0] / total[1])


# -- the run ---------------------------------------------------------------------------------------


def _preset(name: str) -> NetworkPreset:
    try:
        return get_network_preset(name)
    except KeyError as e:
        raise ConfigError(f"key 'train.network': {e.args[0]}") from e


def _build_network(
    params: Params, preset: NetworkPreset, sources: list[TrainSource], resuming: bool, ctx: DistContext
) -> tuple[MMAudioNetwork, dict[str, str]]:
    """The network on CPU with its init drawn from train.seed; notes on where its fixed tensors came from."""
    cfg = params.train
    notes: dict[str, str] = {}
    torch.manual_seed(cfg.seed)  # the same init on every rank (DDP also broadcasts rank 0's)
    if resuming:
        return build_network(preset), {"train.init": "checkpoint"}
    if cfg.weights:
        net = build_network(preset)
        load_network_weights(net, cfg.weights)  # strict; brings its own latent stats and empty string
        return net, {"train.init": f"weights {cfg.weights}"}
    stats = None
    if ctx.rank == 0:
        src = latent_stats_source(cfg, sources)
        stats = latent_stats(src.features)
        notes["train.latent_stats_dataset"] = src.name
    stats = _broadcast(stats, ctx)
    empty, empty_source = empty_string_features(params)
    notes.update({"train.init": "random", "train.empty_string": empty_source})
    return build_network(preset, latent_mean=stats[0], latent_std=stats[1], empty_string_feat=empty), notes


def train(params: Params, ctx: DistContext | None = None, *, halt_after_step: int | None = None) -> TrainResult:
    """Train (or resume training) the flow network as ``params.train`` says; see the module docstring.

    ``ctx`` is the process's place in the process group (``init_distributed()``); None means one
    process on ``train.device``. ``halt_after_step`` stops right after that step as if the process
    were killed (no final checkpoint, no export): for resume tests.
    """
    cfg = params.train
    if ctx is None:
        ctx = DistContext(0, 1, 0, resolve_device(cfg.device))
    per_rank = per_rank_batch_size(cfg.global_batch_size, ctx.world_size)
    preset = _preset(cfg.network)
    mode = preset.mode
    latent_shape = LATENT_SHAPES[mode]
    amp = cfg.amp and ctx.device.type == "cuda"
    sources, val = open_training_sets(params, mode)
    loader = TrainLoader(
        sources, mode=mode, global_batch_size=cfg.global_batch_size, rank=ctx.rank, world_size=ctx.world_size,
        seed=cfg.seed, device=ctx.device, prefetch=cfg.prefetch,
    )
    inputs = [s.features.path for s in sources] + ([val.path] if val is not None else [])
    if cfg.weights:
        inputs.append(Path(cfg.weights))
    elif (empty := empty_string_path(params)) is not None:
        inputs.append(empty)
    out_dir = Path(cfg.out_dir)
    derived = {
        "train.world_size": ctx.world_size,
        "train.per_rank_batch_size": per_rank,
        "train.steps_per_epoch": loader.steps_per_epoch,
        "train.rows_per_epoch": loader.num_rows,
    }

    # one run per output folder (rank 0 holds it for all): the lock goes when the process does
    lock = exclusive_folder(out_dir, "training run") if ctx.rank == 0 else contextlib.nullcontext()
    with lock, StageRun(STAGE, params, inputs=inputs, rank=ctx.rank, extra_params=derived) as run:
        key = _broadcast(run_key(cfg, run.hashes) if ctx.rank == 0 else None, ctx)
        ckpt_dir = out_dir / "checkpoints" / key
        ema_dir = ckpt_dir / "ema"
        # rank 0 picks the checkpoint (skipping damaged ones), the others read the same file
        found = load_latest_checkpoint(ckpt_dir) if ctx.rank == 0 else None
        ckpt_path = _broadcast(str(found[1]) if found else None, ctx)
        if ctx.rank == 0:
            ckpt = found[0] if found else None
        else:
            ckpt = load_plain_file(ckpt_path) if ckpt_path else None

        net, notes = _build_network(params, preset, sources, ckpt is not None, ctx)
        trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        run.log_params({"train.run_key": key, "train.num_parameters": sum(p.numel() for _, p in trainable)})
        run.set_tags(notes)

        net.to(ctx.device)
        if ctx.device.type == "cuda":
            configure_cuda_for_training()
        objective = FlowObjective(net)
        model: nn.Module = objective
        if ctx.world_size > 1:
            # broadcast_buffers off: the only buffers are RoPE tables and frequencies computed from the config
            model = DDP(objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                        broadcast_buffers=False)
        if cfg.compile:
            model = torch.compile(model)

        optimizer = build_optimizer([p for _, p in trainable], cfg, amp, ctx.device)
        scheduler = build_scheduler(optimizer, cfg)
        ema = PowerEMA(trainable, cfg.ema.sigma_rels) if ctx.rank == 0 else None
        sampler = None
        if ctx.rank == 0:
            sampler = AudioSampler(params, val if val is not None else sources[0].features, cfg.num_audio_samples,
                                   ctx.device, run)
        evaluation = None
        if cfg.eval_interval > 0:
            from mmaudio.evaluation.evaluate import TrainingEvaluation  # sampling/scoring code only when asked

            evaluation = TrainingEvaluation(params, run, ctx)
        gen = torch.Generator(ctx.device).manual_seed(cfg.seed)  # the same stream on every rank
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))

        step, history, resumed_from = 0, [], None
        window = {"loss": 0.0, "grad": 0.0, "steps": 0}  # this rank's sums since the last logged row
        if ckpt is not None:
            source = str(ckpt_path)
            load_state_dict_strict(net, ckpt["model"], source=source)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            loader.load_state_dict(ckpt["loader"], source=source)
            ranks = ckpt["ranks"]
            if len(ranks) != ctx.world_size:
                log.warning("%s was written by %d processes, resuming with %d: per-process RNG states and "
                            "metric windows restart", source, len(ranks), ctx.world_size)
            mine = ranks[ctx.rank] if ctx.rank < len(ranks) else ranks[0]
            restore_rng_states(mine["rng"], {"step": gen}, source)
            if len(ranks) == ctx.world_size:
                window = mine["window"]
            if ema is not None:
                ema.load_state_dict(ckpt["ema"], source=source)
                removed = remove_snapshots_after(ema_dir, int(ckpt["step"]))
                if removed:
                    log.info("removed %d EMA snapshots newer than the checkpoint", len(removed))
            step = resumed_from = int(ckpt["step"])
            history = [list(map(float, row)) for row in ckpt["history"]]
            log.info("resumed from %s (step %d)", source, step)
            # the run that wrote the checkpoint is found by the same train.run_key param: the file itself
            # carries no run id, so identical runs write identical bytes (one DVC hash)
            run.set_tags({"train.resumed_from_step": step})
            del ckpt
        log.info(
            "training %s (%d trainable parameters) on %d process(es), %s: %d rows per epoch, global batch %d "
            "(%d per process), %d steps from %d; checkpoints in %s",
            preset.name, sum(p.numel() for _, p in trainable), ctx.world_size, ctx.device, loader.num_rows,
            cfg.global_batch_size, per_rank, cfg.num_iterations, step, ckpt_dir,
        )

        def checkpoint_now() -> None:
            mine = {"rng": rng_states({"step": gen}),
                    "window": {"loss": float(window_loss), "grad": float(window_grad), "steps": window_steps}}
            ranks = _gather(mine, ctx)
            if ctx.rank == 0:
                state = {
                    "step": step,
                    "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loader": loader.state_dict(),
                    "ranks": ranks,  # per process: RNG states, metric window
                    "history": history,
                    "config": checkpoint_config(params),
                    "run_key": key,
                }
                path = save_checkpoint(ckpt_dir, state, cfg.keep_last)
                log.info("checkpoint %s", path)
            barrier()

        val_loss: float | None = None
        # float32 sums on the device: no host sync per step; exact through a checkpoint (float64 there)
        window_loss = torch.tensor(window["loss"], dtype=torch.float32, device=ctx.device)
        window_grad = torch.tensor(window["grad"], dtype=torch.float32, device=ctx.device)
        window_steps, window_start = int(window["steps"]), time.perf_counter()
        last_loss = math.nan
        parameters = [p for _, p in trainable]
        # the first step whose loss or grad norm was NaN/inf (0: none), kept on the device
        first_bad = torch.zeros((), dtype=torch.int64, device=ctx.device)
        check_every = [cfg.log_interval, cfg.checkpoint_every, cfg.ema.snapshot_every]
        if val is not None or sampler is not None:
            check_every.append(cfg.val_interval)
        if evaluation is not None:
            check_every.append(cfg.eval_interval)
        objective.train()
        while step < cfg.num_iterations:
            batch = loader.next()
            noise = draw_step_noise(gen, cfg.global_batch_size, latent_shape, cfg, ctx.device)
            part = rank_slice(cfg.global_batch_size, per_rank, ctx.rank)
            lr = optimizer.param_groups[0]["lr"]
            loss, grad_norm = optimizer_step(
                model, objective_inputs(batch, noise.rows(part)), optimizer=optimizer, scheduler=scheduler,
                parameters=parameters, grad_clip=cfg.grad_clip, ema=ema, amp=amp,
            )
            step += 1
            window_loss += loss
            window_grad += grad_norm
            window_steps += 1
            final = step == cfg.num_iterations
            first_bad.masked_fill_((first_bad == 0) & ~(torch.isfinite(loss) & torch.isfinite(grad_norm)), step)
            if final or any(step % every == 0 for every in check_every):
                # before anything is logged or saved: a NaN must never reach a checkpoint or an EMA snapshot
                stop_if_not_finite(first_bad, ctx, ckpt_dir)

            if step % cfg.log_interval == 0 or final:
                sums = _all_reduce_sum(torch.stack([window_loss, window_grad]).double(), ctx)
                elapsed = time.perf_counter() - window_start
                last_loss = float(sums[0]) / (window_steps * ctx.world_size)
                metrics = {
                    "loss": last_loss,
                    "grad_norm": float(sums[1]) / (window_steps * ctx.world_size),
                    "lr": lr,
                    "samples_per_sec": window_steps * cfg.global_batch_size / max(elapsed, 1e-9),
                    "epoch": loader.epoch + loader.step_in_epoch / loader.steps_per_epoch,
                }
                run.log_metrics(metrics, step=step)
                history.append([float(step), last_loss, math.nan])
                log.info("step %d/%d loss %.4f grad %.3f lr %.3g %.1f samples/s", step, cfg.num_iterations,
                         last_loss, metrics["grad_norm"], lr, metrics["samples_per_sec"])
                window_loss.zero_()
                window_grad.zero_()
                window_steps, window_start = 0, time.perf_counter()

            if val is not None and (step % cfg.val_interval == 0 or final):
                val_loss = validation_loss(objective, val, cfg, ctx, mode, amp)
                run.log_metrics({"val_loss": val_loss}, step=step)
                if history and history[-1][0] == step:
                    history[-1][2] = val_loss
                else:
                    history.append([float(step), math.nan, val_loss])
                log.info("step %d val_loss %.4f", step, val_loss)
            if sampler is not None and (step % cfg.val_interval == 0 or final):
                sampler(net, step)  # its own generator: the training stream is untouched
            if evaluation is not None and (step % cfg.eval_interval == 0 or final):
                evaluation(net, step)  # every rank samples its shard; rank 0 scores and logs eval/<metric>

            if ema is not None and (step % cfg.ema.snapshot_every == 0 or final):
                ema.snapshot(ema_dir)
            if step % cfg.checkpoint_every == 0 or final:
                checkpoint_now()
            if halt_after_step is not None and step == halt_after_step and not final:
                loader.close()
                return TrainResult(step, last_loss, val_loss, None, ckpt_dir, run.run_id, history, resumed_from, True)
        loader.close()

        if val is not None and val_loss is None:
            val_loss = next((row[2] for row in reversed(history) if not math.isnan(row[2])), None)
        if math.isnan(last_loss):
            last_loss = next((row[1] for row in reversed(history) if not math.isnan(row[1])), math.nan)
        weights_path = None
        if ctx.rank == 0:
            weights_path = export_ema_weights(net, ema_dir, cfg, out_dir / "weights.pth", run)
            write_run_files(out_dir, history, last_loss, val_loss, step, run.run_id, weights_path)
            run.log_outputs([weights_path])
            run.log_artifact(out_dir / "loss.tsv")
        barrier()
        return TrainResult(step, last_loss, val_loss, weights_path, ckpt_dir, run.run_id, history, resumed_from)


class NonFiniteLossError(RuntimeError):
    """The training loss or gradient norm became NaN or inf; the message names the step."""


def stop_if_not_finite(first_bad: torch.Tensor, ctx: DistContext, ckpt_dir: Path) -> None:
    """Raise on every rank if any rank saw a non-finite loss or gradient norm (``first_bad`` > 0).

    The flag lives on the device and is read only here, at the steps where something is logged or
    saved, so the loop does not wait for the GPU every step."""
    never = torch.iinfo(torch.int64).max
    bad = torch.where(first_bad > 0, first_bad, torch.full_like(first_bad, never))
    if ctx.world_size > 1 and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MIN)
    step = int(bad)
    if step == never:
        return
    kept = list_checkpoints(ckpt_dir)
    last = f"the last good checkpoint is {kept[-1][1]} (step {kept[-1][0]})" if kept else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"training stopped: the loss or gradient norm at step {step} is NaN or inf (check the data, "
        f"train.learning_rate and train.grad_clip); {last}; nothing from that step on was saved and weights.pth "
        "was not exported"
    )


def export_ema_weights(net: MMAudioNetwork, ema_dir: Path, cfg: TrainConfig, path: Path, run: StageRun) -> Path:
    """Synthesise the EMA of width ``ema.output_sigma_rel`` at the last step into an official-format file."""
    snaps = list_snapshots(ema_dir)
    synth = synthesize_ema(ema_dir, cfg.ema.output_sigma_rel, step=snaps[-1][0] if snaps else None)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    unknown = set(synth.state) - set(state)
    if unknown:
        raise ValueError(f"{ema_dir}: EMA tensors {sorted(unknown)[:5]} are not network parameters")
    non_finite = [k for k, v in synth.state.items() if not bool(torch.isfinite(v).all())]
    if non_finite:
        raise NonFiniteLossError(f"{ema_dir}: the EMA snapshots hold NaN or inf in {non_finite[:5]}; {path} not written")
    state.update(synth.state)  # the trainable tensors; fixed ones (latent stats, empty string) stay
    with torch.device("meta"):
        layout = {k: tuple(v.shape) for k, v in build_network(net.preset).state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != layout:  # what load_network_weights loads strictly
        raise ValueError(f"{path}: the exported state does not have the layout of preset '{net.preset.name}'")
    save_weight_file(state, path)
    log.info("EMA sigma_rel %.3f at step %d from %d snapshots (profile fit error %.2e) -> %s",
             synth.sigma_rel, synth.step, synth.num_snapshots, synth.relative_error, path)
    run.log_metrics({"ema_synthesis_error": synth.relative_error}, step=synth.step)
    run.log_params({"train.ema.snapshots_used": synth.num_snapshots})
    return path


def checkpoint_config(params: Params) -> dict[str, Any]:
    """The resolved config as a checkpoint stores it, with any credentials in the tracking URI hidden."""
    config = dataclasses.asdict(params)
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redact_credentials(config["tracking"]["uri"])
    return config


def write_run_files(
    out_dir: Path, history: list[list[float]], loss: float, val_loss: float | None, step: int, run_id: str | None,
    weights: Path,
) -> None:
    """metrics.json and loss.tsv for DVC; mlflow_run_id.txt (the run bound to ``weights``' hash) for the
    evaluation stage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"loss": _finite(loss), "val_loss": _finite(val_loss), "step": step}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")

    def cell(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.6g}"

    rows = [{"step": str(int(s)), "loss": cell(lo), "val_loss": cell(va)} for s, lo, va in history]
    write_tsv(out_dir / "loss.tsv", ("step", "loss", "val_loss"), rows)
    write_run_id_file(out_dir / RUN_ID_FILE, run_id, weights)


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)
