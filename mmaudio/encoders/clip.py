"""CLIP conditioning features, computed the way MMAudio computes them, with open_clip's own model.

MMAudio conditions on Apple's DFN5B CLIP ViT-H/14 (hub id ``apple/DFN5B-CLIP-ViT-H-14-384``):

- video: every 8 fps frame, 384x384 in [0, 1], normalised with the OpenAI CLIP mean/std, goes through
  the image tower; the pooled, projected embedding is L2-normalised: (B, T, 1024).
- text: a caption is tokenised to 77 ids; the features are the final-layer-norm outputs of *every*
  token position, before the text projection, each L2-normalised: (B, 77, 1024).
- ``empty_string.pth`` holds the text features of ``''`` with a leading batch axis: (1, 77, 1024);
  upstream reads it back and takes element ``[0]``.

The model object is always an unmodified ``open_clip.CLIP``: its state dict *is* the official one, so
``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` load strictly and tiny weights are
written in the same flat format. Nothing is downloaded unless a caller names a hub model explicitly
(``hf-hub:org/name``); the official preset otherwise reads the local Hugging Face cache only.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.weights import WeightFileError, load_state_dict_strict, load_weight_file, save_weight_file
from mmaudio.weights.manifest import WEIGHT_FILES
from mmaudio.weights.resolve import hf_cache_file

OFFICIAL_HUB_ID = WEIGHT_FILES["DFN5B-CLIP-ViT-H-14-384"].hf_repo
HUB_PREFIX = "hf-hub:"
# open_clip's built-in name whose tokenizer upstream uses (the plain BPE SimpleTokenizer shipped in
# the open_clip wheel, so building it needs no network).
TOKENIZER_NAME = "ViT-H-14-378-quickgelu"
# What MMAudio subtracts/divides on [0, 1] frames before the image tower (OpenAI's CLIP statistics;
# DFN5B's own preprocess config carries the same numbers).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# Names open_clip and the hub use for a full CLIP checkpoint, in the order they are preferred.
WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# The data contract every preset keeps (DESIGN.md: clip_features (64, 1024), text_features (77, 1024)).
FEATURE_DIM = 1024
TEXT_SEQ_LEN = 77
FRAME_SIZE = 384
VOCAB_SIZE = 49408  # the BPE tokenizer's id range; the token table must cover it


@dataclass(frozen=True)
class CLIPPreset:
    """Architecture of one open_clip CLIP model plus where its official weights live."""

    name: str
    embed_dim: int  # image feature size (after visual.proj)
    vision_image_size: int  # sets the positional-embedding grid; frames are FRAME_SIZE regardless
    vision_patch_size: int
    vision_width: int
    vision_layers: int
    vision_head_width: int
    vision_mlp_ratio: float
    text_width: int  # text feature size: the features are taken before text_projection
    text_heads: int
    text_layers: int
    text_mlp_ratio: float
    context_length: int = TEXT_SEQ_LEN
    vocab_size: int = VOCAB_SIZE
    quick_gelu: bool = True  # DFN5B was trained with QuickGELU; it has no weights, so a file can't tell
    frame_size: int = FRAME_SIZE
    hub_id: str | None = None  # where the official weights come from; None: seeded random weights

    def open_clip_cfg(self) -> dict:
        """The ``model_cfg`` dict open_clip's ``CLIP(**cfg)`` takes (the hub's open_clip_config.json)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": {
                "image_size": self.vision_image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "head_width": self.vision_head_width,
                "mlp_ratio": self.vision_mlp_ratio,
                "patch_size": self.vision_patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
                "mlp_ratio": self.text_mlp_ratio,
            },
        }


CLIP_PRESETS: dict[str, CLIPPreset] = {
    # DFN5B ViT-H/14: trained at 378 px (27x27 patches); MMAudio feeds 384 px frames, and the stride-14
    # patch conv drops the last 6 rows/columns, so the grid stays 27x27. 986,714,881 parameters.
    "official": CLIPPreset(
        name="official",
        embed_dim=1024,
        vision_image_size=378,
        vision_patch_size=14,
        vision_width=1280,
        vision_layers=32,
        vision_head_width=80,
        vision_mlp_ratio=4.0,
        text_width=1024,
        text_heads=16,
        text_layers=24,
        text_mlp_ratio=4.0,
        hub_id=OFFICIAL_HUB_ID,
    ),
    # Same contract at minimal cost. The text width must stay 1024 (features are pre-projection) and
    # the token table must cover the tokenizer's 49408 ids, so that 50.6M-entry table dominates the
    # ~59M parameters; everything else is one thin layer.
    "tiny": CLIPPreset(
        name="tiny",
        embed_dim=1024,
        vision_image_size=384,
        vision_patch_size=64,  # 6x6 patches
        vision_width=64,
        vision_layers=1,
        vision_head_width=32,
        vision_mlp_ratio=2.0,
        text_width=1024,
        text_heads=16,
        text_layers=1,
        text_mlp_ratio=1.0,
    ),
}


