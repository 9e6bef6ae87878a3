"""Parity of mmaudio.encoders.mel / .vae with upstream MMAudio's mel converter and audio VAE, CPU.

For each rate (16k, 44k), at full size:

- mel: upstream ``get_mel_converter(mode)`` (librosa filterbank) vs our ``MelConverter(mode)`` on 1 s
  of noise that overshoots [-1, 1] (so the clamp is exercised); the filterbanks are compared too.
- VAE: upstream ``get_my_vae(mode)`` with its random init, output gains moved off zero; its raw
  state dict is written by our ``save_vae``-compatible format and read by our ``load_vae``; upstream
  then runs ``remove_weight_norm()`` as its loader does. Compared on upstream's mel of that second:
  encoder mean and std, decoder output from the mean, and the waveform -> latent chain.

Needs upstream's imports to resolve: librosa (mel filters) and einops (VAE modules).

    python bench/parity/vae.py --upstream /path/to/MMAudio [--deps DIR]
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import torch

from mmaudio.encoders.mel import MelConverter
from mmaudio.encoders.vae import load_vae, waveform_to_latent
from mmaudio.weights import save_weight_file

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import parity_parser, rel_diff, run_cli, upstream_package  # noqa: E402

SAMPLE_RATES = {"16k": 16_000, "44k": 44_100}


def run(upstream_dir: str, deps: list[str] | None = None) -> list[tuple[str, float]]:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    with upstream_package(upstream_dir, deps or []):
        up_mel = importlib.import_module("mmaudio.ext.mel_converter")
        up_vae = importlib.import_module("mmaudio.ext.autoencoder.vae")

    results: list[tuple[str, float]] = []
    for mode, sample_rate in SAMPLE_RATES.items():
        gen = torch.Generator().manual_seed(0)
        wave = 1.2 * (2 * torch.rand(2, sample_rate, generator=gen) - 1)  # (B, L) 1 s, some beyond +-1

        theirs_mel, ours_mel = up_mel.get_mel_converter(mode), MelConverter(mode)
        results.append((f"{mode} mel filterbank", rel_diff(ours_mel.mel_basis, theirs_mel.mel_basis)))
        mel_ref = theirs_mel(wave)  # (B, n_mels, T)
        results.append((f"{mode} log-mel", rel_diff(ours_mel(wave), mel_ref)))

        torch.manual_seed(1)  # upstream draws its raw kernels from the global generator
        theirs = up_vae.get_my_vae(mode).eval()
        with torch.no_grad():
            theirs.encoder.learnable_gain.fill_(0.37)
            theirs.decoder.learnable_gain.fill_(-0.21)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_weight_file(theirs.state_dict(), Path(tmp) / f"vae_{mode}.pth")  # raw weights, as shipped
            ours = load_vae(path, mode)
        theirs.remove_weight_norm()

        with torch.no_grad():
            post = theirs.encode(mel_ref)
            mean, std = ours.encode(mel_ref)
            results.append((f"{mode} encode mean", rel_diff(mean, post.mean)))
            results.append((f"{mode} encode std", rel_diff(std, post.std)))
            results.append((f"{mode} decode(mean)", rel_diff(ours.decode(post.mean), theirs.decode(post.mean))))
            chain = waveform_to_latent(wave, ours_mel, ours)
            results.append((f"{mode} waveform->latent mean", rel_diff(chain.mean.transpose(1, 2), post.mean)))
        del theirs, ours
    return results


def main() -> None:
    parser = parity_parser(__doc__, "checkout of hkchengrex/MMAudio",
                           deps_help="extra folder of packages upstream needs")
    run_cli(parser, lambda args: run(args.upstream, args.deps), "max rel diff (float32)")


if __name__ == "__main__":
    main()
