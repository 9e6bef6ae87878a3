"""ImageBind (huge), vision and audio towers, for av-benchmark's IB-score.

av-benchmark builds ``imagebind_model.imagebind_huge(pretrained=True)`` from hkchengrex/ImageBind
(extraction_models.py:45, extract_video.py:108) and scores a clip by the cosine similarity of its video
embedding (from the reference video) and its audio embedding (from the generated audio), averaged
over clips (evaluate.py:164-169). Only two of ImageBind's six towers take part.

Video side (av-benchmark data/video_dataset.py, data/ib_data.py, extract_video.py:59-71):

1. frames decoded at 0.5 fps, the first ``int(0.5 * 8) = 4`` kept (video_dataset.py:17,40,66,96);
2. ``v2.Resize(224, bicubic)`` on the uint8 frames (short side to 224, long side
   ``int(224 * long / short)``, antialiased), ``ToImage``, ``ToDtype(float32, scale=True)``,
   ``Normalize`` with CLIP's mean/std (video_dataset.py:43-49);
3. three 224x224 crops along the long side: start, centre (offset ``ceil((L - 224) / 2)``), end
   (ib_data.py:27-83,87-127, ``SpatialCrop(224, 3)``); (3, T, 3, 224, 224);
4. every pair of consecutive frames is a 2-frame clip: 3 pairs x 3 crops = 9 clips, pair-major
   (extract_video.py:63-68);
5. ImageBind embeds the 9 clips and averages them (imagebind_model.py:448-473): the average of 9
   unit vectors (not renormalised).

Audio side (av-benchmark data/audio_dataset.py:144-193, extract.py:93-105): the file as decoded (all
channels), resampled to 16 kHz with ``torchaudio.functional.resample`` defaults when needed, no cut to
8 s. pytorchvideo's ``ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)`` picks clip
starts ``k * max(d - 2, 0) / 3`` (exact fractions, k = 0, 1, 2): for 8 s, [0, 2), [2, 4), [4, 6) s (the
last 2 s are never seen). Each clip (``waveform[:, int(start * 16000):int(end * 16000)]``) has its
mean (over all channels) subtracted *in place* (so overlapping clips of a short file see the earlier
clips' subtraction), then Kaldi fbank of channel 0 (``htk_compat=True``, Hanning window, 25 ms / 10 ms,
128 bins, no dither, no energy) -> (128, frames), zero-padded or cut to 204 frames, normalised as
``(x + 4.268) / 9.138`` (audio_dataset.py:27-63,150-186). The 3 clip embeddings (each unit-norm times
ImageBind's fixed audio logit scale 20) are averaged.

Architecture (imagebind/models/imagebind_model.py, multimodal_preprocessors.py, transformer.py):
vision: a (2, 14, 14) tubelet conv without bias (1280 wide) -> 256 tokens + CLS, learned positions,
a LayerNorm (eps 1e-6) before 32 pre-norm blocks (16 heads, GELU MLP x4, LayerNorm eps 1e-6); the
head takes the CLS token through LayerNorm and a bias-free Linear to 1024; L2 normalisation.
audio: a 16x16 conv with stride 10 without bias (768 wide) over (128, 204) -> 12 x 19 = 228 tokens,
LayerNorm (eps 1e-5), CLS, learned positions; 12 blocks (12 heads) whose attention has learned key and
value bias tokens (``add_bias_kv``); same head to 1024; L2 normalisation times exp(log 20).

Weight file: ``imagebind_huge.pth`` is a flat state dict of all six towers (1311 entries). This module
builds the vision and audio towers only and loads a *documented subset* strictly: every
``modality_{preprocessors,trunks,heads,postprocessors}.{vision,audio}.*`` entry must be present with
its shape and none may be extra; entries of the text, depth, thermal and imu towers are set aside, and
an entry that belongs to none of the six towers is an error. :func:`save_imagebind` writes the vision
and audio entries in the same flat layout (tests/fixtures/keys/imagebind_huge.json holds all 1311).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
import torchvision.transforms.v2.functional as TVF
from torch import nn
from torchvision.transforms import InterpolationMode

from mmaudio.encoders.motionformer import Mlp, PackedSelfAttention
from mmaudio.evaluation.extractors.common import load_extractor, save_extractor
from mmaudio.evaluation.resolver import DEFAULT_EXT_DIR
from mmaudio.weights import WeightFileError, build_module, load_weight_file

OFFICIAL_FILE_NAME = "imagebind_huge.pth"

EMBED_DIM = 1024  # the joint embedding space
BUILT_MODALITIES = ("vision", "audio")
SKIPPED_MODALITIES = ("text", "depth", "thermal", "imu")
KEY_GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")

# Vision input (imagebind_model.py:41-42,151-166; av-benchmark video_dataset.py:16-17,43-49)
IMAGE_SIZE = 224
CLIP_FRAMES = 2  # frames per vision clip (video_frames)
PATCH_SIZE = 14
VIDEO_FPS = 0.5
VIDEO_FRAMES = 4  # int(0.5 * 8 s)
NUM_CROPS = 3
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

# Audio input (imagebind_model.py:43-44,52-53; av-benchmark audio_dataset.py:150-160)
SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_FRAMES = 204
AUDIO_KERNEL = 16
AUDIO_STRIDE = 10
CLIP_DURATION_SEC = 2
CLIPS_PER_AUDIO = 3
FBANK_MEAN = -4.268
FBANK_STD = 9.138
AUDIO_LOGIT_SCALE = 20.0  # fixed (non-learnable) scale after normalisation (imagebind_model.py:426-429)
MAX_LOGIT_SCALE = 100.0

BLOCK_LAYER_NORM_EPS = 1e-6  # blocks, vision pre-LN and heads; the audio stem's LayerNorm uses 1e-5


@dataclass(frozen=True)
class TowerConfig:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class ImageBindPreset:
    name: str
    vision: TowerConfig = field(default_factory=lambda: TowerConfig(embed_dim=1280, depth=32, num_heads=16))
    audio: TowerConfig = field(default_factory=lambda: TowerConfig(embed_dim=768, depth=12, num_heads=12))
    out_embed_dim: int = EMBED_DIM

    def __post_init__(self) -> None:
        if self.out_embed_dim != EMBED_DIM:
            raise ValueError(
                f"ImageBind preset '{self.name}' breaks the contract: out_embed_dim {self.out_embed_dim}, "
                f"must be {EMBED_DIM}"
            )


IMAGEBIND_PRESETS: dict[str, ImageBindPreset] = {
    # imagebind_huge, vision and audio towers: 632,829,440 + 86,235,649 parameters (+ 1 buffer, the
    # audio logit scale). The whole file also holds text (354,038,570), depth (21,871,873), thermal
    # (86,211,073) and imu (19,600,385): 1,200,781,057 parameters.
    "official": ImageBindPreset(name="official"),
    # Same inputs (2-frame 224x224 clips, 128x204 fbanks) and 1024-d embeddings; width 32, one block.
    "tiny": ImageBindPreset(
        name="tiny",
        vision=TowerConfig(embed_dim=32, depth=1, num_heads=2, mlp_ratio=1),
        audio=TowerConfig(embed_dim=32, depth=1, num_heads=2, mlp_ratio=1),
    ),
}


def get_imagebind_preset(preset: str | ImageBindPreset) -> ImageBindPreset:
    if isinstance(preset, ImageBindPreset):
        return preset
    if preset not in IMAGEBIND_PRESETS:
        raise KeyError(f"unknown ImageBind preset '{preset}' (known: {sorted(IMAGEBIND_PRESETS)})")
    return IMAGEBIND_PRESETS[preset]


# ----------------------------------------------------------------------------------------------
# Preprocessing


def _crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the three crops along the long side (ib_data.py:66-79); square: all centred."""
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        return [(0, left), (top, left), (height - size, left)]
    return [(top, 0), (top, left), (top, width - size)]


