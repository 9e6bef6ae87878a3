"""Weight profiles: which presets and which weight files each encoder component uses.

A profile names a preset per component and a root folder (relative to the repository root) that
holds the weight files, under the names and in the formats upstream publishes them:

    <root>/v1-16.pth, v1-44.pth               audio VAE, one per mode (flat state dict)
    <root>/best_netG.pt                       16 kHz BigVGAN ({'generator': state dict})
    <root>/bigvgan_v2_44khz_128band_512x/     44.1 kHz BigVGAN-v2 (config.json + bigvgan_generator.pt)
    <root>/synchformer_state_dict.pth         Synchformer (flat state dict; the vfeat_extractor.* part is used)
    <root>/empty_string.pth                   text features of '' ((1, 77, 1024) tensor)
    <root>/DFN5B-CLIP-ViT-H-14-384/           open_clip checkpoint (open_clip_model.safetensors or
                                              open_clip_pytorch_model.bin)

``official`` reads ``ext_weights/``; its two Hugging Face models (CLIP, BigVGAN-v2) may instead sit in
the local Hugging Face cache, which is only read, never filled. ``tiny`` reads ``ext_weights/tiny/``,
which the ``tiny_weights`` stage writes (:func:`mmaudio.encoders.tiny.write_tiny_weights`).

Components (what a caller asks for): ``audio`` (mel + VAE, encode and decode), ``vocoder``,
``clip`` (image features), ``text`` (text features; same CLIP model), ``sync`` (Synchformer) and
``empty_string``. :func:`check_weights` reports every file a request lacks in one error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmaudio.encoders import bigvgan, clip

Mode = Literal["16k", "44k"]
MODES: tuple[str, ...] = ("16k", "44k")
COMPONENTS: tuple[str, ...] = ("audio", "vocoder", "clip", "text", "sync", "empty_string")

RELEASE_URL = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1"
TINY_HINT = "run `dvc repro tiny_weights`"

VAE_FILES: dict[str, str] = {"16k": "v1-16.pth", "44k": "v1-44.pth"}
VOCODER_16K_FILE = "best_netG.pt"
VOCODER_44K_DIR = "bigvgan_v2_44khz_128band_512x"
SYNCHFORMER_FILE = "synchformer_state_dict.pth"
EMPTY_STRING_FILE = "empty_string.pth"
CLIP_DIR = "DFN5B-CLIP-ViT-H-14-384"
# the file inside a folder that proves the folder is usable (any one of them)
_DIR_WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    CLIP_DIR: clip.WEIGHT_FILE_NAMES,
    VOCODER_44K_DIR: (bigvgan.HF_WEIGHTS_NAME,),
}
# Hugging Face repos that a folder of the official profile may come from instead
_HUB_REPOS: dict[str, str] = {CLIP_DIR: clip.OFFICIAL_HUB_ID, VOCODER_44K_DIR: bigvgan.HF_REPO_44K}


@dataclass(frozen=True)
class WeightProfile:
    """Presets per component and where their files live."""

    name: str
    root: str  # folder of the weight files, relative to the repository root
    vae: dict[str, str]  # mode -> mmaudio.encoders.vae.VAE_PRESETS key
    vocoder: dict[str, str]  # mode -> mmaudio.encoders.bigvgan.PRESETS key
    clip: str  # mmaudio.encoders.clip.CLIP_PRESETS key
    synchformer: str  # mmaudio.encoders.synchformer.SYNCHFORMER_PRESETS key
    use_hf_cache: bool  # CLIP / BigVGAN-v2 may come from the local Hugging Face cache

    def source_hint(self, relpath: str) -> str:
        """Where a missing file of this profile comes from."""
        if self.name == "tiny":
            return TINY_HINT
        if relpath in _HUB_REPOS:
            repo = _HUB_REPOS[relpath]
            # `hf` is the CLI of the pinned huggingface_hub (it no longer installs `huggingface-cli`)
            return (f"Hugging Face repo '{repo}': `hf download {repo}` (read from the local cache) "
                    f"or `hf download {repo} --local-dir {self.root}/{relpath}`")
        return f"download {RELEASE_URL}/{relpath} into {self.root}/"


PROFILES: dict[str, WeightProfile] = {
    "official": WeightProfile(
        name="official",
        root="ext_weights",
        vae={"16k": "16k", "44k": "44k"},
        vocoder={"16k": "16k", "44k": "44k_v2"},
        clip="official",
        synchformer="official",
        use_hf_cache=True,
    ),
    "tiny": WeightProfile(
        name="tiny",
        root="ext_weights/tiny",
        vae={"16k": "tiny_16k", "44k": "tiny_44k"},
        vocoder={"16k": "tiny_16k", "44k": "tiny_44k"},
        clip="tiny",
        synchformer="tiny",
        use_hf_cache=False,
    ),
}


def get_profile(name: str) -> WeightProfile:
    if name not in PROFILES:
        raise KeyError(f"unknown weight profile {name!r} (known: {sorted(PROFILES)})")
    return PROFILES[name]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: must be one of {MODES}")
    return mode


def check_components(components: Iterable[str]) -> tuple[str, ...]:
    components = tuple(dict.fromkeys(components))  # ordered, no repeats
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown encoder components {unknown} (known: {COMPONENTS})")
    return components


def component_files(mode: str, component: str) -> tuple[str, ...]:
    """Paths (relative to a profile root) that ``component`` reads in ``mode``; folders have no suffix."""
    check_mode(mode)
    files = {
        "audio": (VAE_FILES[mode],),
        "vocoder": (VOCODER_16K_FILE if mode == "16k" else VOCODER_44K_DIR,),
        "clip": (CLIP_DIR,),
        "text": (CLIP_DIR,),
        "sync": (SYNCHFORMER_FILE,),
        "empty_string": (EMPTY_STRING_FILE,),
    }
    return files[component]


@dataclass(frozen=True)
class MissingWeight:
    relpath: str  # relative to the profile root
    looked_at: str  # where it was looked for
    components: tuple[str, ...]
    hint: str  # where to get it


class MissingWeightsError(FileNotFoundError):
    """Weight files a request needs are absent; ``missing`` lists every one of them."""

    def __init__(self, profile: str, mode: str, missing: Sequence[MissingWeight]) -> None:
        self.profile, self.mode, self.missing = profile, mode, list(missing)
        lines = [f"weight profile '{profile}' (mode {mode}) is missing {len(self.missing)} file(s):"]
        for m in self.missing:
            lines.append(f"  - {m.relpath} (for {', '.join(m.components)}): looked at {m.looked_at}; get it: {m.hint}")
        super().__init__("\n".join(lines))


def _hf_cache_lookup(repo_id: str, names: Sequence[str]) -> Path | None:
    """A cached file of ``repo_id`` (first of ``names`` present); never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):  # otherwise None or the "known missing" sentinel
            return Path(found)
    return None