def get_clip_preset(preset: str | CLIPPreset) -> CLIPPreset:
    if isinstance(preset, CLIPPreset):
        return preset
    if preset not in CLIP_PRESETS:
        raise KeyError(f"unknown CLIP preset '{preset}' (known: {sorted(CLIP_PRESETS)})")
    return CLIP_PRESETS[preset]


def build_clip(
    preset: str | CLIPPreset,
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> open_clip.CLIP:
    """An open_clip CLIP with this preset's architecture and fresh weights.

    ``device='meta'`` builds the full model without memory (for key/shape/parameter checks). ``seed``
    makes the initialisation reproducible without disturbing the caller's global RNG.
    """
    cfg = get_clip_preset(preset).open_clip_cfg()
    device = torch.device(device)
    if seed is None:
        with device:
            model = open_clip.CLIP(**cfg)
    else:
        with torch.random.fork_rng(devices=[]), device:
            torch.manual_seed(seed)
            model = open_clip.CLIP(**cfg)
    return model.eval()


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat state dict of an open_clip checkpoint file (.safetensors, or torch .bin/.pth/.pt)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_weight_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    # safetensors holds raw tensors only: nothing in it can run code.
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightFileError(f"weight file {path} is not a readable safetensors file: {e}") from e


def resolve_clip_weights(
    source: str | os.PathLike | None,
    preset: str | CLIPPreset = "official",
    *,
    hf_cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Find the checkpoint file for ``source``.

    - a file: itself;
    - a directory (e.g. a hub snapshot): its open_clip checkpoint, safetensors preferred;
    - ``'hf-hub:org/name'``: downloaded (or taken from the cache) - the one path that may download;
    - ``None``: the preset's hub id looked up in the local Hugging Face cache only (works offline);
      ``hf_cache_dir`` overrides the cache location (default: huggingface_hub's, i.e. $HF_HUB_CACHE).
    """
    preset = get_clip_preset(preset)
    if source is None:
        if preset.hub_id is None:
            raise ValueError(f"CLIP preset '{preset.name}' has no official weights; pass a weights file")
        return _find_in_hf_cache(preset.hub_id, hf_cache_dir)
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return _download_from_hub(text[len(HUB_PREFIX):], hf_cache_dir)
    path = Path(source)
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no CLIP checkpoint ({' or '.join(WEIGHT_FILE_NAMES)}) in directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weight file not found: {path}")
    return path


def _find_in_hf_cache(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    found = hf_cache_file(repo_id, WEIGHT_FILE_NAMES, cache_dir)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"CLIP weights of '{repo_id}' are not in the local Hugging Face cache (looked for "
        f"{', '.join(WEIGHT_FILE_NAMES)}). Place them there, pass a file/directory, or ask for a "
        f"download explicitly with '{HUB_PREFIX}{repo_id}'."
    )


def _download_from_hub(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in WEIGHT_FILE_NAMES:
        try:
            return Path(hf_hub_download(repo_id, name, cache_dir=cache_dir))
        except EntryNotFoundError:
            continue  # the repo may publish only the other format
    raise FileNotFoundError(f"hub repo '{repo_id}' has none of {', '.join(WEIGHT_FILE_NAMES)}")


def load_clip(
    source: str | os.PathLike | None,
    preset: str | CLIPPreset = "official",
    *,
    device: str | torch.device = "cpu",
    hf_cache_dir: str | os.PathLike | None = None,
) -> open_clip.CLIP:
    """Build ``preset`` and load its weights strictly from ``source`` (see :func:`resolve_clip_weights`).

    The full-size model is first built with open_clip's random init on CPU (about 11 s and 4.5 GB for
    the official preset on one core) and then overwritten, which keeps open_clip's buffers intact.
    """
    path = resolve_clip_weights(source, preset, hf_cache_dir=hf_cache_dir)
    state_dict = read_clip_state_dict(path)
    model = build_clip(preset)
    load_state_dict_strict(model, state_dict, source=path)
    return model.to(device).eval()


def save_clip(model: open_clip.CLIP, path: str | os.PathLike) -> Path:
    """Write ``model``'s flat state dict in the official open_clip format (by suffix: .safetensors or torch)."""
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix != ".safetensors":
        return save_weight_file(state_dict, path)
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state_dict, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a half file under the real name
    return path


class CLIPEncoder(nn.Module):
    """A frozen open_clip CLIP with MMAudio's image and text feature extraction.

    ``CLIPEncoder('official')`` reads the weights from the local Hugging Face cache;
    ``CLIPEncoder('official', weights_path)`` from a file or directory (or ``'hf-hub:org/name'``, which
    may download); ``CLIPEncoder('tiny')`` uses seeded random weights unless a path is given;
    ``CLIPEncoder(preset, model=m)`` wraps an existing open_clip model.
    """

    def __init__(
        self,
        preset: str | CLIPPreset = "official",
        weights_path: str | os.PathLike | None = None,
        *,
        seed: int = 0,
        model: open_clip.CLIP | None = None,
        hf_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.preset = get_clip_preset(preset)
        if model is not None:
            if weights_path is not None:
                raise ValueError("pass either model or weights_path, not both")
        elif weights_path is None and self.preset.hub_id is None:
            model = build_clip(self.preset, seed=seed)
        else:
            model = load_clip(weights_path, self.preset, hf_cache_dir=hf_cache_dir)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(TOKENIZER_NAME)
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> CLIPEncoder:
        # A frozen feature extractor: dropout and friends stay off whatever the parent module does.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @torch.no_grad()
    def encode_image(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 384, 384) frames, uint8 or float in [0, 1] -> (B, T, 1024) unit-norm features.

        ``batch_size`` bounds how many frames go through the tower at once (default: all B*T); frames
        are converted and normalised one chunk at a time, so a float copy of the whole batch never exists.
        """
        size = self.preset.frame_size
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise ValueError(f"CLIP frames must be (B, T, 3, {size}, {size}), got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8 and not frames.is_floating_point():
            raise ValueError(f"CLIP frames must be uint8 or floats in [0, 1], got dtype {frames.dtype}")
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)  # (B*T, 3, H, W)
        step = b * t if batch_size is None or batch_size <= 0 else batch_size
        out = [self.model.encode_image(self._normalise(flat[i:i + step]), normalize=True) for i in range(0, b * t, step)]
        return torch.cat(out).unflatten(0, (b, t))  # (B, T, D)

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 or [0, 1] float -> normalised, model dtype.

        Upstream's arithmetic (torchvision's ToDtype(scale=True) multiplies uint8 by 1 / 255, then
        Normalize computes (x - mean) / std), in place on one fresh float32 tensor.
        """
        x = torch.empty(frames.shape, dtype=torch.float32, device=self.device)
        x.copy_(frames)
        if frames.dtype == torch.uint8:
            x.mul_(1.0 / 255)
        x.sub_(self.image_mean).div_(self.image_std)  # (N, 3, H, W)
        return x.to(self.dtype)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, 77) token ids (start token, BPE ids, end token, zero padding; truncated)."""
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not one string")
        return self.tokenizer(list(captions))

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, 1024): per-token final-layer-norm outputs, L2-normalised.

        open_clip's ``encode_text`` pools one token and projects it; MMAudio instead keeps every
        position and skips ``text_projection``, so the text tower is run here from its public parts.
        """
        m = self.model
        cast_dtype = m.transformer.get_cast_dtype()
        if self.device.type == "cuda" and tokens.device.type == "cpu":
            # A copy from pageable memory blocks the host until the GPU has finished all queued work;
            # from page-locked memory it is queued like a kernel, so extraction never waits here.
            tokens = tokens.pin_memory()
        tokens = tokens.to(self.device, non_blocking=True)
        x = m.token_embedding(tokens).to(cast_dtype)  # (B, L, W)
        x = x + m.positional_embedding.to(cast_dtype)  # (B, L, W)
        x = m.transformer(x, attn_mask=m.attn_mask)  # causal: position i sees ids 0..i only
        x = m.ln_final(x)  # (B, L, W)
        return F.normalize(x, dim=-1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, 77, 1024) per-token unit-norm text features."""
        return self.encode_tokens(self.tokenize(captions))


def compute_empty_string_feature(clip: CLIPEncoder) -> torch.Tensor:
    """Text features of ``''`` in ``empty_string.pth``'s layout: (1, 77, 1024), float32, on CPU."""
    return clip.encode_text([""]).float().cpu()


def save_empty_string(feature: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``empty_string.pth`` as upstream does: one (1, 77, D) tensor (read back with ``[0]``)."""
    if feature.ndim != 3 or feature.shape[0] != 1 or feature.shape[1] != TEXT_SEQ_LEN:
        raise ValueError(f"empty-string feature must be (1, {TEXT_SEQ_LEN}, D), got {tuple(feature.shape)}")
    return save_weight_file(feature.detach().cpu().contiguous(), path)


def load_empty_string(path: str | os.PathLike) -> torch.Tensor:
    """Read ``empty_string.pth`` -> (77, D), i.e. element ``[0]`` of the stored tensor as upstream takes it, read safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"empty-string feature file not found: {path}")
    # load_weight_file insists on a dict; this file is a bare tensor, so load it here, still weights-only.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightFileError(f"empty-string feature file {path} could not be read: {str(e).splitlines()[0]}") from e
    if isinstance(obj, Mapping) or not isinstance(obj, (torch.Tensor, list, tuple)) or len(obj) == 0:
        raise WeightFileError(f"empty-string feature file {path} must hold a (1, {TEXT_SEQ_LEN}, D) tensor, "
                              f"found {type(obj).__name__}")
    feature = obj[0]
    if not isinstance(feature, torch.Tensor) or feature.ndim != 2 or feature.shape[0] != TEXT_SEQ_LEN:
        got = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
        raise WeightFileError(f"empty-string feature file {path}: entry [0] must be ({TEXT_SEQ_LEN}, D), got {got}")
    return feature.float()

