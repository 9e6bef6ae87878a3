"""Parity of mmaudio.model.network / flow_matching with upstream MMAudio's ``MMAudio`` and
``FlowMatching``, in float32 on CPU.

Both networks get the same random weights (upstream's state dict is filled, then loaded into ours
strictly, and ours is loaded back into upstream's strictly). Random weights are scaled so activations
stay O(1) and every adaLN gate, output conv and empty feature is non-zero (the training init zeroes
them, which would hide most of the network). Compared:

- small_16k at full size (157M parameters), batch 1: the conditional flow, and the flow under
  ``get_empty_conditions`` (the CFG branch);
- a reduced v2 network (large_44k_v2's code path at hidden 128, 2 joint + 1 fused blocks, 44k
  lengths), batch 2: v2's SiLU projections and high-frequency time embedding; running the full 1B
  large_44k_v2 on CPU would need ~8 GB and minutes for no extra coverage;
- tiny_16k, batch 2: a whole 4-step Euler sample with CFG 4.5 (and with CFG 0.5, where upstream
  skips the unconditional pass), against ``FlowMatching.to_data`` with ``MMAudio.ode_wrapper``;
- the flow-matching math with min_sigma 0 and 1e-4: x_t, the loss, logit-normal t from a seeded
  generator, and the adaptive (dopri5) solve on a linear field.

    python bench/parity/network.py --upstream /path/to/MMAudio [--deps DIR]

Upstream's package needs einops (and torchdiffeq): pass ``--deps DIR`` holding what the environment
lacks (e.g. ``pip install --target DIR einops``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import torch

from mmaudio.model import flow_matching as fm
from mmaudio.model.network import NETWORK_PRESETS, MMAudioNetwork, NetworkPreset, build_network
from mmaudio.weights import load_state_dict_strict

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import parity_parser, rel_diff, run_cli, upstream_package  # noqa: E402


def _import_upstream(upstream_dir: str, deps: list[str]) -> tuple[ModuleType, ModuleType, ModuleType]:
    with upstream_package(upstream_dir, deps):
        networks = importlib.import_module("mmaudio.model.networks")
        flow = importlib.import_module("mmaudio.model.flow_matching")
        sample_utils = importlib.import_module("mmaudio.model.utils.sample_utils")
    return networks, flow, sample_utils


def _upstream_network(networks: ModuleType, preset: NetworkPreset) -> torch.nn.Module:
    seq = preset.sequence
    return networks.MMAudio(
        latent_dim=preset.latent_dim,
        clip_dim=preset.clip_dim,
        sync_dim=preset.sync_dim,
        text_dim=preset.text_dim,
        hidden_dim=preset.hidden_dim,
        depth=preset.depth,
        fused_depth=preset.fused_depth,
        num_heads=preset.num_heads,
        mlp_ratio=preset.mlp_ratio,
        latent_seq_len=seq.latent_seq_len,
        clip_seq_len=seq.clip_seq_len,
        sync_seq_len=seq.sync_seq_len,
        text_seq_len=seq.text_seq_len,
        v2=preset.v2,
    )


@torch.no_grad()
def _randomize(module: torch.nn.Module, seed: int) -> None:
    """O(1)-activation random weights: N(0, 1/fan_in) for weights (fan_in over all but dim 0),
    norm gains near 1, positive latent_std, everything else N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * noise)
        elif name == "latent_std":
            p.copy_(0.5 + noise.abs())
        elif name in ("empty_string_feat", "empty_clip_feat", "empty_sync_feat", "latent_mean"):
            p.copy_(noise)
        elif p.dim() >= 2:
            p.copy_(noise / math.sqrt(p[0].numel()))
        else:
            p.copy_(0.1 * noise)


def _paired(networks: ModuleType, preset: NetworkPreset, seed: int) -> tuple[MMAudioNetwork, torch.nn.Module]:
    """Upstream and our network with identical random weights, each loaded strictly from the other."""
    ref = _upstream_network(networks, preset).eval()
    _randomize(ref, seed)
    ours = build_network(preset).eval()
    load_state_dict_strict(ours, ref.state_dict(), source=f"upstream {preset.name} state dict")
    ref.load_state_dict(ours.state_dict(), strict=True)  # our export loads into upstream unchanged
    return ours, ref


