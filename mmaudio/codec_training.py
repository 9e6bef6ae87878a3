"""Training the tiny profile's audio codec: the VAE (mel <-> latent) and the BigVGAN vocoder (mel -> wave).

Random tiny decoders turn every generated latent into noise, so nothing the flow network learns could
be heard or scored. This module trains both on example audio, on CPU in minutes:

- VAE: L1 between the decoded and the input log-mel (in the VAE's standardised units) plus a small KL
  term towards N(0, 1), as a mel VAE of this kind is trained (no adversarial loss).
- Vocoder: from ground-truth mels to the waveform, with L1 between the mels of output and target plus
  a multi-resolution STFT loss (spectral convergence + log magnitude). No discriminator: on 2 CPU cores
  it would double the step time for a gain the onset and mel metrics below do not need.

:func:`roundtrip_quality` measures audio -> mel -> VAE -> mel -> vocoder -> audio: mel L1, log-spectral
distance, and onset F1 against known event times.

Determinism: every random draw (init, segment choice, VAE sampling noise) comes from generators seeded
from ``seed``; with the same torch build and thread count the same seed gives the same weights.
Resumable: :func:`train_codec_part` saves its state every ``checkpoint_every`` steps to a file and
continues from it (bit-identically: the generators' states are in the checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmaudio.encoders.bigvgan import BigVGAN
from mmaudio.encoders.mel import MelConverter
from mmaudio.encoders.vae import AudioVAE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecTrainOptions:
    """How one codec part trains. ``segment_frames``: mel frames per training segment."""

    steps: int
    batch_size: int = 8
    segment_frames: int = 64
    learning_rate: float = 2e-3
    kl_weight: float = 1e-4  # VAE only
    stft_weight: float = 1.0  # vocoder only: weight of the multi-resolution STFT loss next to mel L1
    checkpoint_every: int = 100
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.segment_frames < 4:
            raise ValueError(f"invalid codec training options {self}")
        if self.segment_frames % 2:
            raise ValueError(f"segment_frames must be even (the VAE halves time), got {self.segment_frames}")


# -- data ------------------------------------------------------------------------------------------


class SegmentSampler:
    """Random fixed-length waveform segments of a set of mono clips, drawn from a seeded generator.

    Segments hold ``segment_frames * hop`` samples, so their mel has exactly ``segment_frames`` frames.
    """

    def __init__(self, waves: Sequence[torch.Tensor], hop: int, segment_frames: int, generator: torch.Generator):
        self.length = segment_frames * hop
        short = [i for i, w in enumerate(waves) if w.shape[-1] < self.length]
        if short:
            raise ValueError(f"clips {short[:10]} are shorter than a training segment of {self.length} samples")
        if not waves:
            raise ValueError("no audio to train the codec on")
        self.waves = [w.float() for w in waves]
        self.generator = generator

    def batch(self, size: int) -> torch.Tensor:
        """(size, length) float32."""
        idx = torch.randint(len(self.waves), (size,), generator=self.generator)
        out = []
        for i in idx.tolist():
            w = self.waves[i]
            start = int(torch.randint(w.shape[-1] - self.length + 1, (1,), generator=self.generator))
            out.append(w[start : start + self.length])
        return torch.stack(out)


# -- losses ----------------------------------------------------------------------------------------


STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256))  # fft, hop, win


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor,
                               resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + L1 of log magnitudes (Parallel WaveGAN's loss)."""
    total = pred.new_zeros(())
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, device=pred.device)
        p = torch.stft(pred, n_fft, hop, win, window=window, return_complex=True).abs().clamp(min=1e-7)
        t = torch.stft(target, n_fft, hop, win, window=window, return_complex=True).abs().clamp(min=1e-7)
        convergence = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
        total = total + convergence + F.l1_loss(p.log(), t.log())
    return total / len(resolutions)


def vae_loss(vae: AudioVAE, mel: torch.Tensor, generator: torch.Generator, kl_weight: float) -> tuple[torch.Tensor, dict]:
    """(loss, parts) for log-mel (B, n_mels, T): L1 in standardised units + kl_weight * KL(q || N(0, 1))."""
    posterior = vae.encode(mel)
    z = posterior.sample(generator)
    recon = vae.decode(z)
    l1 = ((recon - mel).abs() / vae.data_std).mean()
    var = posterior.std.pow(2)
    kl = 0.5 * (posterior.mean.pow(2) + var - 1.0 - var.clamp(min=1e-12).log()).mean()
    return l1 + kl_weight * kl, {"mel_l1": float(l1.detach()), "kl": float(kl.detach())}


