"""Parity of mmaudio.evaluation.extractors (PANNs, VGGish, PaSST) with av-benchmark and hear21passt, CPU.

All three at official size. Random weights are written once by our savers in the official formats and
read by each upstream through its own loading path:

- PANNs: av-benchmark's ``Cnn14`` exactly as ``ExtractionModels`` builds it; it loads
  ``~/.cache/audioldm_eval/ckpt/Cnn14_16k_mAP=0.438.pth`` itself, so HOME points to a temporary folder
  holding our file (and an empty 32 kHz file, so that its download branch is skipped). The STFT and
  mel matrices keep their defining values; BatchNorm statistics are random, ``bn0``'s centred on the
  log-mel of the test clips so that activations stay O(1).
- VGGish: av-benchmark's ``VGGish(pretrained=False, postprocess=False)`` given our file with a strict
  ``load_state_dict`` (upstream fetches the same layout from torch.hub).
- PaSST: hear21passt's ``get_basic_model(mode="all")`` unchanged, its checkpoint download redirected
  to our file, so upstream's own ``load_pretrained`` (checkpoint filter, input-conv adaptation,
  strict load) reads it. The 1295-d output is split as av-benchmark's extract.py does.

Inputs: two 8.5 s stereo clips at 44.1 kHz (tones plus noise, different per clip). Upstream's side
goes through av-benchmark's ``AudioDataset.read_from_file`` (``torchaudio.load`` patched to return the
clip), batched as its DataLoader does; ours through ``extract(wave, 44100)``. So the resampler,
mean removal, cutting and PaSST's padding are compared too.

Dependencies upstream needs and the project does not: torchlibrosa (PANNs) and hear21passt; pass
their folder with ``--deps``. ``pytorchvideo`` (imported by av-benchmark's audio_dataset.py for a
video sampler that AudioDataset does not use) is stubbed if missing.

    python bench/parity/av_audio.py --upstream /path/to/av-benchmark --deps /path/to/site-packages
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

from mmaudio.evaluation.extractors.audio_frontend import prepare_av_bench_waveform
from mmaudio.evaluation.extractors.panns import build_panns, load_panns, save_panns
from mmaudio.evaluation.extractors.passt import WINDOW_SAMPLES, build_passt, load_passt, save_passt
from mmaudio.evaluation.extractors.vggish import build_vggish, load_vggish, save_vggish
from mmaudio.weights import load_weight_file

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import check_under, parity_parser, rel_diff, run_cli, stereo_tones  # noqa: E402

CLIP_RATE = 44_100  # Hz, native rate of the test clips
CLIP_SEC = 8.5  # longer than av-benchmark's 8 s, so the cut is exercised


def _clips(seed: int) -> torch.Tensor:
    """(2, 2, L) stereo clips at 44.1 kHz: a few tones with vibrato, noise and a DC offset."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([stereo_tones(int(CLIP_RATE * CLIP_SEC), CLIP_RATE, gen) for _ in range(2)]).float()


