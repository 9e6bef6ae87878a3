"""av-benchmark's metrics from its own extractors: which files are present, features, scores.

The paper's metrics (lower-case keys in scores.json) and the extractor each needs:

    fd_panns, kl_panns, isc_panns (+ isc_panns_std)   PANNs Cnn14 16 kHz   Cnn14_16k_mAP=0.438.pth
    fd_passt, kl_passt, isc_passt (+ isc_passt_std)   PaSST                passt-s-f128-p16-s10-ap.476-swa.pt
    fd_vgg                                            VGGish               vggish-10086976.pth
    desync                                            Synchformer (AV)     synchformer_state_dict.pth
    ib_score                                          ImageBind huge       imagebind_huge.pth

The paper's IS is ``isc_panns``. Each extractor whose file resolves (:func:`~mmaudio.evaluation.
resolver.resolve_weight`: ``extractor_dir/<file>``, then the local Hugging Face cache; never a
download) is loaded; the metrics of the others are skipped with the resolver's message as the reason.

Inputs are what av-benchmark reads: the generated and ground-truth audio as stored in the FLAC files
(see :func:`flac_roundtrip`), and the source video's frames at 25 fps (224, short side + centre crop;
:data:`~mmaudio.media.SYNC_FRAMES`) for DeSync and at 0.5 fps, native size
(:data:`~mmaudio.media.IMAGEBIND_FRAMES`) for IB-score. Each extractor prepares them as av-benchmark
does (resampling, framing, normalisation live in the extractor modules).

Two deliberate departures, each recorded as a note (an ``eval.note.<metric>`` tag):

- IS over fewer than 10 clips: av-benchmark's 10 splits would leave empty splits (NaN); such a set
  is scored as one split, exp(mean KL(p || mean p)) over all clips (std 0).
- FD whose covariance product has no real square root (:class:`~mmaudio.evaluation.metrics.
  FrechetDistanceError`, av-benchmark's -1): NaN (null in scores.json) with the error as the note.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmaudio.choices import ExtractorPreset, check_choice
from mmaudio.evaluation.extractors import imagebind, panns, passt, synchformer_av, vggish
from mmaudio.evaluation.metrics import (
    IS_SPLITS,
    FrechetDistanceError,
    desync_score,
    frechet_distance,
    imagebind_score,
    inception_score,
    kl_divergence,
)
from mmaudio.evaluation.resolver import resolve_weight
from mmaudio.weights import MissingWeightsError
from mmaudio.media import IMAGEBIND_FRAMES, SYNC_FRAMES, FrameSpec

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class OfficialExtractor:
    """One av-benchmark extractor: its file, the metrics it gives, its loader and the frames it needs."""

    name: str
    filename: str
    metrics: tuple[str, ...]
    load: Callable[..., nn.Module]  # load_*(path, preset, device=...)
    frames: FrameSpec | None = None  # video frames of the source clip it needs (None: audio only)


OFFICIAL_EXTRACTORS: dict[str, OfficialExtractor] = {
    e.name: e
    for e in (
        OfficialExtractor("panns", panns.OFFICIAL_FILE_NAME, ("fd_panns", "kl_panns", "isc_panns"), panns.load_panns),
        OfficialExtractor("passt", passt.OFFICIAL_FILE_NAME, ("fd_passt", "kl_passt", "isc_passt"), passt.load_passt),
        OfficialExtractor("vggish", vggish.OFFICIAL_FILE_NAME, ("fd_vgg",), vggish.load_vggish),
        OfficialExtractor("synchformer", synchformer_av.OFFICIAL_FILE_NAME, ("desync",),
                          synchformer_av.load_synchformer_av, SYNC_FRAMES),
        OfficialExtractor("imagebind", imagebind.OFFICIAL_FILE_NAME, ("ib_score",), imagebind.load_imagebind,
                          IMAGEBIND_FRAMES),
    )
}
# metric -> the file it needs (every metric key that can be skipped)
OFFICIAL_METRICS: dict[str, str] = {m: e.filename for e in OFFICIAL_EXTRACTORS.values() for m in e.metrics}


def flac_roundtrip(wave: torch.Tensor) -> torch.Tensor:
    """What a reader of :func:`~mmaudio.evaluation.sampling.write_flac`'s file gets back: the 16-bit
    value ``round(clamp(x) * 32767)`` decoded as ``/ 32768`` (FLAC is lossless; decoders scale s16 by 2^15)."""
    return (wave.detach().float().clamp(-1, 1) * 32767).round() / 32768


def missing_reason(error: MissingWeightsError) -> str:
    return f"weights absent: {error}"


class OfficialExtractors:
    """The av-benchmark extractors whose files are present under ``extractor_dir``, loaded on ``device``.

    ``missing`` maps each absent extractor to its reason; ``skipped`` maps each of their metrics to it.
    """

    def __init__(
        self,
        extractor_dir: str | os.PathLike,
        preset: str = "official",
        device: torch.device | str = "cpu",
    ) -> None:
        check_choice(ExtractorPreset, preset, "extractor preset")
        self.device = torch.device(device)
        self.preset = preset
        self.models: dict[str, nn.Module] = {}
        self.paths: dict[str, Path] = {}
        self.missing: dict[str, str] = {}
        for name, spec in OFFICIAL_EXTRACTORS.items():
            try:
                path = resolve_weight(spec.filename, ext_dir=extractor_dir)
            except MissingWeightsError as e:
                self.missing[name] = missing_reason(e)
                continue
            self.paths[name] = path
            self.models[name] = spec.load(path, preset, device=self.device)
            log.info("extractor %s (%s preset) from %s", name, preset, path)

    @property
    def skipped(self) -> dict[str, str]:
        return {m: self.missing[n] for n, spec in OFFICIAL_EXTRACTORS.items() if n in self.missing for m in spec.metrics}

    @property
    def frame_specs(self) -> tuple[FrameSpec, ...]:
        """Frame streams the present extractors need from the source videos."""
        return tuple(OFFICIAL_EXTRACTORS[n].frames for n in self.models if OFFICIAL_EXTRACTORS[n].frames is not None)

    def __bool__(self) -> bool:
        return bool(self.models)

    # -- features ----------------------------------------------------------------------------------

    @torch.no_grad()
    def audio_features(
        self, waves: Sequence[torch.Tensor], sample_rate: int, batch_size: int = 8
    ) -> dict[str, torch.Tensor]:
        """Features of mono clips (L,) at ``sample_rate`` (all the same length), float32 on the CPU:

        ``panns_embedding`` (N, 2048), ``panns_logits`` (N, 527), ``passt_embedding`` (N, 768),
        ``passt_logits`` (N, 527), ``vggish_embedding`` (N, 8, 128), ``sync_audio`` (N, 24, 6, 768),
        ``imagebind_audio`` (N, 1024): those of the present extractors.
        """
        parts: dict[str, list[torch.Tensor]] = {}
        for lo in range(0, len(waves), batch_size):
            x = torch.stack([w.float() for w in waves[lo : lo + batch_size]]).to(self.device)  # (B, L)
            for key, value in self._audio_batch(x, sample_rate).items():
                parts.setdefault(key, []).append(value.float().cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def _audio_batch(self, x: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        m = self.models
        if "panns" in m:
            f = m["panns"].extract(x, sample_rate)
            out |= {"panns_embedding": f["embedding"], "panns_logits": f["logits"]}
        if "passt" in m:
            f = m["passt"].extract(x, sample_rate)
            out |= {"passt_embedding": f["embedding"], "passt_logits": f["logits"]}
        if "vggish" in m:
            out["vggish_embedding"] = m["vggish"].extract(x, sample_rate)["embedding"]
        if "synchformer" in m:
            wave = synchformer_av.prepare_sync_audio(x, sample_rate)  # (B, 128000) at 16 kHz
            out["sync_audio"] = m["synchformer"].encode_audio_segments(wave)  # (B, 24, 6, 768)
        if "imagebind" in m:
            out["imagebind_audio"] = m["imagebind"].encode_audio(x, sample_rate)  # (B, 1024)
        return out

    @torch.no_grad()
    def video_features(self, frames: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Features of one source clip's frames (``{spec name: (T, 3, H, W) uint8}``), batch dim kept:
        ``sync_video`` (1, 24, 8, 768), ``imagebind_video`` (1, 1024)."""
        out: dict[str, torch.Tensor] = {}
        if "synchformer" in self.models:
            x = frames[SYNC_FRAMES.name][None].to(self.device)  # (1, 200, 3, 224, 224)
            out["sync_video"] = self.models["synchformer"].encode_video_segments(x).float().cpu()
        if "imagebind" in self.models:
            x = frames[IMAGEBIND_FRAMES.name][None]  # (1, 4, 3, H, W) at the file's size
            out["imagebind_video"] = self.models["imagebind"].encode_video(x).float().cpu()
        return out

    # -- scores ------------------------------------------------------------------------------------

    @torch.no_grad()
    def scores(
        self,
        pred: Mapping[str, torch.Tensor],
        gt: Mapping[str, torch.Tensor],
        video: Mapping[str, torch.Tensor],
    ) -> tuple[dict[str, float], dict[str, str]]:
        """(scores, notes) of generated-audio features ``pred`` against ground-truth audio features
        ``gt`` and source-video features ``video``, rows paired (same ids, same order)."""
        scores: dict[str, float] = {}
        notes: dict[str, str] = {}
        n = next(iter(pred.values())).shape[0] if pred else 0

        def fd(metric: str, a: torch.Tensor, b: torch.Tensor) -> None:
            try:
                scores[metric] = frechet_distance(a.numpy(), b.numpy())
            except FrechetDistanceError as e:
                scores[metric] = float("nan")
                notes[metric] = f"FD undefined: {e}"

        def isc(metric: str, logits: torch.Tensor) -> None:
            splits = IS_SPLITS if n >= IS_SPLITS else 1
            if splits != IS_SPLITS:
                notes[metric] = f"{n} clips < {IS_SPLITS}: IS over 1 split (av-benchmark's 10 splits give NaN)"
            result = inception_score(logits, splits=splits)
            scores[metric], scores[f"{metric}_std"] = result.mean, result.std

        if "panns" in self.models:
            fd("fd_panns", pred["panns_embedding"], gt["panns_embedding"])
            scores["kl_panns"] = kl_divergence(pred["panns_logits"], gt["panns_logits"])
            isc("isc_panns", pred["panns_logits"])
        if "passt" in self.models:
            fd("fd_passt", pred["passt_embedding"], gt["passt_embedding"])
            scores["kl_passt"] = kl_divergence(pred["passt_logits"], gt["passt_logits"])
            isc("isc_passt", pred["passt_logits"])
        if "vggish" in self.models:
            # every 0.96 s example is one sample of the distribution (av-benchmark concatenates them)
            fd("fd_vgg", pred["vggish_embedding"].flatten(0, 1), gt["vggish_embedding"].flatten(0, 1))
        if "synchformer" in self.models:
            scores["desync"] = desync_score(self.models["synchformer"].compare, video["sync_video"].to(self.device),
                                            pred["sync_audio"].to(self.device))
        if "imagebind" in self.models:
            scores["ib_score"] = imagebind_score(video["imagebind_video"], pred["imagebind_audio"])
        return scores, notes


def stack_video_features(per_clip: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate :meth:`OfficialExtractors.video_features` of several clips along the batch dim."""
    if not per_clip:
        return {}
    return {k: torch.cat([c[k] for c in per_clip]) for k in per_clip[0]}
