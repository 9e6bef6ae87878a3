"""The full Synchformer (visual + audio branches, sync transformer, offset head) behind av-benchmark's DeSync.

What av-benchmark computes (all paths relative to its repository):

* Video (extract_video.py:38-56, data/video_dataset.py:40-57,103-108): 8 s of frames at 25 fps,
  exactly 200 (fewer is an error), resized to 224 on the short side (bicubic, antialiased, uint8),
  centre-cropped to 224x224, scaled to [0, 1] then to [-1, 1]; cut into 24 segments of 16 frames
  every 8; the Motionformer gives 8 vectors of 768 per segment -> (24, 8, 768). These are the same
  features as MMAudio's ``sync_features`` (:mod:`mmaudio.encoders.synchformer`, whose Motionformer
  this module reuses unchanged).
* Audio (data/audio_dataset.py:196-222, extract.py:18-40,111-121, extraction_models.py:57-63): the
  file's channels averaged, resampled to 16 kHz with ``torchaudio.transforms.Resample`` defaults if
  needed (no mean removal), cut to 128000 samples (fewer is an error). Segments of 10240 samples
  (0.64 s = 16 video frames) every 5120 -> 24 segments. Each segment: torchaudio
  ``MelSpectrogram(sample_rate=16000, win_length=400, hop_length=160, n_fft=1024, n_mels=128)``
  (centred, reflect-padded, periodic Hann, power 2, HTK mel scale, no mel norm) -> 65 frames;
  ``log(x + 1e-6)``; zero-padded to 66 frames (after the log, so the pad column is 0); normalised as
  ``(x + 4.2677393) / (2 * 4.5689974)``. The AST branch gives 6 vectors of 768 per segment -> (24, 6, 768).
* DeSync (evaluate.py:171-191, synchformer/synchformer.py:12-30,59-74): per clip, the sync
  transformer classifies the first 14 segments of both streams (0-4.8 s) and the last 14 (3.2-8 s);
  each window's class is the argmax of 21 logits over the offsets ``linspace(-2, 2, 21)`` s, its
  score the absolute offset; DeSync is the mean over all clips and both windows.

Audio branch (synchformer/ast.py, hf_src/modeling_ast.py with ``ASTConfig()`` defaults and
``max_spec_t=66``): a 16x16 patch conv with stride 10 over the (128 mel, 66 frame) spectrogram gives a
12 x 6 (frequency x time) grid; CLS and distillation tokens in front, learned positions; 12 pre-norm
ViT layers (LayerNorm eps 1e-12, exact GELU) and a final LayerNorm; the two leading tokens are
dropped and a pre-norm transformer encoder layer with its own CLS token pools the 12 frequency tokens
of each time step (the same layer type as the Motionformer's spatial pooling) -> 6 vectors per segment.

Sync transformer (synchformer/transformer.py): features pass ``vproj``/``aproj`` (768 -> 768), are
layer-normed per stream, laid out as ``[OFF, video (112), MOD, audio (84)]`` = 198 tokens plus a learned
position table, 3 pre-norm GPT blocks (8 heads, GELU MLP x4, LayerNorm eps 1e-5), a final LayerNorm, and
``off_head`` maps the OFF token to the 21 offset logits.

Weight file: ``synchformer_state_dict.pth`` is one flat state dict of this whole model; av-benchmark
loads it strictly (extraction_models.py:52-54, extract_video.py:101-103, evaluate.py:28-30), and so does
:func:`load_synchformer_av` (every one of its 513 entries; tests/fixtures/keys/synchformer_full.json).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from mmaudio.encoders.motionformer import SpatialPooling, multi_head_attention
from mmaudio.encoders.synchformer import (
    FEATURE_DIM,
    FPS,
    SEGMENT_FRAMES,
    SEGMENT_STEP,
    SYNCHFORMER_PRESETS,
    SynchformerPreset,
    SynchformerVisual,
    num_sync_segments,
)
from mmaudio.evaluation.extractors.audio_frontend import resample_av_bench, to_mono_batch
from mmaudio.evaluation.extractors.common import load_extractor, save_extractor
from mmaudio.evaluation.resolver import DEFAULT_EXT_DIR
from mmaudio.weights import build_module

OFFICIAL_FILE_NAME = "synchformer_state_dict.pth"

# Audio side (extract.py:23-24, extraction_models.py:57-63, extract.py:31-37)
SAMPLE_RATE = 16_000  # Hz
AUDIO_SEGMENT_SAMPLES = 10_240  # 0.64 s, the span of one 16-frame video segment at 25 fps
AUDIO_SEGMENT_STEP = 5_120  # 0.32 s = 8 video frames
MEL_WIN_LENGTH = 400
MEL_HOP_LENGTH = 160
MEL_N_FFT = 1024
NUM_MEL_BINS = 128
MEL_FRAMES = 66  # spectrogram frames per segment after padding (65 computed; ast.py max_spec_t)
LOG_EPS = 1e-6
MEL_MEAN = -4.2677393
MEL_STD = 4.5689974  # the normalisation divides by 2 * MEL_STD

# One classified window (evaluate.py:180,185): 14 segments of each stream = 4.8 s.
WINDOW_SEGMENTS = 14
WINDOW_FRAMES = (WINDOW_SEGMENTS - 1) * SEGMENT_STEP + SEGMENT_FRAMES  # 120 frames
WINDOW_SAMPLES = (WINDOW_SEGMENTS - 1) * AUDIO_SEGMENT_STEP + AUDIO_SEGMENT_SAMPLES  # 76800 samples

# The clip av-benchmark evaluates (extract.py:47, video_dataset.py:40-41)
CLIP_DURATION_SEC = 8.0
CLIP_FRAMES = 200  # int(25 * 8)
CLIP_SAMPLES = 128_000  # int(16000 * 8)

NUM_OFFSET_CLASSES = 21
MAX_OFFSET_SEC = 2.0

# Every LayerNorm of the HF AST (ASTConfig.layer_norm_eps); the sync transformer uses PyTorch's 1e-5.
AST_LAYER_NORM_EPS = 1e-12


@dataclass(frozen=True)
class AudioBranchConfig:
    """The AST audio feature extractor (official: ``ASTConfig()`` defaults, ``max_spec_t=66``)."""

    hidden_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4  # intermediate width = mlp_ratio * hidden_dim (3072), also in the pooling layer
    num_mel_bins: int = NUM_MEL_BINS
    spec_frames: int = MEL_FRAMES
    patch_size: int = 16
    freq_stride: int = 10
    time_stride: int = 10
    feature_dim: int | None = None  # output width; None: hidden_dim (official, no projection)

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"AST hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def output_dim(self) -> int:
        return self.hidden_dim if self.feature_dim is None else self.feature_dim

    @property
    def freq_patches(self) -> int:
        return (self.num_mel_bins - self.patch_size) // self.freq_stride + 1  # 12

    @property
    def time_patches(self) -> int:
        """Output vectors per audio segment (6)."""
        return (self.spec_frames - self.patch_size) // self.time_stride + 1


@dataclass(frozen=True)
class SyncTransformerConfig:
    """The transformer that classifies the offset (official: GlobalTransformer, synchformer.py:51-57)."""

    dim: int = 768
    depth: int = 3
    num_heads: int = 8
    mlp_ratio: int = 4
    num_classes: int = NUM_OFFSET_CLASSES

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"sync transformer dim {self.dim} is not divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class SynchformerAVPreset:
    name: str
    visual: SynchformerPreset
    audio: AudioBranchConfig = field(default_factory=AudioBranchConfig)
    sync: SyncTransformerConfig = field(default_factory=SyncTransformerConfig)

    def __post_init__(self) -> None:
        a = self.audio
        contract = (a.output_dim, a.num_mel_bins, a.spec_frames, a.time_patches, self.sync.num_classes)
        expected = (FEATURE_DIM, NUM_MEL_BINS, MEL_FRAMES, 6, NUM_OFFSET_CLASSES)
        if contract != expected:
            raise ValueError(
                f"Synchformer preset '{self.name}' breaks the contract: (audio output_dim, mel bins, spectrogram "
                f"frames, audio vectors per segment, offset classes) = {contract}, must be {expected}"
            )

    @property
    def video_tokens_per_segment(self) -> int:
        return self.visual.features_per_segment  # 8

    @property
    def audio_tokens_per_segment(self) -> int:
        return self.audio.time_patches  # 6

    @property
    def num_sync_tokens(self) -> int:
        """OFF + video + MOD + audio tokens of one window (198)."""
        return 2 + WINDOW_SEGMENTS * (self.video_tokens_per_segment + self.audio_tokens_per_segment)


SYNCHFORMER_AV_PRESETS: dict[str, SynchformerAVPreset] = {
    # synchformer_state_dict.pth: 237,460,245 parameters = Motionformer 122,440,704 + AST branch
    # 92,400,384 + vproj/aproj 2 x 590,592 + sync transformer 21,437,973.
    "official": SynchformerAVPreset(name="official", visual=SYNCHFORMER_PRESETS["official"]),
    # Same inputs and outputs (768-wide features, 21 logits). The visual branch is the tiny preset of
    # mmaudio.encoders.synchformer; the AST runs at width 32 (one layer, 2 heads) with a linear
    # feature_proj to 768 (a layer only this preset has), the sync transformer at width 32, one block.
    "tiny": SynchformerAVPreset(
        name="tiny",
        visual=SYNCHFORMER_PRESETS["tiny"],
        audio=AudioBranchConfig(hidden_dim=32, depth=1, num_heads=2, mlp_ratio=1, feature_dim=FEATURE_DIM),
        sync=SyncTransformerConfig(dim=32, depth=1, num_heads=2, mlp_ratio=1),
    ),
}


def get_synchformer_av_preset(preset: str | SynchformerAVPreset) -> SynchformerAVPreset:
    if isinstance(preset, SynchformerAVPreset):
        return preset
    if preset not in SYNCHFORMER_AV_PRESETS:
        raise KeyError(f"unknown Synchformer preset '{preset}' (known: {sorted(SYNCHFORMER_AV_PRESETS)})")
    return SYNCHFORMER_AV_PRESETS[preset]


def offset_grid() -> torch.Tensor:
    """(21,) float32 offsets in seconds of the classes, -2.0 ... 2.0 in steps of 0.2.

    Built as upstream's ``make_class_grid(-2, 2, 21)``: numpy float64 linspace cast to float32, so each
    value is the float32 nearest to it (e.g. 0.2 is 0.20000000298...).
    """
    return torch.from_numpy(np.linspace(-MAX_OFFSET_SEC, MAX_OFFSET_SEC, NUM_OFFSET_CLASSES)).float()


# ----------------------------------------------------------------------------------------------
# Audio preprocessing


def num_audio_segments(num_samples: int) -> int:
    """Segments of 10240 samples every 5120 that fit in ``num_samples`` (128000 -> 24, 76800 -> 14)."""
    if num_samples < AUDIO_SEGMENT_SAMPLES:
        return 0
    return (num_samples - AUDIO_SEGMENT_SAMPLES) // AUDIO_SEGMENT_STEP + 1


def segment_audio(wave: torch.Tensor) -> torch.Tensor:
    """(B, L) at 16 kHz -> (B, S, 10240) overlapping segments (a view; a tail no segment reaches is dropped)."""
    if wave.ndim != 2:
        raise ValueError(f"Synchformer audio must be (B, L), got {tuple(wave.shape)}")
    if wave.shape[1] < AUDIO_SEGMENT_SAMPLES:
        raise ValueError(f"Synchformer needs at least {AUDIO_SEGMENT_SAMPLES} samples, got {wave.shape[1]}")
    return wave.unfold(1, AUDIO_SEGMENT_SAMPLES, AUDIO_SEGMENT_STEP)


_MEL_TRANSFORMS: dict[str, torchaudio.transforms.MelSpectrogram] = {}


def _mel_transform(device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    # Kept outside the model: upstream holds it in ExtractionModels, not in the Synchformer state dict.
    key = str(device)
    if key not in _MEL_TRANSFORMS:
        _MEL_TRANSFORMS[key] = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            win_length=MEL_WIN_LENGTH,
            hop_length=MEL_HOP_LENGTH,
            n_fft=MEL_N_FFT,
            n_mels=NUM_MEL_BINS,
        ).to(device)
    return _MEL_TRANSFORMS[key]


def sync_log_mel(segments: torch.Tensor) -> torch.Tensor:
    """(..., 10240) audio segments -> (..., 128, 66) normalised log-mel spectrograms, float32."""
    if segments.shape[-1] != AUDIO_SEGMENT_SAMPLES:
        raise ValueError(f"audio segments must have {AUDIO_SEGMENT_SAMPLES} samples, got {segments.shape[-1]}")
    x = _mel_transform(segments.device)(segments.float())  # (..., 128, 65) power
    x = torch.log(x + LOG_EPS)
    x = F.pad(x, (0, MEL_FRAMES - x.shape[-1]))  # zeros after the log (extract.py:33)
    return (x - MEL_MEAN) / (2 * MEL_STD)


def prepare_sync_audio(
    wave: torch.Tensor,
    sample_rate: int,
    duration_sec: float = CLIP_DURATION_SEC,
) -> torch.Tensor:
    """Waveform(s) (T,), (B, T) or (B, C, T) at ``sample_rate`` -> (B, int(16000 * duration_sec)).

    As ``SynchformerAudioDataset`` (data/audio_dataset.py:206-222): channels averaged, resampled with
    ``torchaudio.transforms.Resample`` defaults when the rate is not 16 kHz, cut; no mean removal. A
    clip that is too short is an error (upstream skips it with a logged error).
    """
    x = to_mono_batch(wave)  # (B, T)
    x = resample_av_bench(x, sample_rate, SAMPLE_RATE)
    expected = int(SAMPLE_RATE * duration_sec)
    if x.shape[1] < expected:
        raise ValueError(
            f"audio too short for Synchformer: {x.shape[1]} samples at {SAMPLE_RATE} Hz after resampling, "
            f"need {expected} ({duration_sec:g} s)"
        )
    return x[:, :expected]


# ----------------------------------------------------------------------------------------------
# Audio branch (AST)


class _Dense(nn.Module):
    """A Linear under the attribute name ``dense`` (the HF layout of ASTSelfOutput/Intermediate/Output)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class _AstSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no output projection here: HF keeps it in ASTSelfOutput (``attention.output.dense``)
        return multi_head_attention(self.query(x), self.key(x), self.value(x), self.num_heads)  # (N, L, D)