def vocoder_loss(vocoder: BigVGAN, mel_converter: MelConverter, wave: torch.Tensor,
                 stft_weight: float) -> tuple[torch.Tensor, dict]:
    """(loss, parts) for waveforms (B, L): vocode their mel, compare mels (L1) and STFTs."""
    mel = mel_converter(wave)
    pred = vocoder(mel).squeeze(1)  # (B, L)
    mel_l1 = F.l1_loss(mel_converter(pred), mel)
    stft = multi_resolution_stft_loss(pred, wave)
    return mel_l1 + stft_weight * stft, {"mel_l1": float(mel_l1.detach()), "stft": float(stft.detach())}


# -- training --------------------------------------------------------------------------------------


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, gens: Mapping[str, torch.Generator]) -> dict:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "generators": {k: g.get_state() for k, g in gens.items()}}


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_codec_part(
    part: str,
    model: torch.nn.Module,
    mel_converter: MelConverter,
    waves: Sequence[torch.Tensor],
    options: CodecTrainOptions,
    *,
    checkpoint: str | os.PathLike | None = None,
    on_log: Callable[[int, dict], None] | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place (``part``: 'vae' or 'vocoder') for ``options.steps`` steps; returns it.

    With ``checkpoint`` the state is saved there every ``checkpoint_every`` steps and a run finding the
    file continues from it; the file is removed when training completes.
    """
    if part not in ("vae", "vocoder"):
        raise ValueError(f"codec part must be 'vae' or 'vocoder', got {part!r}")
    hop = mel_converter.preset.hop_length
    gens = {"data": torch.Generator().manual_seed(options.seed), "noise": torch.Generator().manual_seed(options.seed + 1)}
    sampler = SegmentSampler(waves, hop, options.segment_frames, gens["data"])
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, betas=(0.8, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, options.steps) / max(1, options.steps))))
    step = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for k, g in gens.items():
            g.set_state(state["generators"][k])
        step = int(state["step"])
        sched.last_epoch = step  # LambdaLR recomputes the rate from the step on the next call
        for group, lr in zip(opt.param_groups, sched.get_lr()):
            group["lr"] = lr
        log.info("%s: resuming from %s at step %d", part, ckpt, step)
    t0, window = time.perf_counter(), []
    while step < options.steps:
        wave = sampler.batch(options.batch_size)
        if part == "vae":
            with torch.no_grad():
                mel = mel_converter(wave)
            loss, parts = vae_loss(model, mel, gens["noise"], options.kl_weight)
        else:
            loss, parts = vocoder_loss(model, mel_converter, wave, options.stft_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        window.append(parts | {"loss": float(loss.detach())})
        if step % options.log_every == 0 or step == options.steps:
            means = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            means["sec_per_step"] = (time.perf_counter() - t0) / len(window)
            log.info("%s step %d/%d %s", part, step, options.steps, " ".join(f"{k}={v:.4f}" for k, v in means.items()))
            if on_log is not None:
                on_log(step, means)
            t0, window = time.perf_counter(), []
        if ckpt is not None and step % options.checkpoint_every == 0 and step < options.steps:
            _save_atomic(_state(model, opt, step, gens), ckpt)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return model.eval().requires_grad_(False)


# -- quality ---------------------------------------------------------------------------------------


@torch.no_grad()
def roundtrip(vae: AudioVAE, vocoder: BigVGAN, mel_converter: MelConverter, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mel of wave, mel of VAE's mean decoding, vocoded waveform) for waveforms (B, L)."""
    mel = mel_converter(wave)
    frames = mel.shape[-1] - mel.shape[-1] % 2
    mel = mel[..., :frames]
    recon = vae.decode(vae.encode(mel).mean)
    audio = vocoder(recon).squeeze(1)
    return mel, recon, audio


@torch.no_grad()
def roundtrip_quality(
    vae: AudioVAE,
    vocoder: BigVGAN,
    mel_converter: MelConverter,
    clips: Mapping[str, torch.Tensor],
    events: Mapping[str, np.ndarray] | None = None,
    *,
    tolerance_sec: float = 0.05,
) -> dict[str, float]:
    """Scores of audio -> VAE -> vocoder round trips of ``clips`` ({id: (L,)}, at the codec's rate).

    ``vae_mel_l1``: mean |log-mel error| (the mel preset's log base) of the VAE alone; ``roundtrip_mel_l1``
    of the full chain (mel of the vocoded audio vs mel of the input); ``roundtrip_lsd_db``: log-spectral
    distance (dB, RMS over frequency, mean over frames) of the full chain at the mel's STFT; and with
    ``events`` ({id: onset times}) ``roundtrip_onset_{precision,recall,f1}`` at ``tolerance_sec``.
    """
    from mmaudio.evaluation.proxies import detect_onsets, proxy_onset_scores

    rate = mel_converter.preset.sample_rate
    p = mel_converter.preset
    vae_l1, rt_l1, lsd, onsets = [], [], [], {}
    for cid, wave in clips.items():
        mel, recon, audio = roundtrip(vae, vocoder, mel_converter, wave.float()[None])
        vae_l1.append(float((recon - mel).abs().mean()))
        mel_out = mel_converter(audio)[..., : mel.shape[-1]]
        rt_l1.append(float((mel_out - mel).abs().mean()))
        window = torch.hann_window(p.n_fft)
        n = min(wave.shape[-1], audio.shape[-1])
        spec_in = torch.stft(wave.float()[:n], p.n_fft, p.hop_length, window=window, return_complex=True).abs()
        spec_out = torch.stft(audio[0, :n], p.n_fft, p.hop_length, window=window, return_complex=True).abs()
        diff = 20 * (spec_in.clamp(min=1e-5).log10() - spec_out.clamp(min=1e-5).log10())
        lsd.append(float(diff.pow(2).mean(0).sqrt().mean()))
        onsets[cid] = detect_onsets(audio[0], rate)
    scores = {"vae_mel_l1": float(np.mean(vae_l1)), "roundtrip_mel_l1": float(np.mean(rt_l1)),
              "roundtrip_lsd_db": float(np.mean(lsd)), "roundtrip_clips": float(len(clips))}
    if events:
        known = {k: v for k, v in onsets.items() if k in events}
        if known:
            s = proxy_onset_scores(known, {k: events[k] for k in known}, tolerance_sec=tolerance_sec,
                                   prefix="proxy_onset")
            scores |= {f"roundtrip_onset_{k}": s[f"proxy_onset_{k}"] for k in ("precision", "recall", "f1")}
    return scores


# -- the tiny profile's codec, trained on the example set -----------------------------------------------


CLIP_SECONDS = 8.0


@dataclass(frozen=True)
class CodecAudio:
    """Example audio at one mode's rate: training waveforms and scored test clips with their events."""

    train: list[torch.Tensor]
    test: dict[str, torch.Tensor]  # first 8 s of each test video
    events: dict[str, np.ndarray]  # onset times inside those 8 s, for the test ids that have events


def load_codec_audio(examples_dir: str | os.PathLike, sample_rate: int, clip_samples: int) -> CodecAudio:
    """Audio of make_examples' output: training = the audio-only files and the train-split videos,
    test = the test-split videos (cut to ``clip_samples``). Files shorter than a clip are kept for
    training only when long enough for a segment (checked by the sampler)."""
    from mmaudio.evaluation.proxies import events_in_window, read_event_times
    from mmaudio.media import iter_media_files, load_audio
    from mmaudio.tables import read_tsv

    root = Path(examples_dir)
    videos = {p.stem: p for p in iter_media_files(root / "video", (".mp4", ".mkv", ".webm"))}

    def split_ids(split: str) -> list[str]:
        ids = [r["id"] for r in read_tsv(root / f"video_{split}.tsv", ("id", "label"))]
        missing = [i for i in ids if i not in videos]
        if missing:
            raise FileNotFoundError(f"{root / f'video_{split}.tsv'}: no video file for ids {missing[:10]}")
        return ids

    train = [load_audio(p, sample_rate) for p in iter_media_files(root / "audio", (".flac", ".wav"))]
    train += [load_audio(videos[i], sample_rate) for i in split_ids("train")]
    test = {i: load_audio(videos[i], sample_rate, num_samples=clip_samples) for i in split_ids("test")}
    known = read_event_times(root / "events.tsv")
    events = {i: events_in_window(known[i], 0.0, clip_samples / sample_rate) for i in test if i in known}
    return CodecAudio(train, test, events)


def train_tiny_codec(
    weights_dir: str | os.PathLike,
    examples_dir: str | os.PathLike,
    cfg,
    seed: int,
    *,
    work_dir: str | os.PathLike,
    on_metrics: Callable[[dict, int | None], None] | None = None,
) -> dict[str, float]:
    """Train the VAE and vocoder of each mode in ``cfg.modes`` (a :class:`mmaudio.config.CodecConfig`)
    from the random files in ``weights_dir`` (the tiny profile's folder) and write them back there in
    the same official formats. Returns the round-trip scores, keyed ``<mode>/<score>``.

    ``work_dir`` holds the resumable states; ``on_metrics(metrics, step)`` receives training curves
    (``codec_<mode>/<part>/<loss>``) and the final scores.
    """
    from mmaudio.encoders import profiles
    from mmaudio.encoders.bigvgan import CHECKPOINT_KEY, HF_WEIGHTS_NAME, build_vocoder, load_vocoder, save_vocoder
    from mmaudio.modes import mode_spec
    from mmaudio.encoders.tiny import file_seed
    from mmaudio.encoders.vae import load_vae, save_vae
    from mmaudio.weights import load_state_dict_strict, load_weight_file

    weights, work = Path(weights_dir), Path(work_dir)
    tiny = profiles.get_profile("tiny")
    scores: dict[str, float] = {}
    with _torch_threads(cfg.num_threads):
        for mode in cfg.modes:
            vae_file = weights / profiles.VAE_FILES[mode]
            vocoder_path = weights / profiles.VOCODER_FILES[mode]
            vae = load_vae(vae_file, tiny.vae[mode])
            mel = MelConverter(vae.preset.mel)
            rate = mel.preset.sample_rate
            audio = load_codec_audio(examples_dir, rate, mode_spec(mode).num_audio_samples)
            log.info("codec %s: %d training files (%.0f s), %d test clips", mode, len(audio.train),
                     sum(w.shape[-1] for w in audio.train) / rate, len(audio.test))

            def curve(part: str):
                if on_metrics is None:
                    return None
                return lambda step, means: on_metrics({f"codec_{mode}/{part}/{k}": v for k, v in means.items()}, step)

            common = dict(learning_rate=cfg.learning_rate, checkpoint_every=cfg.checkpoint_every)
            vae_opts = CodecTrainOptions(steps=cfg.vae_steps, batch_size=cfg.vae_batch_size,
                                         segment_frames=cfg.vae_segment_frames, kl_weight=cfg.kl_weight,
                                         seed=file_seed(seed, f"codec:{vae_file.name}"), **common)
            train_codec_part("vae", vae, mel, audio.train, vae_opts, checkpoint=work / f"{mode}_vae.pt",
                             on_log=curve("vae"))
            save_vae(vae, vae_file)

            vocoder = build_vocoder(tiny.vocoder[mode])  # weight norm kept: the trainable layout
            # the layout tiny.py wrote for this mode: one file (16k's best_netG.pt) or a BigVGAN-v2 folder
            hf_dir = vocoder_path.is_dir()
            voc_file = vocoder_path / HF_WEIGHTS_NAME if hf_dir else vocoder_path
            state = load_weight_file(voc_file, subkey=CHECKPOINT_KEY)  # weight_g / weight_v, as tiny.py wrote it
            load_state_dict_strict(vocoder, state, source=voc_file)
            voc_opts = CodecTrainOptions(steps=cfg.vocoder_steps, batch_size=cfg.vocoder_batch_size,
                                         segment_frames=cfg.vocoder_segment_frames,
                                         seed=file_seed(seed, f"codec:{vocoder_path.name}"), **common)
            train_codec_part("vocoder", vocoder, mel, audio.train, voc_opts, checkpoint=work / f"{mode}_vocoder.pt",
                             on_log=curve("vocoder"))
            save_vocoder(vocoder, vocoder_path, layout="hf_dir" if hf_dir else "file")

            # score what the pipeline will load: the files just written, through the official loaders
            vae = load_vae(vae_file, tiny.vae[mode])
            vocoder = load_vocoder(vocoder_path, tiny.vocoder[mode])
            q = roundtrip_quality(vae, vocoder, mel, audio.test, audio.events)
            log.info("codec %s round trip: %s", mode, " ".join(f"{k}={v:.4f}" for k, v in q.items()))
            scores |= {f"{mode}/{k}": v for k, v in q.items()}
    if on_metrics is not None:
        on_metrics({f"codec_{k}": v for k, v in scores.items()}, None)
    return scores


class _torch_threads:
    """Run a block with ``n`` torch CPU threads (training results depend on the thread count)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
