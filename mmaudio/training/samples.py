"""Audio samples during training: a few validation rows sampled with the current network (Euler,
classifier-free guidance as at inference), decoded by the weight profile's VAE and vocoder, logged
to MLflow as wav files and mel-spectrogram images next to the decoded ground truth.

Decoding needs the profile's ``audio`` and ``vocoder`` weights; when they are missing the samples are
skipped once, with the reason logged and tagged on the run (``train.audio_samples``), and training
goes on: samples are a diagnostic, not an output of the stage.
"""

from __future__ import annotations

import logging
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch

from mmaudio.config import Params, find_repo_root
from mmaudio.features import FeatureSet
from mmaudio.model.flow_matching import DEFAULT_CFG_STRENGTH, DEFAULT_NUM_STEPS, cfg_velocity_fn, euler_sample
from mmaudio.model.network import MMAudioNetwork
from mmaudio.tracking import StageRun
from mmaudio.training.loader import TrainSource, read_rows

log = logging.getLogger(__name__)

SAMPLE_SEED_OFFSET = 104_729  # the samples' noise: train.seed + this, the same at every step


def write_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """Mono float audio in [-1, 1] -> 16-bit PCM wav (the standard library's writer: no codec needed)."""
    pcm = (audio.float().clamp(-1, 1).cpu().numpy() * 32767).round().astype(np.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


def write_spectrogram(path: Path, mel: torch.Tensor, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.imshow(mel.float().cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest")
    ax.set(title=title, xlabel="frame", ylabel="mel bin")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class AudioSampler:
    """Samples ``num`` rows of ``features`` at each call and logs them to ``run`` (rank 0 only)."""

    def __init__(self, params: Params, features: FeatureSet, num: int, device: torch.device, run: StageRun):
        self.params, self.features, self.device, self.run = params, features, device, run
        self.num = min(num, len(features))
        self.encoders = None
        self.disabled: str | None = None if self.num > 0 else "train.num_audio_samples is 0"

    def _load(self) -> bool:
        if self.encoders is not None or self.disabled:
            return self.disabled is None
        from mmaudio.encoders.feature_encoders import FeatureEncoders
        from mmaudio.encoders.profiles import MissingWeightsError

        try:
            self.encoders = FeatureEncoders(self.params.profile, self.features.mode, root=find_repo_root(),
                                            device=self.device, components=("audio", "vocoder"))
        except MissingWeightsError as e:
            self.disabled = f"skipped: {str(e).splitlines()[0]}"
            log.warning("audio samples %s", self.disabled)
            self.run.set_tags({"train.audio_samples": self.disabled})
            return False
        self.run.set_tags({"train.audio_samples": f"{self.num} rows of {self.features.path.name}"})
        return True

    @torch.no_grad()
    def __call__(self, net: MMAudioNetwork, step: int) -> None:
        if not self._load():
            return
        idx = torch.arange(self.num)
        batch = read_rows([TrainSource("samples", self.features)], torch.zeros_like(idx), idx, self.features.mode)
        batch = batch.to(self.device)
        was_training = net.training
        net.eval()
        no_text = torch.zeros(self.num, dtype=torch.bool, device=self.device)
        clip_f, sync_f, text_f = net.replace_with_empty(batch.clip_features, batch.sync_features, batch.text_features,
                                                        null_video=~batch.video_exist, null_text=no_text)
        conditions = net.preprocess_conditions(clip_f, sync_f, text_f)
        empty = net.get_empty_conditions(self.num)
        gen = torch.Generator(self.device).manual_seed(self.params.train.seed + SAMPLE_SEED_OFFSET)
        x0 = torch.empty_like(batch.latent_mean).normal_(generator=gen)
        velocity = cfg_velocity_fn(net.predict_flow, conditions, empty, DEFAULT_CFG_STRENGTH)
        latents = net.unnormalize(euler_sample(velocity, x0, num_steps=DEFAULT_NUM_STEPS))  # (n, N, C)
        net.train(was_training)
        enc = self.encoders
        with tempfile.TemporaryDirectory() as tmp:
            for kind, lat in (("sample", latents), ("truth", batch.latent_mean)):
                mel = enc.decode_latents(lat.float())  # (n, n_mels, T)
                audio = enc.vocode(mel)  # (n, L)
                for i in range(self.num):
                    name = f"{self.features.ids[i]}_{kind}"
                    write_wav(Path(tmp) / f"{name}.wav", audio[i], enc.sample_rate)
                    write_spectrogram(Path(tmp) / f"{name}.png", mel[i], f"{name} @ step {step}")
            for f in sorted(Path(tmp).iterdir()):
                self.run.log_artifact(f, artifact_path=f"samples/step_{step:07d}")
        log.info("logged %d audio samples at step %d", self.num, step)