class _AstAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention = _AstSelfAttention(dim, num_heads)
        self.output = _Dense(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class _AstLayer(nn.Module):
    """Pre-norm ViT layer: x + attn(LN(x)), then + MLP(LN(.)) (HF ``ASTLayer``)."""

    def __init__(self, cfg: AudioBranchConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.attention = _AstAttention(d, cfg.num_heads)
        self.intermediate = _Dense(d, cfg.mlp_ratio * d)
        self.output = _Dense(cfg.mlp_ratio * d, d)
        self.layernorm_before = nn.LayerNorm(d, eps=AST_LAYER_NORM_EPS)
        self.layernorm_after = nn.LayerNorm(d, eps=AST_LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))


class _AstEncoder(nn.Module):
    def __init__(self, cfg: AudioBranchConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_AstLayer(cfg) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class _AstPatchEmbeddings(nn.Module):
    def __init__(self, cfg: AudioBranchConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            1, cfg.hidden_dim, kernel_size=cfg.patch_size, stride=(cfg.freq_stride, cfg.time_stride)
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, F, T) -> (N, f*t, D), frequency-major (token index = fi * t + ti)."""
        return self.projection(mel[:, None]).flatten(2).transpose(1, 2)


class _AstEmbeddings(nn.Module):
    def __init__(self, cfg: AudioBranchConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embeddings = _AstPatchEmbeddings(cfg)
        # upstream builds the table for 1024 frames and keeps the first f*t + 2 rows (ast.py:221-227)
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.freq_patches * cfg.time_patches + 2, d))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(mel)  # (N, f*t, D)
        n = x.shape[0]
        lead = torch.cat((self.cls_token, self.distillation_token), dim=1).expand(n, -1, -1)  # (N, 2, D)
        return torch.cat((lead, x), dim=1) + self.position_embeddings  # (N, 2+f*t, D)


class _AstBackbone(nn.Module):
    def __init__(self, cfg: AudioBranchConfig) -> None:
        super().__init__()
        self.embeddings = _AstEmbeddings(cfg)
        self.encoder = _AstEncoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_dim, eps=AST_LAYER_NORM_EPS)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(mel)))  # (N, 2+f*t, D)


class AudioFeatureExtractor(nn.Module):
    """(N, 128, 66) normalised log-mel segments -> (N, 6, output_dim) (``afeat_extractor.*`` keys)."""

    def __init__(self, cfg: AudioBranchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ast = _AstBackbone(cfg)
        # the Motionformer's spatial pooling layer: same type, key layout and LayerNorm eps (1e-6) as
        # upstream's FrequencyTransformerEncoderLayer (ast.py:61-75)
        self.freq_attn_agg = SpatialPooling(cfg.hidden_dim, cfg.num_heads, cfg.mlp_ratio)
        # registered only when it exists, so the official state dict has no such key
        self.feature_proj = nn.Linear(cfg.hidden_dim, cfg.output_dim) if cfg.output_dim != cfg.hidden_dim else None

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if mel.ndim != 3 or tuple(mel.shape[1:]) != (cfg.num_mel_bins, cfg.spec_frames):
            raise ValueError(
                f"AST input must be (N, {cfg.num_mel_bins}, {cfg.spec_frames}) log-mel segments, got {tuple(mel.shape)}"
            )
        n, f, t = mel.shape[0], cfg.freq_patches, cfg.time_patches
        x = self.ast(mel)[:, 2:]  # (N, f*t, D): CLS and distillation tokens dropped
        x = x.unflatten(1, (f, t)).transpose(1, 2).flatten(0, 1)  # (N*t, f, D): one group per time step
        x = self.freq_attn_agg(x)  # (N*t, D)
        if self.feature_proj is not None:
            x = self.feature_proj(x)
        return x.view(n, t, -1)  # (N, t, output_dim)


# ----------------------------------------------------------------------------------------------
# Sync transformer


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(multi_head_attention(self.query(x), self.key(x), self.value(x), self.num_heads))


class _SyncBlock(nn.Module):
    def __init__(self, cfg: SyncTransformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.attn = _SelfAttention(d, cfg.num_heads)
        # indices 0 and 2 carry weights, as upstream's Sequential(Linear, GELU, Linear, Dropout)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _PositionTable(nn.Module):
    """A learned (1, L, D) table added to the token sequence (key ``pos_emb_cfg.pos_emb``)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, num_tokens, dim))


