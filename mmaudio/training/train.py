"""Training of the flow network: DDP over 1..N processes, flow matching with classifier-free dropout,
post-hoc EMA, exact resume from the latest checkpoint, tracked in MLflow on rank 0.

    result = fit(params, ctx, inputs, callbacks)   # the trainer: resolved inputs, callbacks from the stage
    mmaudio.train_stage.train(params, ctx)       # what stages/train.py runs: resolves and composes, then fit()

The trainer imports neither the encoders nor the evaluation: the train stage resolves the weight
files it needs (:class:`TrainInputs`) and composes the callbacks (audio samples, evaluation during
training; :class:`Every`), lightning-hydra-template's split between the entry point and the Trainer.

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
    metrics.json, plots/, mlflow_run_id.txt   headline metrics, plot series and images for DVC; the
                         MLflow run and the SHA-256 of the weights.pth it made, for the evaluation stage
                         (mmaudio.training.run_files)

``run_key`` hashes everything that decides the numbers: the train config except bookkeeping keys
(``RESUME_NEUTRAL_KEYS``), the content hashes of the inputs (:func:`mmaudio.hashing.input_hashes`, the
same function the MLflow record uses) and the code the training loop imports
(``mmaudio.code_deps.code_digest``, the same walk that checks dvc.yaml's deps). A run
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mmaudio.code_deps import code_digest
from mmaudio.config import ConfigError, Params, TrainConfig, find_repo_root, to_flat_dict
from mmaudio.distributed import DistContext, barrier, resolve_device
from mmaudio.features import FeatureSet
from mmaudio.hashing import input_hashes
from mmaudio.locks import exclusive_folder
from mmaudio.modes import mode_spec
from mmaudio.model.flow_matching import flow_matching_loss, interpolate, sample_logit_normal_t, sample_noise_like
from mmaudio.model.network import MMAudioNetwork, NetworkPreset, build_network, get_network_preset, load_network_weights
from mmaudio.tracking import StageRun, redact_credentials, relpath
from mmaudio.training.checkpoint import list_checkpoints, load_latest_checkpoint, load_plain_file, save_checkpoint
from mmaudio.training.ema import PowerEMA, list_snapshots, remove_snapshots_after, synthesize_ema
from mmaudio.training.loader import Batch, TrainLoader, TrainSource, latent_stats, rank_slice, val_batches
from mmaudio.training.run_files import write_run_files
from mmaudio.training.schedule import build_scheduler
from mmaudio.training.state import REQUIRED_CHECKPOINT_KEYS, TrainState, fresh_window
from mmaudio.weights import save_weight_file

log = logging.getLogger(__name__)

STAGE = "train"
# Keys that change how a run is carried out or recorded, not the numbers it produces: a run resumes
# across changes of these.
RESUME_NEUTRAL_KEYS = frozenset(
    {"checkpoint_every", "keep_last", "val_interval", "eval_interval", "log_interval", "nproc_per_node", "prefetch",
     "compile",
     "device", "out_dir", "ema.snapshot_every", "ema.output_sigma_rel",
     # how the run samples for its audio samples and evaluations: recorded, never trained on
     "sampling.solver", "sampling.num_steps", "sampling.cfg_strength", "sampling.seed", "sampling.batch_size"}
)
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


@dataclass(frozen=True)
class TrainInputs:
    """What the train stage resolved for the trainer (which never looks for weight files itself)."""

    empty_string: torch.Tensor | None = None  # text features of '' for the null text; None: zeros
    empty_string_source: str = "zeros"  # where they came from, tagged on the run (train.empty_string)
    empty_string_file: Path | None = None  # that file: an input of the run (hashed into its key)


class StepCallback(Protocol):
    def __call__(self, net: MMAudioNetwork, step: int, run: StageRun) -> object: ...


@dataclass(frozen=True)
class Every:
    """``callback(net, step, run)`` every ``interval`` optimizer steps and at the last step (also when an
    execution resumes at the final checkpoint and trains nothing), with the unwrapped network. The stage
    decides which ranks get which callbacks (audio samples: rank 0; evaluation: every rank, as its
    sampling is sharded)."""

    interval: int
    callback: StepCallback

    def due(self, step: int, final: bool) -> bool:
        return step % self.interval == 0 or final


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
    runs ahead and queues the next step's work (bench/perf/train_step.py times exactly this function).
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
    """Process-wide CUDA settings of the training step (bench/perf/train_step.py applies the same).

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


