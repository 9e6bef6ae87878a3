"""The Motionformer video ViT that Synchformer uses as its visual feature extractor.

One segment of ``num_frames`` RGB frames becomes ``num_frames // tubelet_frames`` feature vectors:

1. a 3D patch embedding cuts the clip into tubelets (2 frames x 16 x 16 pixels for the official model),
   giving a (t, h, w) = (8, 14, 14) token grid, plus one CLS token;
2. positional embeddings are "separate": a spatial table shared by every frame plus a temporal table
   shared by every patch position;
3. ``depth`` blocks of divided space-time attention (TimeSformer style): each patch attends first to
   the same position in the other frames, then to the other positions of its own frame; the CLS
   token attends to everything and is seen by every group;
4. the patch tokens (CLS dropped) are layer-normed, and a pre-norm transformer encoder layer with a
   learned CLS token pools each frame's h*w tokens into one vector: (t, D) per segment.

Attribute names follow the official ``synchformer_state_dict.pth`` (``vfeat_extractor.*`` entries) so
its weights load strictly. ``patch_embed`` (a 2D patch conv) is never used in the forward pass; it is
kept only because the official file carries it.

A config may set ``feature_dim`` different from ``embed_dim``: the model then runs at ``embed_dim``
and a linear ``feature_proj`` maps each pooled vector to ``feature_dim``. Only cheap presets use it
(the 3D patch conv costs pixels x embed_dim, which dominates at 768); the official model has no
such layer, so its key layout is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6  # every LayerNorm of the official model


@dataclass(frozen=True)
class MotionformerConfig:
    """Architecture of a Motionformer feature extractor (official: Motionformer 'divided_224_16x4')."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4  # hidden width of every MLP (blocks and the pooling layer) = mlp_ratio * embed_dim
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16  # frames per segment
    tubelet_frames: int = 2  # frames per 3D patch
    feature_dim: int | None = None  # output width; None: embed_dim (no output projection, as official)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_frames:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of tubelet_frames {self.tubelet_frames}")

    @property
    def output_dim(self) -> int:
        """Width of each output vector."""
        return self.embed_dim if self.feature_dim is None else self.feature_dim

    @property
    def has_feature_proj(self) -> bool:
        return self.output_dim != self.embed_dim

    @property
    def grid_size(self) -> int:
        """Patches along each spatial side."""
        return self.image_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid_size**2

    @property
    def token_frames(self) -> int:
        """Token frames per segment = output vectors per segment."""
        return self.num_frames // self.tubelet_frames


class PatchEmbed2D(nn.Module):
    """Holds the 2D patch conv of the official file; Motionformer tokenises with the 3D one instead."""

    def __init__(self, cfg: MotionformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)


