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

from mmaudio.choices import PROFILE_ROOTS, Profile
from mmaudio.encoders import bigvgan, clip
from mmaudio.modes import AudioMode
from mmaudio.weights.manifest import MMAUDIO_RELEASE_URL, WEIGHT_FILES
from mmaudio.weights.resolve import MissingWeight, MissingWeightsError, hf_cache_file, hf_cache_location

MODES: tuple[str, ...] = tuple(m.value for m in AudioMode)
COMPONENTS: tuple[str, ...] = ("audio", "vocoder", "clip", "text", "sync", "empty_string")

RELEASE_URL = MMAUDIO_RELEASE_URL

VAE_FILES: dict[str, str] = {AudioMode.K16: "v1-16.pth", AudioMode.K44: "v1-44.pth"}
VOCODER_16K_FILE = "best_netG.pt"
VOCODER_44K_DIR = "bigvgan_v2_44khz_128band_512x"
VOCODER_FILES: dict[str, str] = {AudioMode.K16: VOCODER_16K_FILE, AudioMode.K44: VOCODER_44K_DIR}
SYNCHFORMER_FILE = "synchformer_state_dict.pth"
EMPTY_STRING_FILE = "empty_string.pth"
CLIP_DIR = "DFN5B-CLIP-ViT-H-14-384"
# the file inside a folder that proves the folder is usable (any one of them)
_DIR_WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    CLIP_DIR: clip.WEIGHT_FILE_NAMES,
    VOCODER_44K_DIR: (bigvgan.HF_WEIGHTS_NAME,),
}


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
    written_by: str | None = None  # the command that writes this profile's files; None: upstream's (the manifest)
    empty_string_optional: bool = False  # training may start its null text from zeros when empty_string.pth is absent

    def hub_repo(self, relpath: str) -> str | None:
        """The Hugging Face repo a folder of this profile may come from (from the cache), or None."""
        source = WEIGHT_FILES.get(relpath)
        return source.hf_repo if self.use_hf_cache and source is not None else None

    def source_hint(self, relpath: str) -> str:
        """Where a missing file of this profile comes from."""
        if self.written_by is not None:
            return self.written_by
        repo = self.hub_repo(relpath)
        if repo is not None:
            # `hf` is the CLI of the pinned huggingface_hub (it no longer installs `huggingface-cli`)
            return (f"Hugging Face repo '{repo}': `hf download {repo}` (read from the local cache) "
                    f"or `hf download {repo} --local-dir {self.root}/{relpath}`")
        source = WEIGHT_FILES.get(relpath)
        if source is not None and source.url is not None:
            return f"download {source.url} into {self.root}/"
        return f"no known source for {relpath}"


TINY_HINT = "run `dvc repro tiny_weights`"

PROFILES: dict[str, WeightProfile] = {
    Profile.OFFICIAL.value: WeightProfile(
        name=Profile.OFFICIAL.value,
        root=PROFILE_ROOTS[Profile.OFFICIAL],
        vae={"16k": "16k", "44k": "44k"},
        vocoder={"16k": "16k", "44k": "44k_v2"},
        clip="official",
        synchformer="official",
        use_hf_cache=True,
    ),
    Profile.TINY.value: WeightProfile(
        name=Profile.TINY.value,
        root=PROFILE_ROOTS[Profile.TINY],
        vae={"16k": "tiny_16k", "44k": "tiny_44k"},
        vocoder={"16k": "tiny_16k", "44k": "tiny_44k"},
        clip="tiny",
        synchformer="tiny",
        use_hf_cache=False,
        written_by=TINY_HINT,
        empty_string_optional=True,
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
        "vocoder": (VOCODER_FILES[mode],),
        "clip": (CLIP_DIR,),
        "text": (CLIP_DIR,),
        "sync": (SYNCHFORMER_FILE,),
        "empty_string": (EMPTY_STRING_FILE,),
    }
    return files[component]


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
    repo = p.hub_repo(relpath)
    if repo is not None:
        cached = hf_cache_file(repo, names)
        if cached is not None:
            return cached.parent
    return None


def _looked_at(p: WeightProfile, relpath: str, root: str | os.PathLike) -> str:
    local = Path(root) / p.root / relpath
    names = _DIR_WEIGHT_FILES.get(relpath)
    if names is None:
        return str(local)
    where = f"{local}/{{{','.join(names)}}}"
    repo = p.hub_repo(relpath)
    if repo is not None:
        where += f" and the Hugging Face cache {hf_cache_location()} ({repo})"
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
        raise MissingWeightsError(f"weight profile '{profile}' (mode {mode}) is missing {len(missing)} file(s):", missing)
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
