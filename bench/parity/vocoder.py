"""Parity of mmaudio.encoders.bigvgan with upstream MMAudio's two BigVGAN vocoders, full size, CPU.

Random weights (PyTorch's default init, then every weight-norm magnitude and Snake parameter
perturbed so that none sits at its default) are written ONCE by our ``save_vocoder`` in the official
formats, then read by each side's own loader:

- ``16k``: upstream ``mmaudio.ext.bigvgan.BigVGAN(ckpt_path)`` (its yml config, ``torch.load`` of
  ``['generator']``, weight norm removed) vs our ``load_vocoder(file, '16k')``;
- ``44k_v2``: upstream ``mmaudio.ext.bigvgan_v2.bigvgan.BigVGAN.from_pretrained(<dir>)`` (reads our
  ``config.json`` and ``bigvgan_generator.pt``, torch activation path) + ``remove_weight_norm()`` vs
  our ``load_vocoder(dir, '44k_v2')``.

Each is also compared with weight norm still applied (upstream module given the same state dict).
The mel is short (16 frames) so the full-size models run in seconds.

    python bench/parity/vocoder.py --upstream /path/to/MMAudio [--deps DIR]
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import torch

from mmaudio.encoders.bigvgan import BigVGAN, build_vocoder, load_vocoder, official_state_dict, save_vocoder

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import parity_parser, rel_diff, run_cli, upstream_package  # noqa: E402

N_FRAMES = 16


def _perturb(model: BigVGAN, seed: int) -> BigVGAN:
    """Move every magnitude / Snake parameter off its init, so a mix-up of them would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith((".alpha", ".beta")):
                p.add_(0.3 * noise)  # log-scale: frequencies / magnitudes in about [0.4, 2.5]
            elif name.endswith(".weight_g"):
                p.mul_(torch.exp(0.2 * noise))
            elif name.endswith(".bias"):
                p.add_(0.01 * noise)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.abs().max() > 0.99:  # tanh / clamp would flatten differences: the weights must not saturate
        raise RuntimeError(f"upstream output saturates (max |y| = {b.abs().max():.3f}); comparison is void")
    return rel_diff(a, b)


def run(upstream_dir: str, deps: list[str] | None = None) -> list[tuple[str, float]]:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    with upstream_package(upstream_dir, deps or []):
        up16 = importlib.import_module("mmaudio.ext.bigvgan")
        up16_models = importlib.import_module("mmaudio.ext.bigvgan.models")
        up44 = importlib.import_module("mmaudio.ext.bigvgan_v2.bigvgan")
    from omegaconf import OmegaConf

    results: list[tuple[str, float]] = []
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        # ---- 16 kHz
        ours = _perturb(build_vocoder("16k", seed=1), seed=2).eval()
        path = save_vocoder(ours, Path(tmp) / "best_netG.pt")
        mel = torch.randn(1, 80, N_FRAMES, generator=gen)
        theirs = up16_models.BigVGANVocoder(OmegaConf.load(Path(up16.__file__).parent / "bigvgan_vocoder.yml")).eval()
        theirs.load_state_dict(official_state_dict(ours))  # torch maps weight_g/_v onto its parametrization
        results.append(("16k waveform, weight norm applied", _rel(ours(mel), theirs(mel))))
        del theirs
        theirs = up16.BigVGAN(str(path)).eval()
        ours = load_vocoder(path, "16k")
        y = ours(mel)
        assert y.shape == (1, 1, N_FRAMES * 256), y.shape
        results.append(("16k waveform, weight norm removed (both loaders)", _rel(y, theirs(mel))))
        del ours, theirs

        # ---- 44.1 kHz BigVGAN-v2
        ours = _perturb(build_vocoder("44k_v2", seed=3), seed=4).eval()
        directory = Path(tmp) / "bigvgan_v2_44khz_128band_512x"
        save_vocoder(ours, directory)
        mel = torch.randn(1, 128, N_FRAMES, generator=gen)
        theirs = up44.BigVGAN.from_pretrained(str(directory), use_cuda_kernel=False).eval()
        results.append(("44k_v2 waveform, weight norm applied", _rel(ours(mel), theirs(mel))))
        theirs.remove_weight_norm()
        ours = load_vocoder(directory, "44k_v2")
        y = ours(mel)
        assert y.shape == (1, 1, N_FRAMES * 512), y.shape
        results.append(("44k_v2 waveform, weight norm removed (both loaders)", _rel(y, theirs(mel))))
    return results


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "root of an MMAudio checkout (holds mmaudio/ext/bigvgan*)",
                           deps_help="extra folder of packages upstream needs")
    run_cli(parser, lambda args: run(args.upstream, args.deps), "max|ours-upstream| / max|upstream|")


if __name__ == "__main__":
    main()