class PatchEmbed3D(nn.Module):
    """(N, 3, T, H, W) -> (N, D, T // tubelet_frames, h, w): one embedding per non-overlapping tubelet.

    Tubelets do not overlap, so the grid of a long clip holds the grids of all its segments that
    start on a tubelet boundary (see ``SynchformerVisual.encode_sync``).
    """

    def __init__(self, cfg: MotionformerConfig) -> None:
        super().__init__()
        kernel = (cfg.tubelet_frames, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (N, D, t, h, w)


class DividedAttention(nn.Module):
    """Multi-head attention restricted to groups of patch tokens (one time line or one frame).

    Input is (N, 1 + F*P, D): a CLS token then F frames of P patches. The CLS query attends to all
    tokens; every patch query attends to the CLS token plus the patches of its group.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_frames: int, over_time: bool) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.num_heads
        patches = (length - 1) // num_frames
        q, k, v = self.qkv(x).view(n, length, 3, h, dim // h).permute(2, 0, 3, 1, 4)  # each (N, H, L, d)

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (N, H, 1, d)

        def grouped(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, 1:].unflatten(2, (num_frames, patches))  # (N, H, F, P, d)
            # over time: one group per patch position, holding its F frames
            return t.transpose(2, 3) if over_time else t  # (N, H, G, M, d)

        q_, k_, v_ = grouped(q), grouped(k), grouped(v)
        groups = q_.shape[2]
        # the CLS key/value joins every group, in front
        cls_k = k[:, :, None, :1].expand(-1, -1, groups, -1, -1)  # (N, H, G, 1, d)
        cls_v = v[:, :, None, :1].expand(-1, -1, groups, -1, -1)
        k_ = torch.cat((cls_k, k_), dim=3)  # (N, H, G, 1+M, d)
        v_ = torch.cat((cls_v, v_), dim=3)
        out = F.scaled_dot_product_attention(q_, k_, v_)  # (N, H, G, M, d)
        if over_time:
            out = out.transpose(2, 3)  # (N, H, F, P, d)
        out = torch.cat((cls_out, out.flatten(2, 3)), dim=2)  # (N, H, L, d)
        out = out.transpose(1, 2).reshape(n, length, dim)  # (N, L, D)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Pre-norm block: time attention (norm3), then space attention (norm1), then MLP (norm2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = DividedAttention(dim, num_heads)  # over space
        self.timeattn = DividedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), num_frames, over_time=True)
        x = x + self.attn(self.norm1(x), num_frames, over_time=False)
        return x + self.mlp(self.norm2(x))


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Scaled dot-product attention of (N, Lq, D) queries over (N, Lk, D) keys/values, split into
    ``num_heads`` heads of D / num_heads -> (N, Lq, D), heads side by side (scale 1 / sqrt(D / H)).

    The layer classes here and in the evaluation extractors differ only in how they project q, k, v
    (packed or separate weights, under their checkpoints' names); the attention itself is this.
    """
    n, length, dim = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (num_heads, dim // num_heads)).transpose(1, 2)  # (N, H, L, d)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (N, H, Lq, d)
    return out.transpose(1, 2).reshape(n, length, dim)


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout (packed q/k/v).

    ``bias_kv`` adds its learned key and value bias tokens (``add_bias_kv=True``: ``bias_k``, ``bias_v``
    of shape (1, 1, D)), appended after the sequence's keys and values.
    """

    def __init__(self, dim: int, num_heads: int, bias_kv: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        if bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # each (N, L, D)
        if self.bias_k is not None:
            n = x.shape[0]
            k = torch.cat((k, self.bias_k.expand(n, -1, -1)), dim=1)  # (N, L+1, D)
            v = torch.cat((v, self.bias_v.expand(n, -1, -1)), dim=1)
        return self.out_proj(multi_head_attention(q, k, v, self.num_heads))


class SpatialPooling(nn.Module):
    """Pools each token frame's patches into one vector.

    A pre-norm transformer encoder layer (GELU MLP) over [CLS; patches]; the CLS output is the
    frame's feature. Parameter names match ``torch.nn.TransformerEncoderLayer`` plus ``cls_token``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = PackedSelfAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, mlp_ratio * dim)
        self.linear2 = nn.Linear(mlp_ratio * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, D) patch tokens of N frames -> (N, D)."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (N, 1+P, D)
        x = x + self.self_attn(self.norm1(x))
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0]


class Motionformer(nn.Module):
    """(N, 3, T, H, W) normalised segments -> (N, T // tubelet_frames, output_dim) features."""

    def __init__(self, cfg: MotionformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patches_per_frame + 1, d))  # CLS + one frame
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.token_frames, d))
        self.patch_embed = PatchEmbed2D(cfg)
        self.patch_embed_3d = PatchEmbed3D(cfg)
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.spatial_attn_agg = SpatialPooling(d, cfg.num_heads, cfg.mlp_ratio)
        # registered only when it exists, so the official state dict has no such key
        self.feature_proj = nn.Linear(d, cfg.output_dim) if cfg.has_feature_proj else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation for weights that are not loaded from a file.

        ViT-style: truncated normal (std 0.02) for linear layers and embeddings, unit/zero LayerNorms,
        PyTorch's defaults for the patch convs. Upstream zeroes the 3D patch conv (it starts training
        from 2D-pretrained weights); here it keeps a random init so random-weight features still
        depend on the video.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, PackedSelfAttention):
                nn.init.xavier_uniform_(m.in_proj_weight)
                nn.init.zeros_(m.in_proj_bias)
        for p in (self.cls_token, self.pos_embed, self.temp_embed, self.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, cfg.num_frames, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"Motionformer segments must be (N, 3, {cfg.num_frames}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(x.shape)}"
            )
        return self.forward_tubelets(self.patch_embed_3d(x))

    def forward_tubelets(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, D, t, h, w) tubelet embeddings of N segments (``patch_embed_3d``'s output) -> (N, t, output_dim)."""
        cfg = self.cfg
        frames, patches = cfg.token_frames, cfg.patches_per_frame
        if tuple(grid.shape[1:]) != (cfg.embed_dim, frames, cfg.grid_size, cfg.grid_size):
            raise ValueError(
                f"Motionformer tubelet grid must be (N, {cfg.embed_dim}, {frames}, {cfg.grid_size}, {cfg.grid_size}), "
                f"got {tuple(grid.shape)}"
            )
        n = grid.shape[0]
        x = grid.flatten(2).transpose(1, 2)  # (N, F*P, D), frame-major: index = f * P + row * w + col
        # separate space/time positions: spatial table tiled over frames + temporal table per frame
        pos = self.pos_embed[:, 1:].repeat(1, frames, 1) + self.temp_embed.repeat_interleave(patches, dim=1)
        x = x + pos  # (N, F*P, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)  # (N, 1, D)
        x = torch.cat((cls, x), dim=1)  # (N, 1+F*P, D)
        for block in self.blocks:
            x = block(x, frames)
        x = self.norm(x[:, 1:])  # (N, F*P, D); the ViT's CLS token is not used for features
        x = self.spatial_attn_agg(x.reshape(n * frames, patches, -1))  # (N*F, D)
        if self.feature_proj is not None:
            x = self.feature_proj(x)  # (N*F, feature_dim)
        return x.view(n, frames, -1)  # (N, F, feature_dim)
