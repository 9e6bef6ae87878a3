"""Generating audio for a feature set with a trained flow network, for evaluation.

Every row gets its own noise: a generator seeded from ``seed`` and the row's index in the feature set,
drawn on the CPU, so a row's latent does not depend on the batch it lands in, the number of processes
or the device. Under torchrun each process samples a disjoint, strided shard of the rows and rank 0
gathers them. Latents are decoded to waveforms by the weight profile's VAE decoder and vocoder
(:class:`~mmaudio.encoders.feature_encoders.FeatureEncoders`) and written as mono FLAC at the model's rate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.distributed as dist

from mmaudio.choices import Solver, check_choice
from mmaudio.config import EvaluateConfig, SamplingConfig
from mmaudio.distributed import DistContext
from mmaudio.features import FeatureSet
from mmaudio.model.flow_matching import (
    DEFAULT_CFG_STRENGTH,
    DEFAULT_NUM_STEPS,
    adaptive_sample,
    cfg_velocity_fn,
    euler_sample,
)
from mmaudio.model.network import MMAudioNetwork, build_network, load_network_weights

# keys that the trainer fills from data, not from the seeded init: an untrained baseline takes them
# from the trained file so that it differs from the trained network only in what training learned
DATA_BUFFER_KEYS = ("latent_mean", "latent_std", "empty_string_feat")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingOptions:
    """How latents are drawn (defaults: upstream's inference settings)."""

    solver: str = "euler"  # euler | adaptive (torchdiffeq dopri5)
    num_steps: int = DEFAULT_NUM_STEPS  # Euler steps
    cfg_strength: float = DEFAULT_CFG_STRENGTH
    seed: int = 0  # row i's noise comes from a generator seeded with row_seed(seed, i)
    batch_size: int = 8  # rows per network call
    rtol: float = 1e-5  # adaptive solver tolerances (looser than torchdiffeq's defaults: evaluation
    atol: float = 1e-5  # needs a converged sample, not one to 1e-9)

    def __post_init__(self) -> None:
        check_choice(Solver, self.solver, "solver")
        if self.num_steps < 1 or self.batch_size < 1:
            raise ValueError(f"num_steps and batch_size must be >= 1, got {self.num_steps}, {self.batch_size}")


def sampling_options(cfg: EvaluateConfig | SamplingConfig) -> SamplingOptions:
    """Sampling settings from ``evaluate.*`` (the evaluate stage) or ``train.sampling.*`` (the train
    stage's audio samples and evaluation during training): one sampler, two sets of keys, so that
    changing how the evaluate stage samples reruns only that stage."""
    return SamplingOptions(solver=cfg.solver, num_steps=cfg.num_steps, cfg_strength=cfg.cfg_strength,
                           seed=cfg.seed, batch_size=cfg.batch_size)


def row_seed(seed: int, row: int) -> int:
    """The noise seed of row ``row``: distinct per row, fixed by (seed, row) alone."""
    return (seed * 1_000_003 + row) % (2**63 - 1)


def initial_noise(rows: Sequence[int], latent_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(B, *latent_shape) float32 CPU noise, row ``rows[b]`` drawn from its own generator."""
    out = torch.empty(len(rows), *latent_shape)
    for b, r in enumerate(rows):
        out[b].normal_(generator=torch.Generator().manual_seed(row_seed(seed, int(r))))
    return out


@torch.no_grad()
def sample_latents(
    net: MMAudioNetwork,
    clip_f: torch.Tensor,  # (B, 64, clip_dim)
    sync_f: torch.Tensor,  # (B, 192, sync_dim)
    text_f: torch.Tensor,  # (B, 77, text_dim)
    rows: Sequence[int],
    options: SamplingOptions,
    *,
    video_exist: torch.Tensor | None = None,  # (B,) bool; False rows get the empty video condition
) -> torch.Tensor:
    """Un-normalised VAE latents (B, N, C) for one batch of conditions, CFG-guided."""
    device = net.device
    b = len(rows)
    x0 = initial_noise(rows, (net.latent_seq_len, net.latent_dim), options.seed).to(device)  # (B, N, C)
    if video_exist is None:
        video_exist = torch.ones(b, dtype=torch.bool)
    no_video = ~video_exist.to(device)
    no_text = torch.zeros(b, dtype=torch.bool, device=device)
    clip_f, sync_f, text_f = net.replace_with_empty(
        clip_f.to(device), sync_f.to(device), text_f.to(device), null_video=no_video, null_text=no_text
    )
    conditions = net.preprocess_conditions(clip_f, sync_f, text_f)
    velocity = cfg_velocity_fn(net.predict_flow, conditions, net.get_empty_conditions(b), options.cfg_strength)
    if Solver(options.solver) is Solver.EULER:
        x1 = euler_sample(velocity, x0, num_steps=options.num_steps)
    else:
        x1 = adaptive_sample(velocity, x0, rtol=options.rtol, atol=options.atol)
    return net.unnormalize(x1).float().cpu()  # (B, N, C)


def shard_rows(num_rows: int, rank: int, world_size: int) -> list[int]:
    """This process's rows: a strided, disjoint share (every row belongs to exactly one rank)."""
    return list(range(rank, num_rows, world_size))


def sample_feature_set(
    net: MMAudioNetwork,
    features: FeatureSet,
    options: SamplingOptions,
    ctx: DistContext | None = None,
    rows: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """``{id: latent (N, C)}`` for ``rows`` (default: all) of a video feature set.

    With a distributed ``ctx`` each rank samples its shard; rank 0 returns every row, other ranks an
    empty dict.
    """
    rows = list(range(len(features))) if rows is None else [int(r) for r in rows]
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    mine = [rows[i] for i in shard_rows(len(rows), rank, world)]
    was_training = net.training
    net.eval()
    out: dict[str, torch.Tensor] = {}
    for lo in range(0, len(mine), options.batch_size):
        part = mine[lo : lo + options.batch_size]
        data = features.rows(torch.tensor(part))
        exist = torch.full((len(part),), features.kind == "video", dtype=torch.bool)
        if features.kind == "video":
            clip_f, sync_f = data["clip_features"], data["sync_features"]
        else:  # audio-only sets carry no video features: the empty video condition stands in
            clip_f = net.get_empty_clip_sequence(len(part)).cpu()
            sync_f = net.get_empty_sync_sequence(len(part)).cpu()
        lat = sample_latents(net, clip_f, sync_f, data["text_features"], part, options, video_exist=exist)
        out.update({features.ids[r]: lat[i] for i, r in enumerate(part)})
        log.info("sampled %d/%d rows", len(out), len(mine))  # progress: a batch takes seconds to minutes
    net.train(was_training)
    if world > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[dict[str, torch.Tensor]] | None = [None] * world if rank == 0 else None  # type: ignore[list-item]
        dist.gather_object(out, gathered, dst=0)
        if rank != 0:
            return {}
        out = {k: v for part in gathered for k, v in part.items()}  # type: ignore[union-attr]
    return {features.ids[r]: out[features.ids[r]] for r in rows}


# -- networks --------------------------------------------------------------------------------------


def load_trained_network(preset: str, weights: str | os.PathLike, device: torch.device | str = "cpu") -> MMAudioNetwork:
    """The network of ``preset`` with ``weights`` (an official-format mmaudio_*.pth) loaded strictly."""
    net = build_network(preset)
    load_network_weights(net, weights)
    return net.to(device).eval()


def untrained_network(
    preset: str, seed: int, like: MMAudioNetwork, device: torch.device | str = "cpu"
) -> MMAudioNetwork:
    """The network as training starts it (init drawn after ``torch.manual_seed(seed)``, as the train
    stage does), with the data-derived buffers (latent stats, empty-string features) of ``like``."""
    state = like.state_dict()
    torch.manual_seed(seed)
    net = build_network(
        preset,
        latent_mean=state["latent_mean"].cpu(),
        latent_std=state["latent_std"].cpu(),
        empty_string_feat=state["empty_string_feat"].cpu(),
    )
    return net.to(device).eval()


# -- audio -----------------------------------------------------------------------------------------


def decode_waveforms(encoders, latents: Mapping[str, torch.Tensor], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``{id: latent (N, C)}`` -> ``{id: waveform (L,) float32 CPU}`` through VAE decoder + vocoder."""
    ids = list(latents)
    out: dict[str, torch.Tensor] = {}
    for lo in range(0, len(ids), batch_size):
        part = ids[lo : lo + batch_size]
        wave = encoders.latents_to_waveform(torch.stack([latents[i] for i in part]))  # (B, L)
        out.update({i: wave[b].float().cpu() for b, i in enumerate(part)})
    return out


def write_flac(path: str | os.PathLike, wave: torch.Tensor, sample_rate: int) -> Path:
    """Mono float audio in [-1, 1] (L,) -> 16-bit FLAC at ``sample_rate`` (PyAV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (wave.detach().float().clamp(-1, 1).cpu().numpy() * 32767).round().astype(np.int16)[None]  # (1, L)
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
