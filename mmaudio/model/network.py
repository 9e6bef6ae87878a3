"""The MM-DiT flow network of MMAudio: predicts the flow velocity of audio latents given CLIP video
features, Synchformer sync features, CLIP text features and the flow time t.

Layout (per forward):
    CLIP (B, 64, 1024) ----proj----> clip tokens ----mean----> clip_cond ---+
    text (B, 77, 1024) ----proj----> text tokens ----mean----> text_cond ---+--> global_c (B, 1, D)
    sync (B, 192, 768) +pos-> proj -> nearest upsample to latent rate (B, N, D) --+   (+ t embedding)
    latent (B, N, C) --proj--> [joint blocks over latent|clip|text] -> [fused latent-only blocks]
                        --> final adaLN + conv --> velocity (B, N, C)
where extended_c = global_c + upsampled sync features conditions the latent stream per frame.

State-dict keys and shapes are those of upstream's ``MMAudio`` module for every official preset, so
``mmaudio_{small_16k,small_44k,medium_44k,large_44k,large_44k_v2}.pth`` load strictly and our files
load into upstream's network. Kept quirks are marked "QUIRK" where they are implemented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.model.embeddings import TimestepEmbedder, rope_rotations
from mmaudio.model.layers import ChannelLastConv1d, ConvSwiGLU, FinalBlock, JointBlock, MMDiTBlock, SwiGLU
from mmaudio.model.presets import NETWORK_PRESETS, NetworkPreset, get_network_preset
from mmaudio.weights import load_state_dict_strict, load_weight_file, save_weight_file

# Non-persistent buffers that some published/older weight files still contain; they are recomputed
# from the config, so a loader drops them before the strict load.
DERIVED_BUFFER_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")




@dataclass
class PreprocessedConditions:
    """Condition tensors that do not depend on the latent or t: computed once, reused every ODE step."""

    clip_f: torch.Tensor  # (B, N_clip, D) projected CLIP tokens
    sync_f: torch.Tensor  # (B, N_latent, D) projected sync features at latent rate
    text_f: torch.Tensor  # (B, N_text, D) projected text tokens
    clip_f_c: torch.Tensor  # (B, D) pooled CLIP condition
    text_f_c: torch.Tensor  # (B, D) pooled text condition


class MMAudioNetwork(nn.Module):
    """The flow network (module and parameter names follow the official state-dict layout)."""

    def __init__(
        self,
        preset: NetworkPreset,
        *,
        latent_mean: torch.Tensor | None = None,
        latent_std: torch.Tensor | None = None,
        empty_string_feat: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.preset = preset
        seq = preset.sequence
        self.latent_dim = preset.latent_dim
        self.hidden_dim = hidden = preset.hidden_dim
        self.num_heads = preset.num_heads
        self._latent_seq_len = seq.latent_seq_len
        self._clip_seq_len = seq.clip_seq_len
        self._sync_seq_len = seq.sync_seq_len
        self._text_seq_len = seq.text_seq_len
        self.sync_features_per_segment = seq.sync_features_per_segment  # 8

        # v2 swaps SELU for SiLU and adds a SiLU after the first Linear of the CLIP/text projections.
        # QUIRK (key layout): that extra module shifts the SwiGLU's Sequential index from 1 to 2
        # ('clip_input_proj.1.w1' in v1, 'clip_input_proj.2.w1' in v2).
        act: type[nn.Module] = nn.SiLU if preset.v2 else nn.SELU
        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(preset.latent_dim, hidden, kernel_size=7, padding=3),
            act(),
            ConvSwiGLU(hidden, hidden * 4, kernel_size=7, padding=3),
        )
        clip_head: list[nn.Module] = [nn.Linear(preset.clip_dim, hidden)] + ([nn.SiLU()] if preset.v2 else [])
        self.clip_input_proj = nn.Sequential(*clip_head, ConvSwiGLU(hidden, hidden * 4, kernel_size=3, padding=1))
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(preset.sync_dim, hidden, kernel_size=7, padding=3),
            act(),
            ConvSwiGLU(hidden, hidden * 4, kernel_size=3, padding=1),
        )
        text_head: list[nn.Module] = [nn.Linear(preset.text_dim, hidden)] + ([nn.SiLU()] if preset.v2 else [])
        self.text_input_proj = nn.Sequential(*text_head, SwiGLU(hidden, hidden * 4))

        self.clip_cond_proj = nn.Linear(hidden, hidden)
        self.text_cond_proj = nn.Linear(hidden, hidden)
        self.global_cond_mlp = SwiGLU(hidden, hidden * 4)
        # a learned position embedding for the 8 feature frames inside each Synchformer segment
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, self.sync_features_per_segment, preset.sync_dim))

        self.final_layer = FinalBlock(hidden, preset.latent_dim)
        if preset.v2:
            self.t_embed = TimestepEmbedder(hidden, num_freq_features=hidden, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(hidden, num_freq_features=256, max_period=10000)

        n_joint = preset.num_joint_blocks
        # the last joint block's CLIP/text outputs feed nothing, so those streams are pre_only there
        self.joint_blocks = nn.ModuleList(
            [
                JointBlock(hidden, preset.num_heads, preset.mlp_ratio, pre_only=(i == n_joint - 1))
                for i in range(n_joint)
            ]
        )
        self.fused_blocks = nn.ModuleList(
            [
                MMDiTBlock(hidden, preset.num_heads, preset.mlp_ratio, kernel_size=3, padding=1)
                for _ in range(preset.fused_depth)
            ]
        )

        # Latent statistics and the empty-string text features are saved in the weight file but never
        # trained. They are Parameters with requires_grad=False (not buffers) because that is how the
        # official module registers them: they count towards the official parameter totals. NaN
        # statistics make a forgotten load fail loudly instead of silently using 0/1.
        if (latent_mean is None) != (latent_std is None):
            raise ValueError("latent_mean and latent_std must be given together")
        if latent_mean is None:
            latent_mean = torch.full((preset.latent_dim,), float("nan"))
            latent_std = torch.full((preset.latent_dim,), float("nan"))
        for name, stat in (("latent_mean", latent_mean), ("latent_std", latent_std)):
            if stat.numel() != preset.latent_dim:
                raise ValueError(f"{name} has {stat.numel()} values, preset '{preset.name}' needs {preset.latent_dim}")
        if empty_string_feat is None:
            empty_string_feat = torch.zeros(self._text_seq_len, preset.text_dim)
        if tuple(empty_string_feat.shape) != (self._text_seq_len, preset.text_dim):
            raise ValueError(
                f"empty_string_feat has shape {tuple(empty_string_feat.shape)}, "
                f"expected ({self._text_seq_len}, {preset.text_dim})"
            )
        self.latent_mean = nn.Parameter(latent_mean.reshape(1, 1, -1).clone(), requires_grad=False)
        self.latent_std = nn.Parameter(latent_std.reshape(1, 1, -1).clone(), requires_grad=False)
        self.empty_string_feat = nn.Parameter(empty_string_feat.clone(), requires_grad=False)
        # learned "no video" features for classifier-free guidance
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, preset.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, preset.sync_dim))

        self.initialize_weights()
        self.register_buffer("latent_rot", torch.empty(0), persistent=False)
        self.register_buffer("clip_rot", torch.empty(0), persistent=False)
        self._reset_rotations()

    # ---- initialisation and derived buffers -------------------------------------------------------

    def initialize_weights(self) -> None:
        """Training-from-scratch init (draws from the global RNG; seed it for reproducibility).

        Xavier-uniform Linear layers with zero bias; N(0, 0.02) time-MLP weights; zero adaLN output
        layers and a zero output conv, so the untrained network predicts a velocity of exactly 0.
        Convolutions keep PyTorch's default init.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        adaln_outputs = [self.final_layer.adaLN_modulation[-1]]
        for joint in self.joint_blocks:
            adaln_outputs += [b.adaLN_modulation[-1] for b in (joint.latent_block, joint.clip_block, joint.text_block)]
        adaln_outputs += [b.adaLN_modulation[-1] for b in self.fused_blocks]
        for linear in adaln_outputs:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.final_layer.conv.weight)
        nn.init.zeros_(self.final_layer.conv.bias)
        nn.init.zeros_(self.sync_pos_emb)
        nn.init.zeros_(self.empty_clip_feat)
        nn.init.zeros_(self.empty_sync_feat)

    def _reset_rotations(self) -> None:
        device = self.latent_mean.device
        head_dim = self.hidden_dim // self.num_heads
        self.latent_rot = rope_rotations(self._latent_seq_len, head_dim, device=device)
        # CLIP frames (8 fps) are placed on the latent timeline (31.25 or 43.125 fps) by scaling the
        # frequencies with latent_len / clip_len, so co-occurring tokens share a rotation angle.
        self.clip_rot = rope_rotations(
            self._clip_seq_len, head_dim, freq_scaling=self._latent_seq_len / self._clip_seq_len, device=device
        )

    def reset_buffers(self) -> None:
        """Recompute the non-saved buffers (after ``to_empty`` from the meta device, for example)."""
        self._reset_rotations()
        self.t_embed.reset_buffers()

    def set_sequence_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int) -> None:
        """Run the same weights on clips of another duration (RoPE tables are rebuilt)."""
        if sync_seq_len % self.sync_features_per_segment != 0:
            raise ValueError(f"sync_seq_len {sync_seq_len} is not a multiple of {self.sync_features_per_segment}")
        self._latent_seq_len = latent_seq_len
        self._clip_seq_len = clip_seq_len
        self._sync_seq_len = sync_seq_len
        self._reset_rotations()

    # ---- latent normalisation -----------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latents -> unit-scale latents the flow is trained on. Returns a new tensor (upstream
        works in place; the values are identical)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    # ---- conditions ---------------------------------------------------------------------------------

    def preprocess_conditions(
        self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor
    ) -> PreprocessedConditions:
        """clip_f (B, 64, clip_dim), sync_f (B, 192, sync_dim), text_f (B, 77, text_dim) -> projected
        tokens and pooled conditions (lengths shown for 8 s clips)."""
        checks = (
            ("clip_f", clip_f, self._clip_seq_len),
            ("sync_f", sync_f, self._sync_seq_len),
            ("text_f", text_f, self._text_seq_len),
        )
        for name, x, n in checks:
            if x.dim() != 3 or x.shape[1] != n:
                raise ValueError(
                    f"{name} has shape {tuple(x.shape)}; expected (B, {n}, C) for preset '{self.preset.name}'"
                )
        bs = sync_f.shape[0]
        per_seg = self.sync_features_per_segment
        sync_f = sync_f.reshape(bs, self._sync_seq_len // per_seg, per_seg, -1) + self.sync_pos_emb  # (B, S, 8, C)
        sync_f = sync_f.flatten(1, 2)  # (B, N_sync, C)

        clip_f = self.clip_input_proj(clip_f)  # (B, N_clip, D)
        sync_f = self.sync_input_proj(sync_f)  # (B, N_sync, D)
        text_f = self.text_input_proj(text_f)  # (B, N_text, D)

        # sync features (24 fps) -> latent rate by nearest-neighbour resampling ('nearest-exact': pixel
        # centres aligned, unlike 'nearest')
        sync_f = F.interpolate(sync_f.transpose(1, 2), size=self._latent_seq_len, mode="nearest-exact").transpose(1, 2)

        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))  # (B, D)
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))  # (B, D)
        return PreprocessedConditions(clip_f=clip_f, sync_f=sync_f, text_f=text_f, clip_f_c=clip_f_c, text_f_c=text_f_c)

    def get_empty_clip_sequence(self, bs: int) -> torch.Tensor:
        return self.empty_clip_feat.unsqueeze(0).expand(bs, self._clip_seq_len, -1)  # (B, 64, clip_dim)

    def get_empty_sync_sequence(self, bs: int) -> torch.Tensor:
        return self.empty_sync_feat.unsqueeze(0).expand(bs, self._sync_seq_len, -1)  # (B, 192, sync_dim)

    def get_empty_string_sequence(self, bs: int) -> torch.Tensor:
        return self.empty_string_feat.unsqueeze(0).expand(bs, -1, -1)  # (B, 77, text_dim)

    def get_empty_conditions(
        self, bs: int, *, negative_text_features: torch.Tensor | None = None
    ) -> PreprocessedConditions:
        """The unconditional branch of classifier-free guidance: empty video and empty (or negative)
        text. Computed once at batch 1 and expanded, except for per-sample negative text."""
        empty_text = negative_text_features if negative_text_features is not None else self.get_empty_string_sequence(1)
        cond = self.preprocess_conditions(self.get_empty_clip_sequence(1), self.get_empty_sync_sequence(1), empty_text)
        cond.clip_f = cond.clip_f.expand(bs, -1, -1)
        cond.sync_f = cond.sync_f.expand(bs, -1, -1)
        cond.clip_f_c = cond.clip_f_c.expand(bs, -1)
        if negative_text_features is None:
            cond.text_f = cond.text_f.expand(bs, -1, -1)
            cond.text_f_c = cond.text_f_c.expand(bs, -1)
        return cond

    def replace_with_empty(
        self,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        *,
        null_video: torch.Tensor,
        null_text: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Swap in the empty features where the (B,) bool masks are set: for samples without a video
        or caption, and for condition dropout in CFG training. Out of place; gradients reach
        empty_clip_feat / empty_sync_feat as with upstream's masked assignment."""
        v = null_video.view(-1, 1, 1)
        clip_f = torch.where(v, self.empty_clip_feat.to(clip_f.dtype), clip_f)
        sync_f = torch.where(v, self.empty_sync_feat.to(sync_f.dtype), sync_f)
        text_f = torch.where(null_text.view(-1, 1, 1), self.empty_string_feat.to(text_f.dtype), text_f)
        return clip_f, sync_f, text_f

    # ---- prediction ---------------------------------------------------------------------------------

    def predict_flow(self, latent: torch.Tensor, t: torch.Tensor, conditions: PreprocessedConditions) -> torch.Tensor:
        """latent (B, N, C) normalised, t (B,) in [0, 1] -> velocity (B, N, C)."""
        if latent.dim() != 3 or latent.shape[1] != self._latent_seq_len or latent.shape[2] != self.latent_dim:
            raise ValueError(
                f"latent has shape {tuple(latent.shape)}; expected (B, {self._latent_seq_len}, {self.latent_dim})"
                f" for preset '{self.preset.name}'"
            )
        clip_f, text_f = conditions.clip_f, conditions.text_f

        latent = self.audio_input_proj(latent)  # (B, N, D)
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)  # (B, D)
        global_c = self.t_embed(t).unsqueeze(1) + global_c.unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + conditions.sync_f  # (B, N, D)

        for block in self.joint_blocks:
            latent, clip_f, text_f = block(latent, clip_f, text_f, global_c, extended_c, self.latent_rot, self.clip_rot)
        for block in self.fused_blocks:
            latent = block(latent, extended_c, self.latent_rot)

        # QUIRK (upstream issue #55): the output block is modulated by global_c, not extended_c, so
        # the sync features do not reach it directly; the official weights are trained this way.
        return self.final_layer(latent, global_c)  # (B, N, C)

    def forward(
        self, latent: torch.Tensor, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_f))

    # ---- properties ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    @property
    def latent_seq_len(self) -> int:
        return self._latent_seq_len

    @property
    def clip_seq_len(self) -> int:
        return self._clip_seq_len

    @property
    def sync_seq_len(self) -> int:
        return self._sync_seq_len

    @property
    def text_seq_len(self) -> int:
        return self._text_seq_len