def prepare_ib_video(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) uint8 frames at 0.5 fps -> (B, 3 * (T - 1), 3, 2, 224, 224) normalised clips.

    Clip order is pair-major: (pair 0: crops 0, 1, 2), (pair 1: ...), as av-benchmark builds it.
    """
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"ImageBind frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"ImageBind frames must be uint8 (decoded video), got {frames.dtype}")
    if frames.shape[1] < CLIP_FRAMES:
        raise ValueError(f"ImageBind needs at least {CLIP_FRAMES} frames, got {frames.shape[1]}")
    out = []
    for video in frames:  # (T, 3, H, W); torchvision's own ops, as upstream's v2 transform
        x = TVF.resize(video, [IMAGE_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = TVF.to_dtype(x, torch.float32, scale=True)
        x = TVF.normalize(x, mean=list(PIXEL_MEAN), std=list(PIXEL_STD))  # (T, 3, h, w)
        crops = [x[..., t : t + IMAGE_SIZE, l : l + IMAGE_SIZE] for t, l in _crop_offsets(*x.shape[-2:], IMAGE_SIZE)]
        crops = torch.stack(crops)  # (3, T, 3, 224, 224)
        # consecutive frame pairs, pair-major: (3 * (T - 1), 2, 3, 224, 224)
        pairs = torch.cat([crops[:, i : i + CLIP_FRAMES] for i in range(crops.shape[1] - 1)])
        out.append(pairs.transpose(1, 2))  # (n, 3, 2, 224, 224)
    return torch.stack(out)


def ib_audio_clip_bounds(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges of the clips ``ConstantClipsPerVideoSampler(2, 3)`` picks in ``num_samples``.

    Same arithmetic as pytorchvideo (clip_sampling.py) driven by ImageBind's ``get_clip_timepoints``:
    duration ``num_samples / sample_rate`` (a Python float), ``Fraction(max(d - 2, 0))`` split in 3,
    clips stop early if a start would pass the last possible one; bounds are ``int(t * sample_rate)``.
    """
    duration = num_samples / sample_rate
    max_start = Fraction(max(duration - CLIP_DURATION_SEC, 0))
    step = Fraction(max_start, CLIPS_PER_AUDIO)
    bounds = []
    index = 0
    while True:
        start = step * index
        bounds.append((int(start * sample_rate), int((start + CLIP_DURATION_SEC) * sample_rate)))
        index += 1
        if index >= CLIPS_PER_AUDIO or step * index > max_start:
            return bounds