def _randomise(model: torch.nn.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Weights ~ N(0, 2 / fan_in) (ReLU/GELU nets keep O(1) activations), norms near identity,
    biases and embeddings non-zero; BatchNorm statistics random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(skip) or name.endswith("num_batches_tracked"):
                continue
            shape = tensor.shape
            if name.endswith("running_var"):
                value = 0.5 + torch.rand(shape, generator=gen)
            elif name.endswith("running_mean"):
                value = 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith(("token", "pos_embed")):
                value = 0.5 * torch.randn(shape, generator=gen)
            elif len(shape) >= 2:
                value = torch.randn(shape, generator=gen) * math.sqrt(2.0 / math.prod(shape[1:]))
            elif name.endswith("weight"):  # BatchNorm / LayerNorm gains
                value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                value = 0.1 * torch.randn(shape, generator=gen)
            tensor.copy_(value)


@contextlib.contextmanager
def _upstream_path(av_benchmark_dir: str, deps: list[str]) -> Iterator[None]:
    sys.path.insert(0, av_benchmark_dir)
    sys.path.extend(deps)  # after site-packages: fills in only what the environment lacks
    stubbed = []
    try:
        importlib.import_module("pytorchvideo.data.clip_sampling")
    except ModuleNotFoundError:
        for name in ("pytorchvideo", "pytorchvideo.data", "pytorchvideo.data.clip_sampling"):
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
        sys.modules["pytorchvideo.data.clip_sampling"].ConstantClipsPerVideoSampler = None
    try:
        yield
    finally:
        sys.path.remove(av_benchmark_dir)
        for d in deps:
            sys.path.remove(d)
        for name in stubbed:
            del sys.modules[name]


def _import_upstream(av_benchmark_dir: str, deps: list[str]) -> dict[str, types.ModuleType]:
    names = {
        "panns": "av_bench.panns.models",
        "vggish": "av_bench.vggish.vggish",
        "dataset": "av_bench.data.audio_dataset",
        "passt_base": "hear21passt.base",
        "vit_helpers": "hear21passt.models.helpers.vit_helpers",
    }
    with _upstream_path(av_benchmark_dir, deps):
        modules = {key: importlib.import_module(name) for key, name in names.items()}
    for key in ("panns", "vggish", "dataset"):
        check_under(modules[key], av_benchmark_dir)
    return modules


def _upstream_waves(dataset_module: types.ModuleType, clips: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """av-benchmark's AudioDataset(sr=sample_rate) on ``clips``, batched and squeezed as extract.py does."""
    files = {f"clip{i}.wav": clip for i, clip in enumerate(clips)}
    dataset = dataset_module.AudioDataset([Path(f) for f in files], audio_length=8.0, sr=sample_rate)

    def fake_load(path: Path) -> tuple[torch.Tensor, int]:
        return files[str(path)].clone(), CLIP_RATE

    with mock.patch.object(dataset_module.torchaudio, "load", fake_load):
        items = [dataset[i][0] for i in range(len(files))]  # each (1, T)
    return torch.stack(items).squeeze(1).float()  # (B, T)


def _panns(upstream: dict, clips: torch.Tensor, folder: Path) -> list[tuple[str, float]]:
    ours = build_panns("official", device="meta")
    ours.to_empty(device="cpu")
    ours.reset_frontend()
    _randomise(ours, seed=1, skip=("spectrogram_extractor.", "logmel_extractor."))
    for name, buf in ours.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.fill_(0)
    # centre bn0 on the clips' log-mel (dB values ~ -100..20) so the conv stack sees O(1) inputs
    with torch.no_grad():
        log_mel = ours.log_mel(prepare_av_bench_waveform(clips, CLIP_RATE, 16_000))  # (B, 1, T, M)
        ours.bn0.running_mean.copy_(log_mel.mean(dim=(0, 1, 2)))
        ours.bn0.running_var.copy_(log_mel.var(dim=(0, 1, 2)) + 1.0)
    home = folder / "home"
    ckpt = home / ".cache" / "audioldm_eval" / "ckpt"
    save_panns(ours, ckpt / "Cnn14_16k_mAP=0.438.pth")
    (ckpt / "Cnn14_mAP=0.431.pth").touch()  # its existence skips upstream's download
    del ours

    with mock.patch.dict(os.environ, {"HOME": str(home)}):
        ref_model = upstream["panns"].Cnn14(features_list=["2048", "logits"], sample_rate=16000, window_size=512,
                                            hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527).eval()
    ours = load_panns(ckpt / "Cnn14_16k_mAP=0.438.pth")
    with torch.no_grad():
        wave16 = _upstream_waves(upstream["dataset"], clips, 16_000)
        ref = ref_model(wave16)
        mine = ours.extract(clips, CLIP_RATE)
    return [
        ("PANNs Cnn14 embedding (2, 2048)", rel_diff(mine["embedding"], ref["2048"])),
        ("PANNs Cnn14 logits (2, 527)", rel_diff(mine["logits"], ref["logits"])),
    ]


def _vggish(upstream: dict, clips: torch.Tensor, folder: Path) -> list[tuple[str, float]]:
    ours = build_vggish("official", device="meta")
    ours.to_empty(device="cpu")
    _randomise(ours, seed=3)
    path = save_vggish(ours, folder / "vggish-10086976.pth")
    del ours

    ref_model = upstream["vggish"].VGGish(pretrained=False, postprocess=False, device="cpu")
    ref_model.load_state_dict(load_weight_file(path), strict=True)
    ref_model.eval()
    ours = load_vggish(path)
    with torch.no_grad():
        wave16 = _upstream_waves(upstream["dataset"], clips, 16_000)
        ref = ref_model(wave16)  # (B, 8, 128)
        mine = ours.extract(clips, CLIP_RATE)["embedding"]
    return [("VGGish embedding (2, 8, 128)", rel_diff(mine, ref))]


def _passt(upstream: dict, clips: torch.Tensor, folder: Path) -> list[tuple[str, float]]:
    ours = build_passt("official", device="meta")
    ours.to_empty(device="cpu")
    _randomise(ours, seed=4)
    path = save_passt(ours, folder / "passt-s-f128-p16-s10-ap.476-swa.pt")
    del ours

    def cached_file(url: str, **kwargs: object) -> str:
        if not url.endswith("passt-s-f128-p16-s10-ap.476-swa.pt"):
            raise RuntimeError(f"unexpected checkpoint request {url}")
        return str(path)

    with mock.patch.object(upstream["vit_helpers"], "download_cached_file", cached_file):
        ref_model = upstream["passt_base"].get_basic_model(mode="all").eval()
    ours = load_passt(path)
    with torch.no_grad():
        wave32 = _upstream_waves(upstream["dataset"], clips, 32_000)
        wave32 = torch.nn.functional.pad(wave32, (0, WINDOW_SAMPLES - wave32.shape[-1]))  # extract.py:166-169
        ref = ref_model(wave32)  # (B, 527 + 768)
        mine = ours.extract(clips, CLIP_RATE)
    return [
        ("PaSST embedding (2, 768)", rel_diff(mine["embedding"], ref[:, 527:])),
        ("PaSST logits (2, 527)", rel_diff(mine["logits"], ref[:, :527])),
    ]


def run(av_benchmark_dir: str, deps: list[str] | None = None) -> list[tuple[str, float]]:
    """Largest relative differences (max|ours - upstream| / max|upstream|), float32 on CPU."""
    upstream = _import_upstream(av_benchmark_dir, deps or [])
    clips = _clips(seed=0)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="av_audio_parity_") as tmp:
        for compare in (_panns, _vggish, _passt):
            start = time.perf_counter()
            rows += compare(upstream, clips, Path(tmp))
            print(f"{compare.__name__[1:]}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return rows


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "checkout of hkchengrex/av-benchmark",
                           deps_help="folder with torchlibrosa and hear21passt (hkchengrex/passt_hear21)", threads=True)
    run_cli(parser, lambda args: run(args.upstream, deps=args.deps), "max rel diff (float32, CPU)")


if __name__ == "__main__":
    main()