def _inputs(preset: NetworkPreset, batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = preset.sequence
    return {
        "latent": torch.randn(batch, seq.latent_seq_len, preset.latent_dim, generator=g),
        "clip_f": torch.randn(batch, seq.clip_seq_len, preset.clip_dim, generator=g),
        "sync_f": torch.randn(batch, seq.sync_seq_len, preset.sync_dim, generator=g),
        "text_f": torch.randn(batch, seq.text_seq_len, preset.text_dim, generator=g),
        "t": torch.rand(batch, generator=g),
    }


@torch.no_grad()
def _network_rows(networks: ModuleType, preset: NetworkPreset, batch: int, seed: int) -> list[tuple[str, float]]:
    ours, ref = _paired(networks, preset, seed)
    x = _inputs(preset, batch, seed + 1)
    rows = [
        (f"{preset.name}: flow", rel_diff(ours(**x), ref(**x))),
        (f"{preset.name}: state dict round trip (max |diff|)", max(
            (v - ref.state_dict()[k]).abs().max().item() for k, v in ours.state_dict().items()
        )),
    ]
    # the unconditional branch, and the normalisation buffers
    e_ours, e_ref = ours.get_empty_conditions(batch), ref.get_empty_conditions(batch)
    rows.append((f"{preset.name}: flow | empty conditions", rel_diff(
        ours.predict_flow(x["latent"], x["t"], e_ours), ref.predict_flow(x["latent"], x["t"], e_ref))))
    rows.append((f"{preset.name}: normalize",
                 rel_diff(ours.normalize(x["latent"]), ref.normalize(x["latent"].clone()))))
    return rows


@torch.no_grad()
def _sampling_rows(networks: ModuleType, flow: ModuleType, preset: NetworkPreset, seed: int) -> list[tuple[str, float]]:
    ours, ref = _paired(networks, preset, seed)
    x = _inputs(preset, 2, seed + 1)
    rows = []
    for cfg in (4.5, 0.5):
        up_fm = flow.FlowMatching(min_sigma=0.0, inference_mode="euler", num_steps=4)
        c_ref = ref.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        e_ref = ref.get_empty_conditions(2)
        want = up_fm.to_data(lambda t, z: ref.ode_wrapper(t, z, c_ref, e_ref, cfg), x["latent"])
        c_ours = ours.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        e_ours = ours.get_empty_conditions(2)
        got = fm.euler_sample(fm.cfg_velocity_fn(ours.predict_flow, c_ours, e_ours, cfg), x["latent"], num_steps=4)
        rows.append((f"{preset.name}: 4-step Euler sample, cfg {cfg}", rel_diff(got, want)))
    return rows


def _flow_math_rows(flow: ModuleType, sample_utils: ModuleType) -> list[tuple[str, float]]:
    g = torch.Generator().manual_seed(0)
    x0, x1, v = (torch.randn(4, 345, 40, generator=g) for _ in range(3))
    t = torch.rand(4, generator=g)
    rows = []
    for min_sigma in (0.0, 1e-4):
        up = flow.FlowMatching(min_sigma=min_sigma, inference_mode="euler", num_steps=7)
        rows.append((f"x_t, min_sigma {min_sigma}", rel_diff(fm.interpolate(x0, x1, t, min_sigma=min_sigma),
                                                         up.get_conditional_flow(x0, x1, t))))
        rows.append((f"loss, min_sigma {min_sigma}", rel_diff(fm.flow_matching_loss(v, x0, x1, min_sigma=min_sigma),
                                                          up.loss(v, x0, x1))))
        field = lambda tt, z: -z + tt * x1  # noqa: E731 - a cheap non-trivial time-dependent field
        rows.append((f"Euler 7 steps on a linear field, min_sigma {min_sigma}",
                     rel_diff(fm.euler_sample(field, x0, num_steps=7, min_sigma=min_sigma), up.to_data(field, x0))))
    ours_t = fm.sample_logit_normal_t(1000, generator=torch.Generator().manual_seed(5), mean=0.3, scale=1.2)
    ref_t = sample_utils.log_normal_sample(torch.empty(1000), generator=torch.Generator().manual_seed(5), m=0.3, s=1.2)
    rows.append(("logit-normal t (seeded)", rel_diff(ours_t, ref_t)))
    up_adaptive = flow.FlowMatching(min_sigma=0.0, inference_mode="adaptive")
    field = lambda tt, z: -z + tt * x1[:1, :8]  # noqa: E731
    # upstream's adaptive branch returns the (t0, t1) trajectory; its last entry is the sample
    rows.append(("adaptive dopri5 on a linear field",
                 rel_diff(fm.adaptive_sample(field, x0[:1, :8]), up_adaptive.to_data(field, x0[:1, :8])[-1])))
    return rows


def run(upstream_dir: str, deps: list[str] | None = None) -> list[tuple[str, float]]:
    """Largest relative differences (max |ours - upstream| / max |upstream|) per compared output."""
    torch.set_num_threads(1)
    networks, flow, sample_utils = _import_upstream(upstream_dir, deps or [])
    tiny_v2 = dataclasses.replace(
        NETWORK_PRESETS["large_44k_v2"], name="reduced_44k_v2", num_heads=2, depth=3, fused_depth=1
    )
    rows = _network_rows(networks, NETWORK_PRESETS["small_16k"], batch=1, seed=10)
    rows += _network_rows(networks, tiny_v2, batch=2, seed=20)
    rows += _sampling_rows(networks, flow, NETWORK_PRESETS["tiny_16k"], seed=30)
    rows += _flow_math_rows(flow, sample_utils)
    return rows


def main() -> None:
    parser = parity_parser(__doc__.split("\n\n")[0], "checkout of hkchengrex/MMAudio",
                           deps_help="extra sys.path entry for upstream's imports")
    run_cli(parser, lambda args: run(args.upstream, args.deps), "rel. diff (float32, CPU)", timed=True)


if __name__ == "__main__":
    main()
