"""Synchformer visual features (``sync_features``), computed the way MMAudio computes them.

MMAudio keeps only the visual branch of Synchformer (a Motionformer ViT, see
:mod:`mmaudio.encoders.motionformer`) and feeds it the 25 fps video, short side resized to 224 and
centre-cropped to 224x224, values scaled to [0, 1] then normalised with mean = std = 0.5 (i.e. to
[-1, 1]). The frames are cut into overlapping segments of 16 frames every 8 frames; each segment
gives 8 vectors of 768. An 8 s clip has 200 frames -> (200 - 16) // 8 + 1 = 24 segments -> (192, 768).

Weight file format: ``synchformer_state_dict.pth`` is one flat state dict of the *whole* Synchformer
(visual and audio feature extractors, projections, the sync transformer). Only its
``vfeat_extractor.*`` entries are used, and they must fit exactly. :class:`SynchformerVisual` holds the
Motionformer under the attribute ``vfeat_extractor``, so its own state dict carries exactly those
keys, and :func:`save_synchformer_visual` writes them as a flat dict in the same format (the other
Synchformer parts are not part of this model and are not written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmaudio.encoders.motionformer import Motionformer, MotionformerConfig
from mmaudio.weights import build_module, WeightFileError, load_state_dict_strict, load_weight_file, save_weight_file

WEIGHT_PREFIX = "vfeat_extractor."  # key prefix of the visual branch in synchformer_state_dict.pth
OFFICIAL_FILE_NAME = "synchformer_state_dict.pth"

# The data contract every preset keeps (DESIGN.md: sync_features (192, 768) for 8 s at 25 fps).
FEATURE_DIM = 768
FRAME_SIZE = 224
FPS = 25.0
SEGMENT_FRAMES = 16
SEGMENT_STEP = 8
# Frames go from [0, 1] to [-1, 1] (torchvision Normalize(mean=0.5, std=0.5) in upstream's transform).
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


@dataclass(frozen=True)
class SynchformerPreset:
    name: str
    motionformer: MotionformerConfig

    def __post_init__(self) -> None:
        mf = self.motionformer
        contract = (mf.output_dim, mf.image_size, mf.num_frames)
        if contract != (FEATURE_DIM, FRAME_SIZE, SEGMENT_FRAMES):
            raise ValueError(
                f"Synchformer preset '{self.name}' breaks the feature contract: (output_dim, image_size, "
                f"num_frames) = {contract}, must be {(FEATURE_DIM, FRAME_SIZE, SEGMENT_FRAMES)}"
            )

    @property
    def features_per_segment(self) -> int:
        return self.motionformer.token_frames


SYNCHFORMER_PRESETS: dict[str, SynchformerPreset] = {
    # Motionformer 'divided_224_16x4' as Synchformer trained it: 122,440,704 parameters.
    "official": SynchformerPreset(name="official", motionformer=MotionformerConfig()),
    # Same contract at low cost. The 3D patch conv costs pixels x embed_dim whatever the patch size,
    # and at width 768 this preset took ~2 s per 8 s clip on one CPU core; so the model runs at width
    # 32 and a linear feature_proj (a layer only this preset has) gives the 768-wide features. 56 px
    # patches (4x4 per frame, 129 tokens per segment instead of 1569), one block, 2 heads, MLP ratio 1.
    "tiny": SynchformerPreset(
        name="tiny",
        motionformer=MotionformerConfig(
            embed_dim=32, depth=1, num_heads=2, mlp_ratio=1, patch_size=56, feature_dim=FEATURE_DIM
        ),
    ),
}


def get_synchformer_preset(preset: str | SynchformerPreset) -> SynchformerPreset:
    if isinstance(preset, SynchformerPreset):
        return preset
    if preset not in SYNCHFORMER_PRESETS:
        raise KeyError(f"unknown Synchformer preset '{preset}' (known: {sorted(SYNCHFORMER_PRESETS)})")
    return SYNCHFORMER_PRESETS[preset]


def num_sync_segments(num_frames: int) -> int:
    """Segments of SEGMENT_FRAMES every SEGMENT_STEP frames that fit in ``num_frames`` (200 -> 24)."""
    if num_frames < SEGMENT_FRAMES:
        return 0
    return (num_frames - SEGMENT_FRAMES) // SEGMENT_STEP + 1


def sync_seq_len(num_frames: int, preset: str | SynchformerPreset = "official") -> int:
    """Length of the feature sequence for ``num_frames`` frames (200 -> 192)."""
    return num_sync_segments(num_frames) * get_synchformer_preset(preset).features_per_segment


def segment_frames(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, S, 16, C, H, W) overlapping segments (a view; trailing frames that do
    not fill a segment are dropped, as upstream does)."""
    if frames.ndim != 5:
        raise ValueError(f"frames must be (B, T, C, H, W), got {tuple(frames.shape)}")
    if frames.shape[1] < SEGMENT_FRAMES:
        raise ValueError(f"Synchformer needs at least {SEGMENT_FRAMES} frames, got {frames.shape[1]}")
    return frames.unfold(1, SEGMENT_FRAMES, SEGMENT_STEP).permute(0, 1, 5, 2, 3, 4)  # (B, S, T, C, H, W)