class SyncTransformer(nn.Module):
    """(B, Tv, D) and (B, Ta, D) projected features of one window -> (B, num_classes) offset logits."""

    def __init__(self, cfg: SyncTransformerConfig, num_tokens: int) -> None:
        super().__init__()
        d = cfg.dim
        self.vis_in_lnorm = nn.LayerNorm(d)
        self.aud_in_lnorm = nn.LayerNorm(d)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_emb_cfg = _PositionTable(num_tokens, d)
        self.blocks = nn.Sequential(*(_SyncBlock(cfg) for _ in range(cfg.depth)))
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, cfg.num_classes)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        num_tokens = self.pos_emb_cfg.pos_emb.shape[1]
        if 2 + video.shape[1] + audio.shape[1] != num_tokens:
            raise ValueError(
                f"sync transformer takes {num_tokens - 2} feature tokens (one {WINDOW_SEGMENTS}-segment window), "
                f"got {video.shape[1]} video + {audio.shape[1]} audio"
            )
        x = torch.cat(
            (
                self.OFF_tok.expand(b, -1, -1),
                self.vis_in_lnorm(video),
                self.MOD_tok.expand(b, -1, -1),
                self.aud_in_lnorm(audio),
            ),
            dim=1,
        )  # (B, 1+Tv+1+Ta, D)
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])  # (B, num_classes), read from the OFF token


