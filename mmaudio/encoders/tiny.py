"""The tiny weight profile's files: seeded random weights in the official file formats.

:func:`write_tiny_weights` builds every component at its tiny preset (see profiles.PROFILES['tiny'])
with weights drawn from ``seed`` and writes them with the same ``save_*`` functions, under the same
names, that the official files have, so the official loaders read them unchanged. Each file gets
its own seed derived from (``seed``, file name), so adding a component never changes the others.

Deterministic: the same seed gives byte-identical files with the same torch build on the same
kind of CPU (random draws and the one computed file, ``empty_string.pth``, are float arithmetic).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from mmaudio.encoders import profiles
from mmaudio.encoders.bigvgan import build_vocoder, save_vocoder
from mmaudio.encoders.clip import CLIPEncoder, build_clip, compute_empty_string_feature, save_clip, save_empty_string
from mmaudio.encoders.synchformer import build_synchformer_visual, save_synchformer_visual
from mmaudio.encoders.vae import AudioVAE, save_vae
from mmaudio.paths import check_replaceable, replace_dir, staging_dir

CLIP_FILE_NAME = "open_clip_model.safetensors"  # safetensors: raw tensors only, byte-stable, mmap-able


def file_seed(seed: int, name: str) -> int:
    """A 63-bit seed for file ``name`` from the profile seed (stable across runs and Python versions)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def owns_tiny_entry(entry: Path) -> bool:
    """Whether an entry of an existing tiny weights folder is one :func:`write_tiny_weights` writes."""
    names = {*profiles.VAE_FILES.values(), profiles.VOCODER_16K_FILE, profiles.VOCODER_44K_DIR,
             profiles.SYNCHFORMER_FILE, profiles.CLIP_DIR, profiles.EMPTY_STRING_FILE}
    return entry.name in names and not entry.is_symlink()


def write_tiny_weights(out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write every tiny component's weights into ``out_dir`` (replaced as a whole). Returns the files.

    The folder is assembled next to ``out_dir`` and renamed into place, so an interrupted run
    never leaves a mix of old and new files.
    """
    p = profiles.get_profile("tiny")
    out = check_replaceable(out_dir, owns=owns_tiny_entry, what=f"tiny weights folder {os.fspath(out_dir)!r}")
    tmp = staging_dir(out)
    tmp.mkdir(parents=True)

    for mode in profiles.MODES:
        name = profiles.VAE_FILES[mode]
        with torch.random.fork_rng(devices=[]):  # the constructor's own draws are replaced below
            vae = AudioVAE(p.vae[mode])
        vae.reset_parameters(torch.Generator().manual_seed(file_seed(seed, name)))
        save_vae(vae, tmp / name)

    name = profiles.VOCODER_16K_FILE
    save_vocoder(build_vocoder(p.vocoder["16k"], seed=file_seed(seed, name)), tmp / name, layout="file")
    name = profiles.VOCODER_44K_DIR
    save_vocoder(build_vocoder(p.vocoder["44k"], seed=file_seed(seed, name)), tmp / name, layout="hf_dir")

    name = profiles.SYNCHFORMER_FILE
    save_synchformer_visual(build_synchformer_visual(p.synchformer, seed=file_seed(seed, name)), tmp / name)

    name = profiles.CLIP_DIR
    clip_model = build_clip(p.clip, seed=file_seed(seed, name))
    save_clip(clip_model, tmp / name / CLIP_FILE_NAME)
    # the text features of '' from this very CLIP, as upstream's file holds them for DFN5B
    with torch.inference_mode():
        empty = compute_empty_string_feature(CLIPEncoder(p.clip, model=clip_model))
    save_empty_string(empty, tmp / profiles.EMPTY_STRING_FILE)

    replace_dir(tmp, out, owns=owns_tiny_entry, what=f"tiny weights folder {os.fspath(out_dir)!r}")
    return sorted(f for f in out.rglob("*") if f.is_file())
