"""Building blocks of the MM-DiT flow network: SwiGLU feed-forwards, adaLN transformer blocks, joint
attention over (latent, CLIP, text) tokens and the output block.

Submodule attribute names (``attn.qkv``, ``adaLN_modulation.1``, ``ffn.w1`` ...) are the state-dict key
layout of the official MMAudio checkpoints and must not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.model.embeddings import apply_rope

Modulation = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]

# -- how the token convolutions and gated feed-forwards run ----------------------------------------
#
# Same math, different kernels (bench/perf/train_step.py measures them):
#   conv 'native'        F.conv1d on the transposed (B, C, N) view: cuDNN wants (B, C, N) contiguous, so
#                        every call copies its input and output across the transpose (upstream's way)
#   conv 'channels_last' F.conv2d on a (B, C, 1, N) view whose strides are already channels-last:
#                        cuDNN's NHWC kernels read the (B, N, C) tensor as it lies, no copies
#   conv 'gemm'          im2col: the k shifted copies of the input side by side (B, N, k*C_in) times
#                        the flattened kernel, one tensor-core matmul (backward: two matmuls)
#   fuse_glu             SwiGLU's two input projections (w1, w3) as one matmul/conv on the
#                        concatenated weights: the input is read (and, for 'gemm', unfolded) once
# 'auto' picks the measured fastest on CUDA and the plain path on CPU, so the CPU tests and the
# parity scripts keep computing exactly what they always did. Results differ from the plain path
# only in floating-point summation order.
CONV_IMPLS = ("native", "channels_last", "gemm")
_KERNELS: dict[str, str | bool] = {"conv": "auto", "fuse_glu": "auto"}
# measured (bench/RESULTS.md): channels_last + fused GLU is the fastest small_16k training step on H200
_CUDA_DEFAULTS: dict[str, str | bool] = {"conv": "channels_last", "fuse_glu": True}


def set_kernels(*, conv: str | None = None, fuse_glu: bool | str | None = None) -> None:
    """Choose the kernels (for benchmarks and tests); 'auto' restores the default."""
    if conv is not None:
        if conv not in (*CONV_IMPLS, "auto"):
            raise ValueError(f"conv kernel must be one of {CONV_IMPLS} or 'auto', got {conv!r}")
        _KERNELS["conv"] = conv
    if fuse_glu is not None:
        if fuse_glu not in (True, False, "auto"):
            raise ValueError(f"fuse_glu must be True, False or 'auto', got {fuse_glu!r}")
        _KERNELS["fuse_glu"] = fuse_glu


def kernel_choice(name: str, x: torch.Tensor) -> str | bool:
    choice = _KERNELS[name]
    if choice != "auto":
        return choice
    return _CUDA_DEFAULTS[name] if x.is_cuda else ("native" if name == "conv" else False)


def token_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """Stride-1 zero-padded convolution along the token axis: x (B, N, C_in), weight (C_out, C_in, k)
    -> (B, N + 2 * padding - k + 1, C_out)."""
    impl = kernel_choice("conv", x)
    k = weight.shape[-1]
    if impl == "native":
        return F.conv1d(x.transpose(1, 2), weight, bias, padding=padding).transpose(1, 2)
    if impl == "channels_last":
        x4 = x.transpose(1, 2).unsqueeze(2)  # (B, C_in, 1, N), channels-last strides when x is contiguous
        w4 = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (C_out, C_in, 1, k)
        return F.conv2d(x4, w4, bias, padding=(0, padding)).squeeze(2).transpose(1, 2)
    if k == 1 and padding == 0:
        return F.linear(x, weight.squeeze(-1), bias)
    xp = F.pad(x, (0, 0, padding, padding))  # (B, N + 2p, C_in)
    n_out = xp.shape[1] - k + 1
    windows = torch.cat([xp[:, j : j + n_out] for j in range(k)], dim=-1)  # (B, N_out, k * C_in), tap-major
    return F.linear(windows, weight.permute(0, 2, 1).flatten(1), bias)  # kernel -> (C_out, k * C_in)


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d over the token axis of (B, N, C) tensors (weights stay in nn.Conv1d's layout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.stride == (1,) and self.dilation == (1,) and self.groups == 1 and self.padding_mode == "zeros"
        if not plain or isinstance(self.padding, str):
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return token_conv(x, self.weight, self.bias, self.padding[0])  # (B, N, C_out)


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """SwiGLU width used by the network: 2/3 of the nominal width, rounded up to ``multiple_of``
    (e.g. nominal 4 * 448 = 1792 -> 1194 -> 1280)."""
    hidden_dim = int(2 * hidden_dim / 3)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) with bias-free linear layers (SD3/LLaMA feed-forward)."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int = 256) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_choice("fuse_glu", x):
            gate, value = F.linear(x, torch.cat([self.w1.weight, self.w3.weight])).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * value)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvSwiGLU(nn.Module):
    """SwiGLU whose three projections are bias-free 1-D convolutions over the token axis."""

    def __init__(
        self, dim: int, hidden_dim: int, multiple_of: int = 256, kernel_size: int = 3, padding: int = 1
    ) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_dim, multiple_of)
        self.w1 = ChannelLastConv1d(dim, hidden, kernel_size=kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, kernel_size=kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, kernel_size=kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_choice("fuse_glu", x):
            both = torch.cat([self.w1.weight, self.w3.weight])  # (2 * hidden, dim, k)
            gate, value = token_conv(x, both, None, self.w1.padding[0]).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * value)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) attention; (B, H, N, D) x3 -> (B, N, H * D)."""
    # q/k/v come out of strided views; contiguous inputs avoid a cuDNN SDPA failure in training
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())  # (B, H, N, D)
    return out.transpose(1, 2).flatten(2).contiguous()  # (B, N, H*D)