# ----------------------------------------------------------------------------------------------
# The whole model


class SynchformerAV(SynchformerVisual):
    """Frozen full Synchformer: video and audio features and the audio-visual offset classifier.

    A :class:`~mmaudio.encoders.synchformer.SynchformerVisual` (same ``vfeat_extractor`` Motionformer and
    ``encode_sync``) plus ``afeat_extractor``, ``vproj``, ``aproj`` and ``transformer``; its state dict
    is the whole of ``synchformer_state_dict.pth``.
    """

    def __init__(self, preset: str | SynchformerAVPreset = "official") -> None:
        av_preset = get_synchformer_av_preset(preset)
        super().__init__(av_preset.visual)
        self.av_preset = av_preset
        self.afeat_extractor = AudioFeatureExtractor(av_preset.audio)
        self.vproj = nn.Linear(av_preset.visual.motionformer.output_dim, av_preset.sync.dim)
        self.aproj = nn.Linear(av_preset.audio.output_dim, av_preset.sync.dim)
        self.transformer = SyncTransformer(av_preset.sync, av_preset.num_sync_tokens)
        self._init_new_parameters()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def _init_new_parameters(self) -> None:
        """Random init of the parts beyond the visual branch (never used with official weights).

        Linear layers ~ N(0, 0.02) truncated, LayerNorms unit/zero; the OFF/MOD tokens and the sync
        position table ~ N(0, 1) as upstream draws them; the AST tokens and positions ~ N(0, 0.02) so
        random-weight outputs still depend on the input.
        """
        for module in (self.afeat_extractor, self.vproj, self.aproj, self.transformer):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        pool = self.afeat_extractor.freq_attn_agg
        nn.init.xavier_uniform_(pool.self_attn.in_proj_weight)
        nn.init.zeros_(pool.self_attn.in_proj_bias)
        emb = self.afeat_extractor.ast.embeddings
        for p in (emb.cls_token, emb.distillation_token, emb.position_embeddings, pool.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        for p in (self.transformer.OFF_tok, self.transformer.MOD_tok, self.transformer.pos_emb_cfg.pos_emb):
            nn.init.normal_(p)

    # -- features -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_video_segments(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 224, 224) frames at 25 fps, uint8 or floats in [0, 1] -> (B, S, 8, 768).

        S = (T - 16) // 8 + 1 (200 -> 24, 120 -> 14). The [-1, 1] normalisation happens inside.
        """
        features = self.encode_sync(frames, batch_size=batch_size)  # (B, S*8, 768)
        return features.unflatten(1, (num_sync_segments(frames.shape[1]), self.av_preset.video_tokens_per_segment))

    @torch.no_grad()
    def encode_audio_segments(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) float waveform at 16 kHz -> (B, S, 6, 768); S = (L - 10240) // 5120 + 1 (128000 -> 24)."""
        segments = segment_audio(wave.to(self.device))  # (B, S, 10240)
        b, s = segments.shape[:2]
        mel = sync_log_mel(segments).to(self.dtype)  # (B, S, 128, 66)
        return self.afeat_extractor(mel.flatten(0, 1)).unflatten(0, (b, s))  # (B, S, 6, D)

    # -- offsets --------------------------------------------------------------------------------

    def compare(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """(B, 14, 8, 768) video and (B, 14, 6, 768) audio features of one window -> (B, 21) logits."""
        for name, x, per_segment in (
            ("video", video_features, self.av_preset.video_tokens_per_segment),
            ("audio", audio_features, self.av_preset.audio_tokens_per_segment),
        ):
            if x.ndim != 4 or x.shape[1] != WINDOW_SEGMENTS or x.shape[2] != per_segment:
                raise ValueError(
                    f"{name} features of one window must be (B, {WINDOW_SEGMENTS}, {per_segment}, D), "
                    f"got {tuple(x.shape)}"
                )
        v = self.vproj(video_features).flatten(1, 2)  # (B, 14*8, D)
        a = self.aproj(audio_features).flatten(1, 2)  # (B, 14*6, D)
        return self.transformer(v, a)

    @torch.no_grad()
    def predict_offsets(self, frames: torch.Tensor, wave: torch.Tensor) -> torch.Tensor:
        """Offset logits of one 4.8 s window: (B, 120, 3, 224, 224) frames at 25 fps (uint8 or [0, 1])
        and (B, 76800) audio at 16 kHz -> (B, 21), classes :func:`offset_grid` (seconds).

        Longer inputs that still give 14 segments (up to 127 frames / 81919 samples) are accepted, as
        upstream's segmenting ignores the tail; anything else is an error.
        """
        if num_sync_segments(frames.shape[1]) != WINDOW_SEGMENTS:
            raise ValueError(f"one window is {WINDOW_FRAMES} frames at 25 fps, got {frames.shape[1]}")
        if wave.ndim != 2 or num_audio_segments(wave.shape[1]) != WINDOW_SEGMENTS:
            raise ValueError(f"one window is (B, {WINDOW_SAMPLES}) samples at 16 kHz, got {tuple(wave.shape)}")
        return self.compare(self.encode_video_segments(frames), self.encode_audio_segments(wave))

    @torch.no_grad()
    def desync_logits(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """(B, Sv, 8, 768) and (B, Sa, 6, 768) clip features, Sv, Sa >= 14 -> (B, 2, 21) logits of the
        first 14 and the last 14 segments of each stream (evaluate.py:180,185)."""
        if video_features.shape[1] < WINDOW_SEGMENTS or audio_features.shape[1] < WINDOW_SEGMENTS:
            raise ValueError(
                f"DeSync needs at least {WINDOW_SEGMENTS} segments per stream, got video "
                f"{tuple(video_features.shape)}, audio {tuple(audio_features.shape)}"
            )
        first = self.compare(video_features[:, :WINDOW_SEGMENTS], audio_features[:, :WINDOW_SEGMENTS])
        last = self.compare(video_features[:, -WINDOW_SEGMENTS:], audio_features[:, -WINDOW_SEGMENTS:])
        return torch.stack((first, last), dim=1)

    @torch.no_grad()
    def desync(self, frames: torch.Tensor, wave: torch.Tensor) -> DesyncResult:
        """DeSync of 8 s clips: (B, 200, 3, 224, 224) frames at 25 fps and (B, 128000) audio at 16 kHz."""
        if frames.shape[1] != CLIP_FRAMES:
            raise ValueError(f"DeSync takes {CLIP_FRAMES} frames (8 s at 25 fps), got {frames.shape[1]}")
        if wave.ndim != 2 or wave.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"DeSync takes (B, {CLIP_SAMPLES}) samples (8 s at 16 kHz), got {tuple(wave.shape)}")
        logits = self.desync_logits(self.encode_video_segments(frames), self.encode_audio_segments(wave))
        return DesyncResult.from_logits(logits)


@dataclass(frozen=True)
class DesyncResult:
    """Per-clip outputs of the DeSync procedure (B clips, 2 windows each)."""

    logits: torch.Tensor  # (B, 2, 21) first and last window
    offsets_sec: torch.Tensor  # (B, 2) the argmax class's offset, signed

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> DesyncResult:
        grid = offset_grid().to(logits.device)
        return cls(logits=logits, offsets_sec=grid[logits.argmax(dim=-1)])

    @property
    def per_clip(self) -> torch.Tensor:
        """(B,) mean absolute offset of the two windows, seconds."""
        return self.offsets_sec.abs().mean(dim=1)


def desync_score(offsets_sec: torch.Tensor) -> float:
    """av-benchmark's DeSync: the mean absolute predicted offset over every clip and window (seconds).

    ``offsets_sec`` is (N, 2) (or any shape): upstream appends one ``abs(grid[argmax])`` per window and
    takes ``np.mean`` of the list (evaluate.py:182-191); float32 offsets are averaged in float64 as that does.
    """
    if offsets_sec.numel() == 0:
        raise ValueError("DeSync of zero clips is undefined")
    return float(offsets_sec.detach().abs().double().mean())


# ----------------------------------------------------------------------------------------------
# Building, loading, saving


def build_synchformer_av(
    preset: str | SynchformerAVPreset = "official",
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> SynchformerAV:
    """A :class:`SynchformerAV` with fresh weights (``device='meta'`` for key/shape checks only)."""
    return build_module(lambda: SynchformerAV(preset), device=device, seed=seed)


def load_synchformer_av(
    path: str | os.PathLike | None = None,
    preset: str | SynchformerAVPreset = "official",
    *,
    ext_dir: str | os.PathLike = DEFAULT_EXT_DIR,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> SynchformerAV:
    """Build ``preset`` and load the whole ``synchformer_state_dict.pth`` into it strictly.

    ``path=None`` resolves the official file as :func:`~mmaudio.evaluation.extractors.common.load_extractor` says.
    """
    return load_extractor(OFFICIAL_FILE_NAME, lambda: SynchformerAV(preset), path=path, ext_dir=ext_dir,
                          allow_download=allow_download, device=device)


def save_synchformer_av(model: SynchformerAV, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as one flat state dict, the layout of ``synchformer_state_dict.pth``."""
    return save_extractor(model, path)


def window_bounds(duration_sec: float = CLIP_DURATION_SEC) -> tuple[tuple[float, float], tuple[float, float]]:
    """(start, end) seconds of the first and last DeSync windows of a clip (8 s: (0, 4.8), (3.2, 8.0))."""
    segments = num_sync_segments(int(FPS * duration_sec))
    last_start = (segments - WINDOW_SEGMENTS) * SEGMENT_STEP / FPS
    window = WINDOW_FRAMES / FPS
    return (0.0, window), (last_start, last_start + window)


__all__ = [
    "AudioBranchConfig",
    "AudioFeatureExtractor",
    "DesyncResult",
    "SYNCHFORMER_AV_PRESETS",
    "SyncTransformer",
    "SyncTransformerConfig",
    "SynchformerAV",
    "SynchformerAVPreset",
    "build_synchformer_av",
    "desync_score",
    "get_synchformer_av_preset",
    "load_synchformer_av",
    "num_audio_segments",
    "offset_grid",
    "prepare_sync_audio",
    "save_synchformer_av",
    "segment_audio",
    "sync_log_mel",
    "window_bounds",
]
