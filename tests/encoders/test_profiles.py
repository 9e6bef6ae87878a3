"""Weight profiles: the registry, the tiny files (formats, determinism), missing-file reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

from mmaudio.encoders import bigvgan, clip, synchformer, vae
from mmaudio.encoders.profiles import (
    COMPONENTS,
    PROFILES,
    RELEASE_URL,
    MissingWeightsError,
    check_weights,
    component_files,
    get_profile,
    resolve_weight,
    weight_paths,
)
from mmaudio.encoders.tiny import file_seed, write_tiny_weights
from mmaudio.paths import OutputPathError
from mmaudio.weights import load_weight_file

TINY_FILES = [
    "DFN5B-CLIP-ViT-H-14-384/open_clip_model.safetensors",
    "best_netG.pt",
    "bigvgan_v2_44khz_128band_512x/bigvgan_generator.pt",
    "bigvgan_v2_44khz_128band_512x/config.json",
    "empty_string.pth",
    "synchformer_state_dict.pth",
    "v1-16.pth",
    "v1-44.pth",
]
OFFICIAL_16K = ["v1-16.pth", "best_netG.pt", "DFN5B-CLIP-ViT-H-14-384", "synchformer_state_dict.pth", "empty_string.pth"]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so that what this machine has cached changes nothing."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _files(folder: Path) -> list[str]:
    return sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())


# ---- registry ----

def test_every_profile_names_existing_presets_with_the_official_contract() -> None:
    assert set(PROFILES) == {"official", "tiny"}
    for p in PROFILES.values():
        for mode, rate, mels, latent in (("16k", 16_000, 80, 20), ("44k", 44_100, 128, 40)):
            v = vae.get_vae_preset(p.vae[mode])
            assert (v.mel, v.data_dim, v.latent_dim) == (mode, mels, latent)
            voc = bigvgan.get_preset(p.vocoder[mode]).config
            assert (voc.sampling_rate, voc.num_mels) == (rate, mels)
        assert synchformer.get_synchformer_preset(p.synchformer).motionformer.output_dim == 768
        assert clip.get_clip_preset(p.clip).embed_dim == 1024
    assert get_profile("official").root == "ext_weights" and get_profile("tiny").root == "ext_weights/tiny"
    with pytest.raises(KeyError, match="'huge'"):
        get_profile("huge")


def test_component_files_per_mode() -> None:
    assert component_files("16k", "audio") == ("v1-16.pth",)
    assert component_files("44k", "audio") == ("v1-44.pth",)
    assert component_files("16k", "vocoder") == ("best_netG.pt",)
    assert component_files("44k", "vocoder") == ("bigvgan_v2_44khz_128band_512x",)
    assert component_files("16k", "clip") == component_files("44k", "text") == ("DFN5B-CLIP-ViT-H-14-384",)
    with pytest.raises(ValueError, match="'22k'"):
        component_files("22k", "audio")


# ---- the tiny files ----

def test_tiny_files_have_official_names_and_formats(tiny_root: Path) -> None:
    folder = tiny_root / "ext_weights" / "tiny"
    assert _files(folder) == TINY_FILES
    assert set(load_weight_file(folder / "v1-16.pth")) == set(vae.AudioVAE("tiny_16k").state_dict())
    generator = load_weight_file(folder / "best_netG.pt", subkey="generator")  # {'generator': state dict}
    assert "conv_pre.weight_g" in generator and "conv_pre.weight_v" in generator  # weight-norm layout
    config = json.loads((folder / "bigvgan_v2_44khz_128band_512x" / "config.json").read_text())
    assert (config["num_mels"], config["sampling_rate"], config["hop_size"]) == (128, 44_100, 512)
    sync = load_weight_file(folder / "synchformer_state_dict.pth")
    assert sync and all(k.startswith("vfeat_extractor.") for k in sync)
    assert tuple(sync["vfeat_extractor.feature_proj.weight"].shape) == (768, 32)
    empty = torch.load(folder / "empty_string.pth", weights_only=True)
    assert empty.shape == (1, 77, 1024) and empty.dtype == torch.float32
    assert torch.allclose(empty.norm(dim=-1), torch.ones(1, 77), atol=1e-5)  # unit-norm per token


def test_same_seed_gives_byte_identical_files(tiny_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_tiny_weights(again, seed=0)
    first = tiny_root / "ext_weights" / "tiny"
    assert _files(again) == TINY_FILES
    differing = [f for f in TINY_FILES if (first / f).read_bytes() != (again / f).read_bytes()]
    assert differing == []


def test_another_seed_gives_other_weights_and_replaces_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "v1-16.pth").write_bytes(b"left over")  # a file of the tiny layout from an earlier run
    (out / "notes.txt").write_bytes(b"not ours")  # anything else stops the replacement (issue 16)
    with pytest.raises(OutputPathError, match=r"holds entries this stage does not write \(notes\.txt\)"):
        write_tiny_weights(out, seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "v1-16.pth"]
    (out / "notes.txt").unlink()
    write_tiny_weights(out, seed=1)
    assert _files(out) == TINY_FILES  # nothing left over, no temp folder next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_cache", "tiny"]
    ours = load_weight_file(out / "v1-16.pth")
    gen = torch.Generator().manual_seed(file_seed(1, "v1-16.pth"))
    expected = vae.AudioVAE("tiny_16k")
    expected.reset_parameters(gen)
    assert all(torch.equal(ours[k], v) for k, v in expected.state_dict().items())
    assert file_seed(0, "v1-16.pth") != file_seed(1, "v1-16.pth") != file_seed(1, "v1-44.pth")


# ---- missing files ----

def test_missing_official_files_are_listed_in_one_error(tmp_path: Path, empty_hf_cache: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        check_weights("official", "16k", root=tmp_path)
    e = err.value
    assert [m.relpath for m in e.missing] == OFFICIAL_16K
    msg = str(e)
    assert "missing 5 file(s)" in msg
    for name in ("v1-16.pth", "best_netG.pt", "synchformer_state_dict.pth", "empty_string.pth"):
        assert f"{RELEASE_URL}/{name}" in msg
        assert str(tmp_path / "ext_weights" / name) in msg
    assert "apple/DFN5B-CLIP-ViT-H-14-384" in msg and str(empty_hf_cache) in msg
    clip_line = next(line for line in msg.splitlines() if "DFN5B-CLIP-ViT-H-14-384 (for" in line)
    assert "(for clip, text)" in clip_line  # one line per file, naming every component that needs it

    with pytest.raises(MissingWeightsError) as err:
        check_weights("official", "44k", ["audio", "vocoder"], root=tmp_path)
    assert [m.relpath for m in err.value.missing] == ["v1-44.pth", "bigvgan_v2_44khz_128band_512x"]
    assert f"{RELEASE_URL}/v1-44.pth" in str(err.value) and bigvgan.HF_REPO_44K in str(err.value)


def test_missing_tiny_files_point_to_the_stage(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        check_weights("tiny", "44k", ["sync", "vocoder"], root=tmp_path)
    msg = str(err.value)
    assert len(err.value.missing) == 2 and msg.count("run `dvc repro tiny_weights`") == 2
    assert str(tmp_path / "ext_weights" / "tiny" / "synchformer_state_dict.pth") in msg
    assert "huggingface" not in msg.lower()  # the tiny profile never looks at the hub cache


def test_partial_folder_reports_only_what_is_absent(tiny_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ext_weights" / "tiny"
    folder.mkdir(parents=True)
    (folder / "v1-16.pth").symlink_to(tiny_root / "ext_weights" / "tiny" / "v1-16.pth")
    (folder / "DFN5B-CLIP-ViT-H-14-384").mkdir()  # a folder without a checkpoint does not count
    found = check_weights("tiny", "16k", ["audio"], root=tmp_path)
    assert found == {"v1-16.pth": folder / "v1-16.pth"}
    with pytest.raises(MissingWeightsError) as err:
        check_weights("tiny", "16k", ["audio", "text", "empty_string"], root=tmp_path)
    assert [m.relpath for m in err.value.missing] == ["DFN5B-CLIP-ViT-H-14-384", "empty_string.pth"]


def test_unknown_components_and_modes_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'video'"):
        check_weights("tiny", "16k", ["video"], root=tmp_path)
    with pytest.raises(ValueError, match=r"'48k'"):
        check_weights("tiny", "48k", root=tmp_path)
    with pytest.raises(KeyError, match=r"'small'"):
        check_weights("small", "16k", root=tmp_path)


# ---- Hugging Face cache (official only) ----

def _fake_hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: refs/main names the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_official_hub_models_come_from_the_cache_unless_ext_weights_has_them(tmp_path: Path, empty_hf_cache: Path) -> None:
    clip_snapshot = _fake_hub_snapshot(empty_hf_cache, clip.OFFICIAL_HUB_ID, {"open_clip_pytorch_model.bin": b"x"})
    voc_snapshot = _fake_hub_snapshot(empty_hf_cache, bigvgan.HF_REPO_44K, {"bigvgan_generator.pt": b"x", "config.json": b"{}"})
    found = check_weights("official", "44k", ["clip", "vocoder"], root=tmp_path)
    assert found == {"DFN5B-CLIP-ViT-H-14-384": clip_snapshot, "bigvgan_v2_44khz_128band_512x": voc_snapshot}
    assert weight_paths("official", "44k", ["clip", "vocoder"], root=tmp_path) == [
        clip_snapshot / "open_clip_pytorch_model.bin", voc_snapshot / "config.json", voc_snapshot / "bigvgan_generator.pt",
    ]
    local = tmp_path / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384"
    local.mkdir(parents=True)
    (local / "open_clip_model.safetensors").write_bytes(b"x")
    assert resolve_weight("official", "DFN5B-CLIP-ViT-H-14-384", root=tmp_path) == local
    # the tiny profile never falls back to the cache
    assert resolve_weight("tiny", "DFN5B-CLIP-ViT-H-14-384", root=tmp_path) is None


def test_weight_paths_never_raise_for_absence(tmp_path: Path) -> None:
    paths = weight_paths("official", "16k", root=tmp_path)
    expected = [tmp_path / "ext_weights" / r for r in ("v1-16.pth", "best_netG.pt", "DFN5B-CLIP-ViT-H-14-384",
                                                       "synchformer_state_dict.pth", "empty_string.pth")]
    assert sorted(paths) == sorted(expected)
    assert weight_paths("official", "16k", COMPONENTS, root=tmp_path) == paths  # default: every component


def test_weight_paths_of_the_tiny_profile_are_its_files(tiny_root: Path) -> None:
    folder = tiny_root / "ext_weights" / "tiny"
    paths = weight_paths("tiny", "44k", ["audio", "vocoder", "text"], root=tiny_root)
    assert paths == [
        folder / "v1-44.pth",
        folder / "bigvgan_v2_44khz_128band_512x" / "config.json",
        folder / "bigvgan_v2_44khz_128band_512x" / "bigvgan_generator.pt",
        folder / "DFN5B-CLIP-ViT-H-14-384" / "open_clip_model.safetensors",
    ]
    assert all(re.search(r"ext_weights/tiny/", p.as_posix()) for p in paths)
