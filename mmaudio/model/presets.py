"""The flow network's presets: a registry of architectures by name, each with its audio mode.

No torch here: config validation reads a preset's mode (``train.network`` must match
``extract.mode``) without importing the network code, so a change to the network does not touch
the stages that only validate params.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmaudio.modes import ModeSpec, mode_spec


@dataclass(frozen=True)
class NetworkPreset:
    """Architecture of one flow network. Sequence lengths come from the audio ``mode``."""

    name: str
    mode: str  # mmaudio.modes.AudioMode: sequence lengths and latent width come from it
    num_heads: int
    depth: int  # total blocks: (depth - fused_depth) joint blocks, then fused_depth latent-only blocks
    fused_depth: int
    head_dim: int = 64
    mlp_ratio: float = 4.0
    clip_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    v2: bool = False  # large_44k_v2: SiLU input projections and a high-frequency time embedding

    @property
    def latent_dim(self) -> int:
        """VAE latent channels of the mode: 20 (16 kHz) / 40 (44.1 kHz)."""
        return self.sequence.latent_dim

    @property
    def hidden_dim(self) -> int:
        return self.head_dim * self.num_heads

    @property
    def num_joint_blocks(self) -> int:
        return self.depth - self.fused_depth

    @property
    def sequence(self) -> ModeSpec:
        return mode_spec(self.mode)


_SMALL = dict(num_heads=7, depth=12, fused_depth=8)
_MEDIUM = dict(num_heads=14, depth=12, fused_depth=8)
_LARGE = dict(num_heads=14, depth=21, fused_depth=14)
# tiny: the official data contract (latent/feature dims, sequence lengths) at CPU-test cost; 2 joint
# blocks so that both a full and a pre_only joint block are exercised, and one fused block.
_TINY = dict(num_heads=2, head_dim=32, depth=3, fused_depth=1)

NETWORK_PRESETS: dict[str, NetworkPreset] = {
    "small_16k": NetworkPreset(name="small_16k", mode="16k", **_SMALL),  # 157,283,644 params
    "small_44k": NetworkPreset(name="small_44k", mode="44k", **_SMALL),  # 157,409,144
    "medium_44k": NetworkPreset(name="medium_44k", mode="44k", **_MEDIUM),  # 621,805,944
    "large_44k": NetworkPreset(name="large_44k", mode="44k", **_LARGE),  # 1,030,002,168
    "large_44k_v2": NetworkPreset(name="large_44k_v2", mode="44k", v2=True, **_LARGE),  # 1,030,575,608
    "tiny_16k": NetworkPreset(name="tiny_16k", mode="16k", **_TINY),
    "tiny_44k": NetworkPreset(name="tiny_44k", mode="44k", **_TINY),
}


def get_network_preset(name: str) -> NetworkPreset:
    if name not in NETWORK_PRESETS:
        raise KeyError(f"unknown network preset '{name}' (known: {sorted(NETWORK_PRESETS)})")
    return NETWORK_PRESETS[name]
