"""One object that loads a weight profile's encoders and computes MMAudio's features with them.

    enc = FeatureEncoders("tiny", "16k", components=("audio", "text"))
    mean, std = enc.encode_audio(wave)           # (B, 128000) -> (B, 250, 20) each
    text = enc.encode_text(["a dog barks"])      # (B, 77, 1024)

Loading happens at construction, for the requested components only: their files are checked first
(one :class:`~mmaudio.encoders.profiles.MissingWeightsError` lists every missing file), then each
model is read strictly (a file that does not fit raises weights.WeightFileError naming it). Files of
components not requested are never opened. Every method runs under ``torch.inference_mode``.

Outputs are in the encoders' ``dtype`` on their ``device``. The mel spectrogram is always computed in
float32 (the STFT needs it); its result is cast to ``dtype`` for the VAE.

``amp=True`` runs the CLIP image tower and Synchformer under bfloat16 autocast (matmuls, convolutions
and attention in bf16, norms and softmax in float32): tensor-core bf16 rate on a GPU, and the features
change within bf16 tolerance (relative differences of order 1e-2), so a feature set extracted with
it is not bit-identical to a float32 one. Text, mel and VAE stay in ``dtype`` (they are cheap).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from mmaudio.encoders import profiles
from mmaudio.encoders.bigvgan import BigVGAN, load_vocoder
from mmaudio.encoders.clip import CLIPEncoder, load_clip, load_empty_string
from mmaudio.encoders.mel import MelConverter
from mmaudio.encoders.profiles import COMPONENTS, check_weights, weight_paths
from mmaudio.encoders.synchformer import SynchformerVisual, load_synchformer_visual
from mmaudio.encoders.vae import AudioVAE, latent_to_mel, load_vae, waveform_to_latent
from mmaudio.modes import mode_spec

__all__ = ["FeatureEncoders", "DEFAULT_COMPONENTS", "COMPONENTS", "bf16_autocast", "weight_paths"]

DEFAULT_COMPONENTS: tuple[str, ...] = ("audio", "clip", "sync", "text", "empty_string", "vocoder")


def bf16_autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled`` (the ``amp`` option of the video encoders)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class FeatureEncoders:
    """The encoders of weight profile ``profile`` ('tiny' | 'official') for audio ``mode`` ('16k' | '44k').

    ``root``: the repository root that the profile's folder (``ext_weights/``...) is relative to.
    ``clip_batch_size`` / ``sync_batch_size``: frames / segments per forward pass (None: all at once);
    each encode call may override them.
    ``amp``: bfloat16 autocast for the CLIP image tower and Synchformer (see the module docstring).
    """

    def __init__(
        self,
        profile: str,
        mode: str,
        *,
        root: str | os.PathLike = ".",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        components: Iterable[str] = DEFAULT_COMPONENTS,
        clip_batch_size: int | None = None,
        sync_batch_size: int | None = None,
        amp: bool = False,
    ) -> None:
        self.profile = profiles.get_profile(profile)
        self.mode = profiles.check_mode(mode)
        self.components = profiles.check_components(components)
        self.root = Path(root)
        self.device = torch.device(device)
        self.dtype = dtype
        self.clip_batch_size = clip_batch_size
        self.sync_batch_size = sync_batch_size
        self.amp = amp
        self.files = check_weights(profile, mode, self.components, root=root)  # relpath -> location

        self.mel: MelConverter | None = None
        self.vae: AudioVAE | None = None
        self.vocoder: BigVGAN | None = None
        self.clip: CLIPEncoder | None = None
        self.synchformer: SynchformerVisual | None = None
        self._empty_string: torch.Tensor | None = None
        wants = set(self.components)
        if "audio" in wants:
            self.vae = self._prepare(load_vae(self._file("audio"), self.profile.vae[mode]))
            self.mel = MelConverter(self.vae.preset.mel).to(self.device)  # float32 always
        if "vocoder" in wants:
            self.vocoder = self._prepare(load_vocoder(self._file("vocoder"), self.profile.vocoder[mode]))
        if wants & {"clip", "text"}:
            model = self._prepare(load_clip(self._file("clip"), self.profile.clip))
            # the wrapper's normalisation constants stay float32; only the model takes ``dtype``
            self.clip = CLIPEncoder(self.profile.clip, model=model).to(self.device)
        if "sync" in wants:
            self.synchformer = self._prepare(load_synchformer_visual(self._file("sync"), self.profile.synchformer))
        if "empty_string" in wants:
            self._empty_string = load_empty_string(self._file("empty_string")).to(self.device, self.dtype)

    def _file(self, component: str) -> Path:
        (relpath,) = profiles.component_files(self.mode, component)
        return self.files[relpath]

    def _prepare(self, module: torch.nn.Module):
        return module.to(self.device, self.dtype).eval().requires_grad_(False)

    def _need(self, component: str, model: object) -> None:
        if model is None:
            raise RuntimeError(
                f"FeatureEncoders was built without the '{component}' component "
                f"(components={self.components}); add it to components=..."
            )

    def __repr__(self) -> str:
        return (f"FeatureEncoders(profile={self.profile.name!r}, mode={self.mode!r}, components={self.components}, "
                f"device={self.device}, dtype={self.dtype}, amp={self.amp})")

    @property
    def sample_rate(self) -> int:
        return mode_spec(self.mode).sample_rate

    @property
    def clip_samples(self) -> int:
        return mode_spec(self.mode).num_audio_samples

    # -- audio ------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_audio(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform (B, L) at the mode's rate, in [-1, 1] -> (mean, std), each (B, L / (2 hop), latent_dim).

        16k: (B, 128000) -> (B, 250, 20); 44k: (B, 353280) -> (B, 345, 40).
        """
        self._need("audio", self.vae)
        if wave.ndim != 2:
            raise ValueError(f"encode_audio expects a waveform batch (B, L), got {tuple(wave.shape)}")
        mel = self.mel(wave.to(self.device, torch.float32)).to(self.dtype)  # (B, n_mels, T)
        mean, std = self.vae.encode(mel)  # each (B, latent_dim, T / 2)
        return mean.transpose(1, 2), std.transpose(1, 2)  # (B, T_latent, latent_dim): the memmaps' layout

    @torch.inference_mode()
    def decode_latents(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, T, latent_dim) -> log-mel (B, n_mels, 2 T)."""
        self._need("audio", self.vae)
        return latent_to_mel(latent.to(self.device, self.dtype), self.vae)

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, T) -> waveform (B, T * hop) in [-1, 1]."""
        self._need("vocoder", self.vocoder)
        return self.vocoder(mel.to(self.device, self.dtype)).squeeze(1)  # (B, L)

    @torch.inference_mode()
    def latents_to_waveform(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, T, latent_dim) -> waveform (B, 2 T * hop): VAE decoder, then vocoder."""
        return self.vocode(self.decode_latents(latent))

    # -- video and text ---------------------------------------------------------------------

    @torch.inference_mode()
    def encode_clip(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 384, 384) uint8 or float in [0, 1] (8 fps: T = 64 for 8 s) -> (B, T, 1024)."""
        self._need("clip", self.clip if "clip" in self.components else None)
        with bf16_autocast(self.device, self.amp):
            out = self.clip.encode_image(frames, batch_size=batch_size or self.clip_batch_size)
        return out.to(self.dtype)

    @torch.inference_mode()
    def encode_sync(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T, 3, 224, 224) uint8 or float in [0, 1] (25 fps: T = 200 for 8 s) -> (B, 192, 768)."""
        self._need("sync", self.synchformer)
        with bf16_autocast(self.device, self.amp):
            out = self.synchformer.encode_sync(frames, batch_size=batch_size or self.sync_batch_size)
        return out.to(self.dtype)

    @torch.inference_mode()
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, 77, 1024) per-token text features."""
        self._need("text", self.clip if "text" in self.components else None)
        return self.clip.encode_text(captions)

    def empty_string_feature(self) -> torch.Tensor:
        """Text features of '' from empty_string.pth: (77, 1024)."""
        self._need("empty_string", self._empty_string)
        return self._empty_string