def build_synchformer_visual(
    preset: str | SynchformerPreset = "official",
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> SynchformerVisual:
    """A :class:`SynchformerVisual` with fresh weights (``device='meta'`` for key/shape checks only)."""
    return build_module(lambda: SynchformerVisual(preset), device=device, seed=seed)


def read_synchformer_visual_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``vfeat_extractor.*`` entries of a (full or visual-only) Synchformer state-dict file."""
    path = Path(path)
    state_dict = load_weight_file(path)
    visual = {k: v for k, v in state_dict.items() if k.startswith(WEIGHT_PREFIX)}
    if not visual:
        raise WeightFileError(
            f"weight file {path} has no '{WEIGHT_PREFIX}*' entries (a Synchformer state dict has them; "
            f"found e.g. {sorted(state_dict)[:5]})"
        )
    return visual


def load_synchformer_visual(
    path: str | os.PathLike,
    preset: str | SynchformerPreset = "official",
    *,
    device: str | torch.device = "cpu",
) -> SynchformerVisual:
    """Build ``preset`` and load its ``vfeat_extractor.*`` weights strictly from ``path``.

    Like upstream, entries of the other Synchformer parts (audio branch, sync transformer) are
    ignored; every visual entry must be present with the right shape and none may be extra.
    """
    state_dict = read_synchformer_visual_state_dict(path)
    with torch.device("meta"):
        model = SynchformerVisual(preset)
    # meta parameters take the file's tensors as they are (no copy into a random init first)
    model.to_empty(device="cpu")
    load_state_dict_strict(model, state_dict, source=path)
    return model.to(device).eval()


def save_synchformer_visual(model: SynchformerVisual, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as a flat ``vfeat_extractor.*`` state dict (the official layout)."""
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_weight_file(state_dict, path)


class SynchformerVisual(nn.Module):
    """Frozen Synchformer visual feature extractor: video frames -> ``sync_features``."""

    def __init__(self, preset: str | SynchformerPreset = "official") -> None:
        super().__init__()
        self.preset = get_synchformer_preset(preset)
        # the attribute name gives the state dict the official 'vfeat_extractor.' key prefix
        self.vfeat_extractor = Motionformer(self.preset.motionformer)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SynchformerVisual:
        # A frozen feature extractor (as in upstream's FeaturesUtils): it never switches to training.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.vfeat_extractor.cls_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vfeat_extractor.cls_token.dtype

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        """(N, S, 16, 3, 224, 224) normalised segments -> (N, S, 8, 768)."""
        n, s = segments.shape[:2]
        x = segments.flatten(0, 1).transpose(1, 2)  # (N*S, C, T, H, W)
        return self.vfeat_extractor(x).unflatten(0, (n, s))  # (N, S, t, D)

    @torch.no_grad()
    def encode_sync(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 224, 224) frames, float in [0, 1] or uint8 -> (B, S*8, 768) features.

        T frames give S = (T - 16) // 8 + 1 segments (200 -> 24). ``batch_size`` is how many segments
        go through the transformer at once, counted over the flattened (B*S) segments in batch-major
        order; None or <= 0 means B, as upstream's ``encode_video_with_sync`` does. Segments are
        independent, so it changes memory use, not the result (beyond float rounding).

        Upstream embeds every 16-frame segment separately. Segments start every 8 frames, a multiple
        of the 2-frame tubelet, so each segment's tubelets are tubelets of the whole clip: the 3D
        patch conv runs once per clip and segments take views of its output. That is the same
        arithmetic per tubelet with half the conv work (segments overlap by half) and no
        (B*S, 16, 3, 224, 224) copy of the frames.
        """
        size = self.preset.motionformer.image_size
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise ValueError(f"Synchformer frames must be (B, T, 3, {size}, {size}), got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8 and not frames.is_floating_point():
            raise ValueError(f"Synchformer frames must be uint8 or floats in [0, 1], got dtype {frames.dtype}")
        b, num_frames = frames.shape[:2]
        num_segments = num_sync_segments(num_frames)
        if num_segments == 0:
            raise ValueError(f"Synchformer needs at least {SEGMENT_FRAMES} frames, got {num_frames}")
        mf = self.vfeat_extractor
        cfg = mf.cfg
        if SEGMENT_STEP % cfg.tubelet_frames:
            raise ValueError(f"segment step {SEGMENT_STEP} is not a multiple of the tubelet length {cfg.tubelet_frames}")
        used_frames = (num_segments - 1) * SEGMENT_STEP + SEGMENT_FRAMES  # trailing frames no segment reaches
        grids = [mf.patch_embed_3d(self._normalise(frames[i:i + 1, :used_frames])) for i in range(b)]
        grid = torch.cat(grids)  # (B, D, used_frames / tubelet, h, w)
        # segment s covers tubelets [s * step / tubelet, + token_frames)
        segments = grid.unfold(2, cfg.token_frames, SEGMENT_STEP // cfg.tubelet_frames)  # (B, D, S, h, w, t)
        segments = segments.permute(0, 2, 1, 5, 3, 4).flatten(0, 1)  # (B*S, D, t, h, w), a view
        step = b if batch_size is None or batch_size <= 0 else batch_size
        out = [mf.forward_tubelets(segments[i:i + step]) for i in range(0, segments.shape[0], step)]
        x = torch.cat(out)  # (B*S, t, D_out)
        return x.unflatten(0, (b, num_segments)).flatten(1, 2)  # (B, S*t, D_out)

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) uint8 or [0, 1] float -> (N, 3, T, H, W) in [-1, 1], the conv's layout, model dtype.

        Same arithmetic as upstream's transforms (torchvision's ToDtype(scale=True) multiplies uint8 by
        1 / 255, then Normalize computes (x - 0.5) / 0.5), done in place on one fresh float32 tensor.
        """
        n, t, c, h, w = frames.shape
        x = torch.empty((n, c, t, h, w), dtype=torch.float32, device=self.device)
        x.copy_(frames.transpose(1, 2))  # moves, converts and transposes in one pass
        if frames.dtype == torch.uint8:
            x.mul_(1.0 / 255)
        x.sub_(PIXEL_MEAN).div_(PIXEL_STD)
        return x.to(self.dtype)
