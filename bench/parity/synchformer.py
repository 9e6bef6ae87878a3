"""Parity of mmaudio.encoders.synchformer with upstream MMAudio's Synchformer visual features.

Both sides get the same random weights. They are written once as a ``synchformer_state_dict.pth``-style
file by our saver; upstream's ``Synchformer`` reads it the way upstream's ``FeaturesUtils`` does
(``torch.load`` then its own prefix-filtering ``load_state_dict``, strict), ours through
``load_synchformer_visual``. Upstream's ``FeaturesUtils`` is built with ``enable_conditions=False`` (so
it loads nothing) and given that Synchformer; its ``encode_video_with_sync`` runs unchanged on frames
normalised as upstream's data transform does, ours (``encode_sync``) on the raw [0, 1] frames.

Two comparisons, both on CPU in well under a minute:

- official architecture (12 blocks, 122.4M parameters) on one 16-frame segment;
- the official width with the first block only (upstream's ``blocks`` list cut to one, ours built with
  ``depth=1``), on a batch of 2 clips of 32 frames (3 segments each) with ``batch_size=4``, so the
  segmenting and a segment batch that straddles two clips are compared too. A full 200-frame clip at
  full depth is about 9 TFLOP, far too slow for CPU here.

Random weights are scaled so activations stay O(1) (weights ~ N(0, 1/fan_in), LayerNorm gains near 1,
biases and embeddings non-zero), so that attention is far from uniform and every parameter matters.

    python bench/parity/synchformer.py --upstream /path/to/MMAudio [--deps DIR]

Upstream's package needs einops, timm and omegaconf (and librosa for ``features_utils``): pass
``--deps DIR`` for what the environment lacks; an import failure stops the script.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

from mmaudio.encoders.synchformer import (
    PIXEL_MEAN,
    PIXEL_STD,
    SYNCHFORMER_PRESETS,
    SynchformerPreset,
    build_synchformer_visual,
    load_synchformer_visual,
    save_synchformer_visual,
)
from mmaudio.weights import load_weight_file

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import check_under, parity_parser, rel_diff, run_cli, upstream_package  # noqa: E402


def _import_upstream(upstream_dir: str, deps: list[str]) -> tuple[ModuleType, ModuleType]:
    """Upstream's ``mmaudio.ext.synchformer`` and ``mmaudio.model.utils.features_utils``."""
    with upstream_package(upstream_dir, deps):
        synchformer = importlib.import_module("mmaudio.ext.synchformer")
        features_utils = importlib.import_module("mmaudio.model.utils.features_utils")
    for module in (synchformer, features_utils):
        check_under(module, upstream_dir)
    return synchformer, features_utils


def _random_state_dict(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        if key.endswith(("cls_token", "pos_embed", "temp_embed")):
            x = 0.5 * x
        elif len(shape) >= 2:  # linear / conv weights: unit-variance outputs
            x = x / math.sqrt(math.prod(shape[1:]))
        elif ".norm" in key and key.endswith("weight"):  # LayerNorm gains
            x = 1.0 + 0.1 * x
        else:  # biases
            x = 0.1 * x
        out[key] = x
    return out


def _compare(
    upstream: tuple[ModuleType, ModuleType],
    preset: SynchformerPreset,
    frames: torch.Tensor,
    batch_size: int,
    folder: Path,
    seed: int,
) -> float:
    synchformer_mod, features_utils_mod = upstream
    path = folder / f"synchformer_{preset.name}.pth"
    model = build_synchformer_visual(preset, device="meta")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(_random_state_dict(shapes, seed), assign=True)
    save_synchformer_visual(model, path)
    del model

    ours = load_synchformer_visual(path, preset)
    ours_features = ours.encode_sync(frames, batch_size=batch_size)
    del ours

    ref_model = synchformer_mod.Synchformer()
    depth = preset.motionformer.depth
    ref_model.vfeat_extractor.blocks = ref_model.vfeat_extractor.blocks[:depth]
    ref_model.load_state_dict(load_weight_file(path))  # upstream's own filter + strict load
    fu = features_utils_mod.FeaturesUtils(tod_vae_ckpt=None, enable_conditions=False)
    fu.synchformer = ref_model
    fu = fu.eval()
    # upstream normalises in its torchvision transform, before encode_video_with_sync
    ref_features = fu.encode_video_with_sync((frames - PIXEL_MEAN) / PIXEL_STD, batch_size=batch_size)
    return rel_diff(ours_features, ref_features)


def run(upstream_dir: str, *, deps: list[str] | None = None) -> list[tuple[str, float]]:
    """Largest relative differences (max|ours - upstream| / max|upstream|) of ``sync_features``."""
    upstream = _import_upstream(upstream_dir, deps or [])
    official = SYNCHFORMER_PRESETS["official"]
    one_block = dataclasses.replace(
        official, name="official_depth1", motionformer=dataclasses.replace(official.motionformer, depth=1)
    )
    gen = torch.Generator().manual_seed(0)
    one_segment = torch.rand(1, 16, 3, 224, 224, generator=gen)  # (B, T, C, H, W)
    two_clips = torch.rand(2, 32, 3, 224, 224, generator=gen)
    with tempfile.TemporaryDirectory(prefix="synchformer_parity_") as tmp:
        return [
            ("official, 1 segment: sync_features (1, 8, 768)",
             _compare(upstream, official, one_segment, -1, Path(tmp), seed=1)),
            ("official width, depth 1, 2x32 frames, batch 4: (2, 24, 768)",
             _compare(upstream, one_block, two_clips, 4, Path(tmp), seed=2)),
        ]


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "checkout of hkchengrex/MMAudio",
                           deps_help="extra folder of packages upstream needs", threads=True)
    run_cli(parser, lambda args: run(args.upstream, deps=args.deps), "max rel diff (float32, CPU)")


if __name__ == "__main__":
    main()
