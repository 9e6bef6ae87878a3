"""Parity of mmaudio.encoders.clip with upstream MMAudio's CLIP feature extraction.

Both sides get the same random weights, written once as an open_clip checkpoint folder
(``open_clip_config.json`` + ``open_clip_pytorch_model.bin``):

- ours: ``CLIPEncoder(preset, folder)`` (our loader, our normalisation and per-token text features);
- upstream: the model comes from ``open_clip.create_model_from_pretrained('local-dir:<folder>')``, which
  is upstream's ``create_model_from_pretrained('hf-hub:apple/DFN5B-CLIP-ViT-H-14-384')`` call with the
  hub swapped for the local folder (no download). Upstream's ``FeaturesUtils`` is built with
  ``enable_conditions=False`` (so it loads nothing), then given that model through upstream's own
  ``patch_clip``, upstream's Normalize constants and tokenizer name, and its ``encode_video_with_clip``
  / ``encode_text`` methods run unchanged. If upstream cannot be imported (its package needs einops and
  librosa; pass ``--deps DIR`` with them), the script stops with the import error rather than compare
  against a rewrite of itself.

    python bench/parity/clip.py --upstream /path/to/MMAudio [--deps DIR] [--preset tiny|official]

The default ``tiny`` preset runs in seconds on CPU and exercises every operation of the official one
(the text tower keeps its 1024 width and 49408-token table); ``official`` (986.7M parameters) needs
about 9 GB of memory and is practical on a GPU (``--device cuda``).
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import open_clip
import torch

from mmaudio.encoders.clip import (
    CLIPEncoder,
    build_clip,
    compute_empty_string_feature,
    get_clip_preset,
    load_empty_string,
    save_clip,
    save_empty_string,
)

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import check_under, parity_parser, rel_diff, run_cli, upstream_package  # noqa: E402

CAPTIONS = ["", "a dog barks twice in a small room", "rain on a tin roof, distant thunder " * 8]
# Upstream's FeaturesUtils: Normalize constants and tokenizer name (facts read from its source).
UPSTREAM_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
UPSTREAM_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
UPSTREAM_TOKENIZER = "ViT-H-14-378-quickgelu"
# open_clip's built-in config that is identical to the hub's open_clip_config.json for DFN5B-384.
UPSTREAM_OFFICIAL_CFG_NAME = "ViT-H-14-378-quickgelu"


def _import_upstream_features_utils(upstream_dir: str, deps: list[str]) -> ModuleType:
    with upstream_package(upstream_dir, deps):
        module = importlib.import_module("mmaudio.model.utils.features_utils")
    check_under(module, upstream_dir)
    return module


def _write_checkpoint_folder(model: open_clip.CLIP, model_cfg: dict, folder: Path) -> None:
    save_clip(model, folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": UPSTREAM_CLIP_MEAN, "std": UPSTREAM_CLIP_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def run(
    upstream_dir: str,
    *,
    preset: str = "tiny",
    num_frames: int = 8,
    device: str = "cpu",
    deps: list[str] | None = None,
) -> list[tuple[str, float]]:
    """Largest relative differences (max|ours - upstream| / max|upstream|) of every CLIP output."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    features_utils = _import_upstream_features_utils(upstream_dir, deps or [])
    from torchvision.transforms import Normalize  # what upstream's FeaturesUtils uses

    spec = get_clip_preset(preset)
    model_cfg = (open_clip.get_model_config(UPSTREAM_OFFICIAL_CFG_NAME) if spec.name == "official"
                 else spec.open_clip_cfg())
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, num_frames // 2, 3, spec.frame_size, spec.frame_size, generator=gen)  # (B, T, 3, H, W)

    with tempfile.TemporaryDirectory(prefix="clip_parity_") as tmp:
        folder = Path(tmp)
        _write_checkpoint_folder(build_clip(spec, seed=0), model_cfg, folder)

        ours = CLIPEncoder(spec, folder).to(device)
        ours_image = ours.encode_image(frames)
        ours_text = ours.encode_text(CAPTIONS)
        ours_tokens = ours.tokenize(CAPTIONS)
        # kept out of the checkpoint folder, where open_clip would look for weight files
        empty_path = save_empty_string(compute_empty_string_feature(ours), folder / "ext" / "empty_string.pth")
        ours_empty = load_empty_string(empty_path)  # (77, D), as upstream reads it
        del ours

        ref_model = open_clip.create_model_from_pretrained(f"local-dir:{folder}", return_transform=False)
        fu = features_utils.FeaturesUtils(tod_vae_ckpt=None, enable_conditions=False)
        fu.clip_model = features_utils.patch_clip(ref_model)
        fu.clip_preprocess = Normalize(mean=UPSTREAM_CLIP_MEAN, std=UPSTREAM_CLIP_STD)
        fu.tokenizer = open_clip.get_tokenizer(UPSTREAM_TOKENIZER)
        fu = fu.to(device).eval()
        ref_image = fu.encode_video_with_clip(frames.to(device))
        ref_text = fu.encode_text(CAPTIONS)
        ref_tokens = fu.tokenizer(CAPTIONS)

    return [
        ("tokens (exact: 0 = identical)", float(not torch.equal(ours_tokens, ref_tokens))),
        (f"clip_features {tuple(ref_image.shape)}", rel_diff(ours_image, ref_image)),
        (f"text_features {tuple(ref_text.shape)}", rel_diff(ours_text, ref_text)),
        ("empty_string.pth [0] vs encode_text([''])[0]", rel_diff(ours_empty, ref_text[0])),
    ]


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "checkout of hkchengrex/MMAudio",
                           deps_help="extra folder of packages upstream needs")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "official"])
    parser.add_argument("--num-frames", type=int, default=8, help="frames in total, split over a batch of 2")
    parser.add_argument("--device", default="cpu")
    run_cli(
        parser,
        lambda args: run(args.upstream, preset=args.preset, num_frames=args.num_frames, device=args.device,
                         deps=args.deps),
        "max rel diff (preset {preset}, {device})",
    )


if __name__ == "__main__":
    main()