def run_key(cfg: TrainConfig, hashes: Mapping[str, str]) -> str:
    """Short hash of what decides a run's numbers (see the module docstring)."""
    flat = {k: v for k, v in to_flat_dict(cfg).items() if k not in RESUME_NEUTRAL_KEYS}
    # the order of train.datasets lays out the epoch (and picks the latent-stats set): keep it
    flat["datasets.order"] = list(cfg.datasets)
    doc = json.dumps({"train": flat, "inputs": dict(sorted(hashes.items())), "code": code_digest(__name__)},
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
        noise = draw_step_noise(gen, rows, mode_spec(mode).latent_shape, cfg, ctx.device)  # drawn for every row on every rank
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
    params: Params, preset: NetworkPreset, sources: list[TrainSource], resuming: bool, inputs: TrainInputs,
    ctx: DistContext,
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
    if inputs.empty_string is None:
        log.warning("no empty-string features: the null text condition starts from zeros")
    notes.update({"train.init": "random", "train.empty_string": inputs.empty_string_source})
    net = build_network(preset, latent_mean=stats[0], latent_std=stats[1], empty_string_feat=inputs.empty_string)
    return net, notes


def _wrap(objective: FlowObjective, cfg: TrainConfig, ctx: DistContext) -> nn.Module:
    """What the step calls: the objective, under DDP with several processes, compiled if asked."""
    model: nn.Module = objective
    if ctx.world_size > 1:
        # broadcast_buffers off: the only buffers are RoPE tables and frequencies computed from the config
        model = DDP(objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                    broadcast_buffers=False)
    if cfg.compile:
        model = torch.compile(model)
    return model


def _find_checkpoint(ckpt_dir: Path, ctx: DistContext) -> tuple[dict[str, Any] | None, str | None]:
    """The latest usable checkpoint of this run: rank 0 picks it (skipping damaged ones), the others
    read the same file."""
    found = load_latest_checkpoint(ckpt_dir, REQUIRED_CHECKPOINT_KEYS) if ctx.rank == 0 else None
    ckpt_path = _broadcast(str(found[1]) if found else None, ctx)
    if ctx.rank == 0:
        return (found[0] if found else None), ckpt_path
    return (load_plain_file(ckpt_path) if ckpt_path else None), ckpt_path


def fit(
    params: Params,
    ctx: DistContext | None = None,
    inputs: TrainInputs = TrainInputs(),
    callbacks: Sequence[Every] = (),
    *,
    halt_after_step: int | None = None,
) -> TrainResult:
    """Train (or resume training) the flow network as ``params.train`` says; see the module docstring.

    ``ctx`` is the process's place in the process group (``init_distributed()``); None means one
    process on ``train.device``. ``inputs`` and ``callbacks`` come from the stage
    (:func:`mmaudio.train_stage.train`). ``halt_after_step`` stops right after that step as if the
    process were killed (no final checkpoint, no export): for resume tests.
    """
    cfg = params.train
    if ctx is None:
        ctx = DistContext(0, 1, 0, resolve_device(cfg.device))
    preset = _preset(cfg.network)
    mode = preset.mode
    latent_shape = mode_spec(mode).latent_shape
    amp = cfg.amp and ctx.device.type == "cuda"
    sources, val = open_training_sets(params, mode)
    loader = TrainLoader(
        sources, mode=mode, global_batch_size=cfg.global_batch_size, rank=ctx.rank, world_size=ctx.world_size,
        seed=cfg.seed, device=ctx.device, prefetch=cfg.prefetch,
    )
    per_rank = loader.per_rank
    input_paths = [s.features.path for s in sources] + ([val.path] if val is not None else [])
    if cfg.weights:
        input_paths.append(Path(cfg.weights))
    elif inputs.empty_string_file is not None:
        input_paths.append(inputs.empty_string_file)
    hashes = input_hashes(input_paths, find_repo_root()) if ctx.rank == 0 else {}
    key = _broadcast(run_key(cfg, hashes) if ctx.rank == 0 else None, ctx)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints" / key
    ema_dir = ckpt_dir / "ema"
    derived = {
        "train.world_size": ctx.world_size,
        "train.per_rank_batch_size": per_rank,
        "train.steps_per_epoch": loader.steps_per_epoch,
        "train.rows_per_epoch": loader.num_rows,
    }

    # one run per output folder (rank 0 holds it for all): the lock goes when the process does
    lock = exclusive_folder(out_dir, "training run") if ctx.rank == 0 else contextlib.nullcontext()
    with lock, StageRun(STAGE, params, inputs=input_paths, rank=ctx.rank, extra_params=derived, hashes=hashes) as run:
        ckpt, ckpt_path = _find_checkpoint(ckpt_dir, ctx)
        net, notes = _build_network(params, preset, sources, ckpt is not None, inputs, ctx)
        trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        parameters = [p for _, p in trainable]
        run.log_params({"train.run_key": key, "train.num_parameters": sum(p.numel() for p in parameters)})
        run.set_tags(notes)

        net.to(ctx.device)
        if ctx.device.type == "cuda":
            configure_cuda_for_training()
        objective = FlowObjective(net)
        model = _wrap(objective, cfg, ctx)
        optimizer = build_optimizer(parameters, cfg, amp, ctx.device)
        state = TrainState(
            net=net, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg), loader=loader,
            gen=torch.Generator(ctx.device).manual_seed(cfg.seed),  # the same stream on every rank
            ema=PowerEMA(trainable, cfg.ema.sigma_rels) if ctx.rank == 0 else None,
            window=fresh_window(ctx.device),
        )
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
        resumed_from = None
        if ckpt is not None:
            state.load_state_dict(ckpt, rank=ctx.rank, world_size=ctx.world_size, source=str(ckpt_path))
            if state.ema is not None:
                removed = remove_snapshots_after(ema_dir, state.step)
                if removed:
                    log.info("removed %d EMA snapshots newer than the checkpoint", len(removed))
            resumed_from = state.step
            log.info("resumed from %s (step %d)", ckpt_path, state.step)
            # the run that wrote the checkpoint is found by the same train.run_key param: the file itself
            # carries no run id, so identical runs write identical bytes (one DVC hash)
            run.set_tags({"train.resumed_from_step": state.step})
            del ckpt
        log.info(
            "training %s (%d trainable parameters) on %d process(es), %s: %d rows per epoch, global batch %d "
            "(%d per process), %d steps from %d; checkpoints in %s",
            preset.name, sum(p.numel() for p in parameters), ctx.world_size, ctx.device, loader.num_rows,
            cfg.global_batch_size, per_rank, cfg.num_iterations, state.step, ckpt_dir,
        )

        def checkpoint_now() -> None:
            ranks = _gather(state.rank_state_dict(), ctx)
            if ctx.rank == 0:
                body = state.state_dict(ranks, config=checkpoint_config(params), run_key=key)
                log.info("checkpoint %s", save_checkpoint(ckpt_dir, body, cfg.keep_last))
            barrier()

        val_loss: float | None = None
        last_loss = math.nan
        # the first step whose loss or grad norm was NaN/inf (0: none), kept on the device
        first_bad = torch.zeros((), dtype=torch.int64, device=ctx.device)
        # the same steps on every rank (the check all-reduces): every interval at which anything is
        # logged, sampled or saved, whichever rank does it
        check_every = [cfg.log_interval, cfg.checkpoint_every, cfg.ema.snapshot_every, cfg.val_interval]
        if cfg.eval_interval > 0:
            check_every.append(cfg.eval_interval)
        objective.train()
        while state.step < cfg.num_iterations:
            # one optimizer step on this rank's rows of the global batch
            batch = loader.next()
            noise = draw_step_noise(state.gen, cfg.global_batch_size, latent_shape, cfg, ctx.device)
            part = rank_slice(cfg.global_batch_size, per_rank, ctx.rank)
            lr = optimizer.param_groups[0]["lr"]
            loss, grad_norm = optimizer_step(
                model, objective_inputs(batch, noise.rows(part)), optimizer=optimizer, scheduler=state.scheduler,
                parameters=parameters, grad_clip=cfg.grad_clip, ema=state.ema, amp=amp,
            )
            state.step += 1
            state.window.add(loss, grad_norm)
            step, final = state.step, state.step == cfg.num_iterations
            first_bad.masked_fill_((first_bad == 0) & ~(torch.isfinite(loss) & torch.isfinite(grad_norm)), step)
            if final or any(step % every == 0 for every in check_every):
                # before anything is logged or saved: a NaN must never reach a checkpoint or an EMA snapshot
                stop_if_not_finite(first_bad, ctx, ckpt_dir)

            if step % cfg.log_interval == 0 or final:
                last_loss = _log_window(state, lr, cfg, ctx, run)
            if val is not None and (step % cfg.val_interval == 0 or final):
                val_loss = validation_loss(objective, val, cfg, ctx, mode, amp)
                run.log_metrics({"val/loss": val_loss}, step=step)
                if state.history and state.history[-1][0] == step:
                    state.history[-1][2] = val_loss
                else:
                    state.history.append([float(step), math.nan, val_loss])
                log.info("step %d val_loss %.4f", step, val_loss)
            for every in callbacks:  # audio samples, evaluation: their own generators, the training stream is untouched
                if every.due(step, final):
                    every.callback(net, step, run)

            if state.ema is not None and (step % cfg.ema.snapshot_every == 0 or final):
                state.ema.snapshot(ema_dir)
            if step % cfg.checkpoint_every == 0 or final:
                checkpoint_now()
            if halt_after_step is not None and step == halt_after_step and not final:
                loader.close()
                return TrainResult(step, last_loss, val_loss, None, ckpt_dir, run.run_id, state.history,
                                   resumed_from, True)
        if resumed_from is not None and resumed_from == cfg.num_iterations:
            # Resumed at the final checkpoint: no step ran, so no callback did. DVC clears the stage's
            # uncached outs (plots/images) before a rerun, and this execution's MLflow run should hold
            # the final samples too, so the final step's callbacks run now, on the network restored bit
            # for bit from the checkpoint written right after they ran in the fresh run: same files.
            for every in callbacks:
                every.callback(net, state.step, run)
        loader.close()

        history = state.history
        if val is not None and val_loss is None:
            val_loss = next((row[2] for row in reversed(history) if not math.isnan(row[2])), None)
        if math.isnan(last_loss):
            last_loss = next((row[1] for row in reversed(history) if not math.isnan(row[1])), math.nan)
        weights_path = None
        if ctx.rank == 0:
            weights_path = export_ema_weights(net, ema_dir, cfg, out_dir / "weights.pth", run)
            write_run_files(out_dir, history, last_loss, val_loss, state.step, run.run_id, weights_path)
            run.log_outputs([weights_path])
            run.log_artifact(weights_path, artifact_path="weights")  # through the server, as the README says
        barrier()
        return TrainResult(state.step, last_loss, val_loss, weights_path, ckpt_dir, run.run_id, history, resumed_from)