def ib_fbank(clip: torch.Tensor) -> torch.Tensor:
    """(C, L) 16 kHz clip, already mean-removed -> (1, 128, 204) normalised fbank (channel 0 only)."""
    if clip.shape[-1] < 400:
        raise ValueError(f"ImageBind audio clip too short for one 25 ms frame: {clip.shape[-1]} samples")
    fbank = torchaudio.compliance.kaldi.fbank(
        clip,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).transpose(0, 1)  # (128, frames)
    pad = TARGET_FRAMES - fbank.shape[1]
    fbank = F.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :TARGET_FRAMES]
    return TVF.normalize(fbank[None], mean=[FBANK_MEAN], std=[FBANK_STD])  # (1, 128, 204)


def prepare_ib_audio(wave: torch.Tensor) -> torch.Tensor:
    """(B, L) or (B, C, L) float waveform at 16 kHz -> (B, 3, 1, 128, 204) normalised fbank clips."""
    if wave.ndim == 2:
        wave = wave[:, None]
    if wave.ndim != 3 or not wave.is_floating_point():
        raise ValueError(f"ImageBind audio must be float (B, L) or (B, C, L), got {tuple(wave.shape)} {wave.dtype}")
    out = []
    for item in wave:
        # upstream subtracts each clip's mean in place on a view of the file: work on a copy
        waveform = item.float().clone()  # (C, L)
        clips = []
        for start, end in ib_audio_clip_bounds(waveform.shape[1]):
            clip = waveform[:, start:end]
            clip -= clip.mean()
            clips.append(ib_fbank(clip))
        out.append(torch.stack(clips))  # (n, 1, 128, 204)
    return torch.stack(out)