def build_network(
    preset: str | NetworkPreset,
    *,
    latent_mean: torch.Tensor | None = None,
    latent_std: torch.Tensor | None = None,
    empty_string_feat: torch.Tensor | None = None,
) -> MMAudioNetwork:
    """Build a network by preset name (``NETWORK_PRESETS``) or from a preset object; build under
    ``with torch.device('meta'):`` to inspect full-size models without allocating."""
    if isinstance(preset, str):
        preset = get_network_preset(preset)
    return MMAudioNetwork(preset, latent_mean=latent_mean, latent_std=latent_std, empty_string_feat=empty_string_feat)


def save_network_weights(net: MMAudioNetwork, path: str | os.PathLike) -> Path:
    """Write the weights in the official format: a flat ``{key: tensor}`` dict saved by torch.save."""
    return save_weight_file({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)


def load_network_weights(net: MMAudioNetwork, path: str | os.PathLike) -> None:
    """Load an official ``mmaudio_*.pth`` (or a file from ``save_network_weights``) strictly.

    Derived buffers that some files carry (``t_embed.freqs``, ``latent_rot``, ``clip_rot``) are dropped
    first; any other missing, unexpected or mis-shaped key is an error naming the file.
    """
    state = load_weight_file(path)
    for key in DERIVED_BUFFER_KEYS:
        state.pop(key, None)
    load_state_dict_strict(net, state, source=path)