def _log_window(state: TrainState, lr: float, cfg: TrainConfig, ctx: DistContext, run: StageRun) -> float:
    """Log the means over the metric window (all ranks), add a history row, restart the window; the mean loss."""
    w, loader = state.window, state.loader
    sums = _all_reduce_sum(torch.stack([w.loss, w.grad]).double(), ctx)
    elapsed = time.perf_counter() - w.start
    loss = float(sums[0]) / (w.steps * ctx.world_size)
    metrics = {  # MLflow groups its charts by the prefix: train/..., val/..., test/...
        "train/loss": loss,
        "train/grad_norm": float(sums[1]) / (w.steps * ctx.world_size),
        "train/lr": lr,
        "train/samples_per_sec": w.steps * cfg.global_batch_size / max(elapsed, 1e-9),
        "train/epoch": loader.epoch + loader.step_in_epoch / loader.steps_per_epoch,
    }
    run.log_metrics(metrics, step=state.step)
    state.history.append([float(state.step), loss, math.nan])
    log.info("step %d/%d loss %.4f grad %.3f lr %.3g %.1f samples/s", state.step, cfg.num_iterations,
             loss, metrics["train/grad_norm"], lr, metrics["train/samples_per_sec"])
    w.reset()
    return loss


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
    run.log_metrics({"train/ema_synthesis_error": synth.relative_error}, step=synth.step)
    run.log_params({"train.ema.snapshots_used": synth.num_snapshots})
    return path


def checkpoint_config(params: Params) -> dict[str, Any]:
    """The resolved config as a checkpoint stores it, with any credentials in the tracking URI hidden."""
    config = dataclasses.asdict(params)
    if config["tracking"]["uri"]:
        config["tracking"]["uri"] = redact_credentials(config["tracking"]["uri"])
    return config