def resolve_weight(profile: str | WeightProfile, relpath: str, *, root: str | os.PathLike = ".") -> Path | None:
    """Where the weight ``relpath`` of ``profile`` is, or None.

    A file: ``<root>/<profile.root>/<relpath>``. A folder: that folder if it holds its weight file,
    else (official) the snapshot folder in the local Hugging Face cache.
    """
    p = get_profile(profile) if isinstance(profile, str) else profile
    local = Path(root) / p.root / relpath
    names = _DIR_WEIGHT_FILES.get(relpath)
    if names is None:
        return local if local.is_file() else None
    if any((local / n).is_file() for n in names):
        return local
    if p.use_hf_cache and relpath in _HUB_REPOS:
        cached = _hf_cache_lookup(_HUB_REPOS[relpath], names)
        if cached is not None:
            return cached.parent
    return None


def _looked_at(p: WeightProfile, relpath: str, root: str | os.PathLike) -> str:
    local = Path(root) / p.root / relpath
    names = _DIR_WEIGHT_FILES.get(relpath)
    if names is None:
        return str(local)
    where = f"{local}/{{{','.join(names)}}}"
    if p.use_hf_cache and relpath in _HUB_REPOS:
        from huggingface_hub import constants

        where += f" and the Hugging Face cache {constants.HF_HUB_CACHE} ({_HUB_REPOS[relpath]})"
    return where


def check_weights(
    profile: str,
    mode: str,
    components: Iterable[str] = COMPONENTS,
    *,
    root: str | os.PathLike = ".",
) -> dict[str, Path]:
    """Resolve every file ``components`` need: {relpath: location}; one error lists all missing files."""
    p = get_profile(profile)
    check_mode(mode)
    needs: dict[str, list[str]] = {}
    for component in check_components(components):
        for relpath in component_files(mode, component):
            needs.setdefault(relpath, []).append(component)
    found: dict[str, Path] = {}
    missing: list[MissingWeight] = []
    for relpath, users in needs.items():
        location = resolve_weight(p, relpath, root=root)
        if location is None:
            missing.append(MissingWeight(relpath, _looked_at(p, relpath, root), tuple(users), p.source_hint(relpath)))
        else:
            found[relpath] = location
    if missing:
        raise MissingWeightsError(profile, mode, missing)
    return found


def weight_paths(
    profile: str,
    mode: str,
    components: Iterable[str] = COMPONENTS,
    *,
    root: str | os.PathLike = ".",
) -> list[Path]:
    """The files ``components`` read (for fingerprints and tracking), found or not.

    A folder stands for the files loaded from it (CLIP: the one checkpoint chosen, safetensors first;
    BigVGAN-v2: bigvgan_generator.pt and config.json), so a hash never reads a checkpoint that is
    not used. Missing weights appear where the profile expects them (a hash of that path then fails
    naming it); this function never raises for absence.
    """
    p = get_profile(profile)
    check_mode(mode)
    relpaths = dict.fromkeys(r for c in check_components(components) for r in component_files(mode, c))
    out: list[Path] = []
    for relpath in relpaths:
        location = resolve_weight(p, relpath, root=root)
        if location is None:
            out.append(Path(root) / p.root / relpath)
        elif relpath == CLIP_DIR:
            out.append(clip.resolve_clip_weights(location))
        elif relpath == VOCODER_44K_DIR:
            out += [f for f in (location / bigvgan.HF_CONFIG_NAME, location / bigvgan.HF_WEIGHTS_NAME) if f.is_file()]
        else:
            out.append(location)
    return out