def prepare_ib_audio_from(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Like :func:`prepare_ib_audio` for audio at any rate: resampled first with
    ``torchaudio.functional.resample`` defaults (audio_dataset.py:167-168), all channels kept."""
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave.float(), orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    return prepare_ib_audio(wave)


# ----------------------------------------------------------------------------------------------
# Towers


class _RepeatToClip(nn.Module):
    """Images (N, C, H, W) become 1-frame videos; a 1-frame video is repeated to 2 frames (PadIm2Video)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x[:, :, None]
        if x.shape[2] == 1:
            x = x.repeat(1, 1, CLIP_FRAMES, 1, 1)
        return x


class _Stem(nn.Module):
    """Patch projection (``proj``) and optional LayerNorm (``norm_layer``): input -> (N, tokens, D)."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (N, tokens, D), (T) H W order
        return self.norm_layer(x) if self.norm_layer is not None else x


class _PositionTable(nn.Module):
    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))


class _Preprocessor(nn.Module):
    """Stem + CLS token + learned positions (``RGBDTPreprocessor`` layout)."""

    def __init__(self, stem: _Stem, num_patches: int, dim: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rgbt_stem = stem
        self.pos_embedding_helper = _PositionTable(num_patches + 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)  # (N, P, D)
        num_positions = self.pos_embedding_helper.pos_embed.shape[1]
        if tokens.shape[1] + 1 != num_positions:
            # upstream would interpolate the table; av-benchmark's inputs never need it
            raise ValueError(f"ImageBind input gives {tokens.shape[1]} patches, the model has {num_positions - 1}")
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.pos_embedding_helper.pos_embed  # (N, 1+P, D)


class _Block(nn.Module):
    def __init__(self, cfg: TowerConfig, bias_kv: bool) -> None:
        super().__init__()
        d = cfg.embed_dim
        # nn.MultiheadAttention's layout; the audio tower's has learned key/value bias tokens
        self.attn = PackedSelfAttention(d, cfg.num_heads, bias_kv=bias_kv)
        self.norm_1 = nn.LayerNorm(d, eps=BLOCK_LAYER_NORM_EPS)
        self.mlp = Mlp(d, cfg.mlp_ratio * d)  # fc1, GELU, fc2
        self.norm_2 = nn.LayerNorm(d, eps=BLOCK_LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    """Optional input LayerNorm (``pre_transformer_layer.0``) then pre-norm blocks, batch-first."""

    def __init__(self, cfg: TowerConfig, pre_norm: bool, bias_kv: bool) -> None:
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(
            nn.LayerNorm(cfg.embed_dim, eps=BLOCK_LAYER_NORM_EPS) if pre_norm else nn.Identity()
        )
        self.blocks = nn.Sequential(*(_Block(cfg, bias_kv) for _ in range(cfg.depth)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(tokens))


class _SelectCls(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _head(dim: int, out_dim: int) -> nn.Sequential:
    # indices 0 and 2 carry the weights, as upstream's Sequential(LayerNorm, SelectElement(0), Linear)
    return nn.Sequential(nn.LayerNorm(dim, eps=BLOCK_LAYER_NORM_EPS), _SelectCls(), nn.Linear(dim, out_dim, bias=False))


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, p=2)


class _FixedLogitScale(nn.Module):
    """Multiplies by min(exp(log_logit_scale), 100); the log-scale is a buffer kept in the state dict."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=MAX_LOGIT_SCALE) * x


class ImageBind(nn.Module):
    """Frozen ImageBind vision and audio towers: 2-frame clips and fbanks -> 1024-d embeddings."""

    def __init__(self, preset: str | ImageBindPreset = "official") -> None:
        super().__init__()
        self.preset = p = get_imagebind_preset(preset)
        vd, ad = p.vision.embed_dim, p.audio.embed_dim
        kernel = (CLIP_FRAMES, PATCH_SIZE, PATCH_SIZE)
        vision_stem = _Stem(
            nn.Sequential(_RepeatToClip(), nn.Conv3d(3, vd, kernel_size=kernel, stride=kernel, bias=False))
        )
        audio_stem = _Stem(
            nn.Conv2d(1, ad, kernel_size=AUDIO_KERNEL, stride=AUDIO_STRIDE, bias=False),
            norm_layer=nn.LayerNorm(ad),
        )
        vision_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 256 (one token frame)
        audio_patches = ((NUM_MEL_BINS - AUDIO_KERNEL) // AUDIO_STRIDE + 1) * (
            (TARGET_FRAMES - AUDIO_KERNEL) // AUDIO_STRIDE + 1
        )  # 12 x 19 = 228
        # attribute names give the official key layout: modality_<part>.<modality>.*
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _Preprocessor(vision_stem, vision_patches, vd),
                "audio": _Preprocessor(audio_stem, audio_patches, ad),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _Trunk(p.vision, pre_norm=True, bias_kv=False),
                "audio": _Trunk(p.audio, pre_norm=False, bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict({"vision": _head(vd, p.out_embed_dim), "audio": _head(ad, p.out_embed_dim)})
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": _Normalize(), "audio": nn.Sequential(_Normalize(), _FixedLogitScale(AUDIO_LOGIT_SCALE))}
        )
        self.reset_parameters()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init (upstream's scheme: xavier-uniform Linear weights, zero biases, unit LayerNorms,
        N(0, 1/sqrt(D)) CLS tokens and positions); never used with official weights."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, PackedSelfAttention):
                nn.init.xavier_uniform_(m.in_proj_weight)
                nn.init.zeros_(m.in_proj_bias)
                if m.bias_k is not None:
                    nn.init.xavier_normal_(m.bias_k)
                    nn.init.xavier_normal_(m.bias_v)
        for pre in self.modality_preprocessors.values():
            scale = pre.cls_token.shape[-1] ** -0.5
            nn.init.normal_(pre.cls_token, std=scale)
            nn.init.normal_(pre.pos_embedding_helper.pos_embed, std=scale)

    def train(self, mode: bool = True) -> ImageBind:
        return super().train(False)  # a frozen feature extractor

    @property
    def device(self) -> torch.device:
        return self.modality_preprocessors["vision"].cls_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.modality_preprocessors["vision"].cls_token.dtype

    def _embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        x = self.modality_preprocessors[modality](x.to(self.device, self.dtype))
        x = self.modality_trunks[modality](x)
        return self.modality_postprocessors[modality](self.modality_heads[modality](x))

    def embed_vision(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, 3, 2, 224, 224) normalised clips -> (N, 1024) unit vectors."""
        if clips.ndim != 5 or tuple(clips.shape[1:]) != (3, CLIP_FRAMES, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"vision clips must be (N, 3, {CLIP_FRAMES}, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(clips.shape)}"
            )
        return self._embed("vision", clips)

    def embed_audio(self, fbanks: torch.Tensor) -> torch.Tensor:
        """(N, 1, 128, 204) normalised fbanks -> (N, 1024), unit vectors times the audio logit scale (20)."""
        if fbanks.ndim != 4 or tuple(fbanks.shape[1:]) != (1, NUM_MEL_BINS, TARGET_FRAMES):
            raise ValueError(f"audio fbanks must be (N, 1, {NUM_MEL_BINS}, {TARGET_FRAMES}), got {tuple(fbanks.shape)}")
        return self._embed("audio", fbanks)

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) uint8 frames at 0.5 fps (T = 4 for 8 s) -> (B, 1024): mean of the 9 clip embeddings."""
        clips = prepare_ib_video(frames)  # (B, n, 3, 2, 224, 224)
        b, n = clips.shape[:2]
        return self.embed_vision(clips.flatten(0, 1)).view(b, n, -1).mean(dim=1)

    @torch.no_grad()
    def encode_audio(self, wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """(B, L) or (B, C, L) float waveform -> (B, 1024): mean of the 3 clip embeddings (norm <= 20)."""
        fbanks = prepare_ib_audio_from(wave, sample_rate)  # (B, n, 1, 128, 204)
        b, n = fbanks.shape[:2]
        return self.embed_audio(fbanks.flatten(0, 1)).view(b, n, -1).mean(dim=1)


def ib_score(video_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> float:
    """av-benchmark's IB-score: the mean cosine similarity of paired (N, 1024) embeddings (evaluate.py:164-169)."""
    if video_embeddings.shape != audio_embeddings.shape or video_embeddings.ndim != 2:
        raise ValueError(
            f"IB-score needs paired (N, D) embeddings, got {tuple(video_embeddings.shape)} and "
            f"{tuple(audio_embeddings.shape)}"
        )
    return float(torch.cosine_similarity(video_embeddings, audio_embeddings, dim=-1).mean())


# ----------------------------------------------------------------------------------------------
# Building, loading, saving


def build_imagebind(
    preset: str | ImageBindPreset = "official",
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> ImageBind:
    """An :class:`ImageBind` (vision + audio) with fresh weights (``device='meta'``: shapes only)."""
    return build_module(lambda: ImageBind(preset), device=device, seed=seed)


def select_built_modalities(
    state_dict: dict[str, torch.Tensor], *, source: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """The vision and audio entries of an ImageBind state dict; text/depth/thermal/imu entries are set
    aside; an entry outside ``modality_<part>.<one of the six towers>.*`` is a :class:`WeightFileError`."""
    kept, unknown = {}, []
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) < 3 or parts[0] not in KEY_GROUPS or parts[1] not in BUILT_MODALITIES + SKIPPED_MODALITIES:
            unknown.append(key)
        elif parts[1] in BUILT_MODALITIES:
            kept[key] = value
    if unknown:
        raise WeightFileError(
            f"weight file {source}: {len(unknown)} entries belong to no ImageBind tower (e.g. {sorted(unknown)[:5]})"
        )
    return kept


def load_imagebind(
    path: str | os.PathLike | None = None,
    preset: str | ImageBindPreset = "official",
    *,
    ext_dir: str | os.PathLike = DEFAULT_EXT_DIR,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> ImageBind:
    """Build ``preset`` and load the vision and audio towers of ``imagebind_huge.pth`` strictly.

    ``path=None`` resolves the official file as :func:`~mmaudio.evaluation.extractors.common.load_extractor` says.
    """
    # every tensor (the logit-scale buffer too) comes from the file
    return load_extractor(
        OFFICIAL_FILE_NAME,
        lambda: ImageBind(preset),
        read=lambda p: select_built_modalities(load_weight_file(p), source=p),
        path=path,
        ext_dir=ext_dir,
        allow_download=allow_download,
        device=device,
    )


def save_imagebind(model: ImageBind, path: str | os.PathLike) -> Path:
    """Write the vision and audio towers as a flat state dict in ``imagebind_huge.pth``'s key layout."""
    return save_extractor(model, path)


__all__ = [
    "IMAGEBIND_PRESETS",
    "ImageBind",
    "ImageBindPreset",
    "TowerConfig",
    "build_imagebind",
    "get_imagebind_preset",
    "ib_audio_clip_bounds",
    "ib_fbank",
    "ib_score",
    "load_imagebind",
    "prepare_ib_audio",
    "prepare_ib_audio_from",
    "prepare_ib_video",
    "save_imagebind",
    "select_built_modalities",
]
