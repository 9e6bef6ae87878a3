"""Audio samples during training: a few validation rows sampled with the current network by the
evaluation's sampler and settings (``evaluate.solver``, ``num_steps``, ``cfg_strength``, ``seed``;
:func:`mmaudio.evaluation.sampling.sample_latents`), decoded by the weight profile's VAE and vocoder,
logged to MLflow as wav files and mel-spectrogram images next to the decoded ground truth; the latest
spectrograms also go to ``<train.out_dir>/plots/images/`` (DVC image plots).

The train stage composes an :class:`AudioSamples` callback (rank 0) and hands it to the trainer,
which calls it every ``train.val_interval`` steps and at the end.

Decoding needs the profile's ``audio`` and ``vocoder`` weights; when they are missing the samples are
skipped once, with the reason logged and tagged on the run (``train.audio_samples``), and training
goes on: samples are a diagnostic, not an output of the stage.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch

from mmaudio.config import Params, find_repo_root
from mmaudio.encoders.feature_encoders import FeatureEncoders
from mmaudio.evaluation.sampling import sample_latents, sampling_options
from mmaudio.features import FeatureSet
from mmaudio.model.network import MMAudioNetwork
from mmaudio.tracking import StageRun
from mmaudio.training.loader import TrainSource, read_rows
from mmaudio.training.run_files import IMAGES_DIR
from mmaudio.weights import MissingWeightsError

log = logging.getLogger(__name__)


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


class AudioSamples:
    """Samples ``num`` rows of ``features`` at each call and logs them to the run it is given (rank 0 only).

    The same rows get the same noise at every call (row i's from ``(evaluate.seed, i)``), so the
    samples of successive steps differ only by what the network learned.
    """

    def __init__(self, params: Params, features: FeatureSet, num: int, device: torch.device):
        self.params, self.features, self.device = params, features, device
        self.num = min(num, len(features))
        self.options = sampling_options(params.train.sampling)
        self.encoders = None
        self.disabled: str | None = None if self.num > 0 else "train.num_audio_samples is 0"

    def _load(self, run: StageRun) -> bool:
        if self.encoders is not None or self.disabled:
            return self.disabled is None
        try:
            self.encoders = FeatureEncoders(self.params.profile, self.features.mode, root=find_repo_root(),
                                            device=self.device, components=("audio", "vocoder"))
        except MissingWeightsError as e:
            self.disabled = f"skipped: {str(e).splitlines()[0]}"
            log.warning("audio samples %s", self.disabled)
            run.set_tags({"train.audio_samples": self.disabled})
            return False
        run.set_tags({"train.audio_samples": f"{self.num} rows of {self.features.path.name}"})
        return True

    @torch.no_grad()
    def __call__(self, net: MMAudioNetwork, step: int, run: StageRun) -> None:
        if not self._load(run):
            return
        idx = torch.arange(self.num)
        batch = read_rows([TrainSource("samples", self.features)], torch.zeros_like(idx), idx, self.features.mode)
        batch = batch.to(self.device)
        was_training = net.training
        net.eval()
        latents = sample_latents(net, batch.clip_features, batch.sync_features, batch.text_features, idx.tolist(),
                                 self.options, video_exist=batch.video_exist).to(self.device)  # (n, N, C)
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
                run.log_artifact(f, artifact_path=f"samples/step_{step:07d}")
            # the latest spectrograms, under stable names, are DVC image plots (`dvc plots diff` puts
            # two experiments' side by side); rank 0 only, like every write of the stage
            images = Path(self.params.train.out_dir) / IMAGES_DIR
            images.mkdir(parents=True, exist_ok=True)
            for f in sorted(Path(tmp).glob("*.png")):
                shutil.copyfile(f, images / f.name)
        log.info("logged %d audio samples at step %d", self.num, step)