class SelfAttentionProjections(nn.Module):
    """The qkv projection with per-head RMSNorm on q and k (QK-norm), then optional RoPE."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    def forward(self, x: torch.Tensor, rot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        # QUIRK: the 3*dim output is laid out as (head, channel, q/k/v) with q/k/v fastest, i.e.
        # q, k and v are interleaved channel by channel, not three consecutive blocks.
        qkv = self.qkv(x).view(b, n, self.num_heads, self.head_dim, 3).permute(0, 2, 1, 3, 4)  # (B, H, N, D, 3)
        q, k, v = qkv.unbind(-1)  # (B, H, N, D) each
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        return q, k, v


class MMDiTBlock(nn.Module):
    """adaLN-modulated transformer block; its attention step is split in two so that JointBlock can
    attend over several token streams at once.

    ``pre_only`` blocks only produce q/k/v (the last joint block's CLIP/text streams: their outputs are
    never used). ``kernel_size`` > 1 replaces the post-attention projection and the feed-forward
    by convolutions over the token axis; 1 uses linear layers.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        pre_only: bool = False,
        kernel_size: int = 7,
        padding: int = 3,
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttentionProjections(dim, num_heads)
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
            return
        if kernel_size == 1:
            self.linear1 = nn.Linear(dim, dim)
            self.ffn = SwiGLU(dim, int(dim * mlp_ratio))
        else:
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size=kernel_size, padding=padding)
            self.ffn = ConvSwiGLU(dim, int(dim * mlp_ratio), kernel_size=kernel_size, padding=padding)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], Modulation]:
        # x: (B, N, D); c: (B, 1, D) global or (B, N, D) per-token conditioning
        modulation = self.adaLN_modulation(c)
        if self.pre_only:
            shift_msa, scale_msa = modulation.chunk(2, dim=-1)
            rest: Modulation = (None, None, None, None)
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
            rest = (gate_msa, shift_mlp, scale_mlp, gate_mlp)
        qkv = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rot)
        return qkv, rest

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor, modulation: Modulation) -> torch.Tensor:
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + self.linear1(attn_out) * gate_msa
        x = x + self.ffn(modulate(self.norm2(x), shift_mlp, scale_mlp)) * gate_mlp
        return x

    def forward(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        qkv, modulation = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(*qkv), modulation)


class JointBlock(nn.Module):
    """One attention over the concatenated [latent | CLIP | text] tokens, each stream with its own
    weights (MM-DiT). Latent and CLIP tokens get RoPE on a shared timeline; text tokens get none."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, pre_only: bool = False) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = MMDiTBlock(dim, num_heads, mlp_ratio, pre_only=False, kernel_size=3, padding=1)
        self.clip_block = MMDiTBlock(dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=3, padding=1)
        self.text_block = MMDiTBlock(dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=1)

    def forward(
        self,
        latent: torch.Tensor,  # (B, N_latent, D)
        clip_f: torch.Tensor,  # (B, N_clip, D)
        text_f: torch.Tensor,  # (B, N_text, D)
        global_c: torch.Tensor,  # (B, 1, D)
        extended_c: torch.Tensor,  # (B, N_latent, D): global + per-frame sync conditioning
        latent_rot: torch.Tensor,
        clip_rot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)

        n_latent, n_clip = latent.shape[1], clip_f.shape[1]
        joint = [torch.cat([x_qkv[i], c_qkv[i], t_qkv[i]], dim=2) for i in range(3)]  # (B, H, N_all, D)
        out = attention(*joint)  # (B, N_all, D)

        latent = self.latent_block.post_attention(latent, out[:, :n_latent], x_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, out[:, n_latent : n_latent + n_clip], c_mod)
            text_f = self.text_block.post_attention(text_f, out[:, n_latent + n_clip :], t_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    """adaLN-modulated LayerNorm then a k=7 convolution to the latent channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, latent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(latent), shift, scale))  # (B, N, out_dim)
