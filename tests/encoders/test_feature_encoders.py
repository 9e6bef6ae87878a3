"""FeatureEncoders: strict loading of the tiny profile, feature shapes, what it loads, bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

from mmaudio.encoders.clip import CLIPEncoder, load_clip
from mmaudio.encoders.feature_encoders import FeatureEncoders
from mmaudio.encoders.profiles import VAE_FILES, MissingWeightsError
from mmaudio.encoders.tiny import CLIP_FILE_NAME
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file
from tests.helpers import one_thread  # noqa: F401  (autouse)

# mode -> (samples in 8 s, latent frames, latent channels, mel bins)
CONTRACT = {"16k": (128_000, 250, 20, 80), "44k": (353_280, 345, 40, 128)}
TINY = Path("ext_weights") / "tiny"


@pytest.fixture(scope="module", params=["16k", "44k"])
def encoders(request: pytest.FixtureRequest, tiny_root: Path) -> FeatureEncoders:
    return FeatureEncoders("tiny", request.param, root=tiny_root)


def _partial_root(tiny_root: Path, tmp_path: Path, names: list[str]) -> Path:
    """A root whose ext_weights/tiny links only ``names`` from the full tiny folder."""
    folder = tmp_path / TINY
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to(tiny_root / TINY / name)
    return tmp_path


def _wave(b: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, samples, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


# ---- shapes, dtypes, values ----

def test_audio_features_follow_the_contract(encoders: FeatureEncoders) -> None:
    samples, frames, channels, _ = CONTRACT[encoders.mode]
    assert encoders.clip_samples == samples
    wave = _wave(2, samples)
    mean, std = encoders.encode_audio(wave)
    assert mean.shape == std.shape == (2, frames, channels)
    assert mean.dtype == std.dtype == torch.float32
    assert (std > 0).all() and not torch.equal(mean[0], mean[1])
    # the same chain by hand: mel -> VAE encoder, channels last
    ref_mean, ref_std = encoders.vae.encode(encoders.mel(wave))
    torch.testing.assert_close(mean, ref_mean.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(std, ref_std.transpose(1, 2), rtol=0, atol=0)


def test_latents_decode_to_mel_and_waveform(encoders: FeatureEncoders) -> None:
    samples, frames, channels, mels = CONTRACT[encoders.mode]
    frames //= 5  # 1.6 s: the vocoder is the slowest tiny part, and lengths scale linearly
    latent = torch.randn(1, frames, channels, generator=torch.Generator().manual_seed(1))
    mel = encoders.decode_latents(latent)
    assert mel.shape == (1, mels, 2 * frames)
    wave = encoders.vocode(mel)
    assert wave.shape == (1, samples // 5) and wave.dtype == torch.float32
    assert wave.abs().max() <= 1.0 and wave.abs().max() > 0
    torch.testing.assert_close(encoders.latents_to_waveform(latent), wave, rtol=0, atol=0)


def test_video_and_text_features_follow_the_contract(encoders: FeatureEncoders) -> None:
    gen = torch.Generator().manual_seed(2)
    clip_u8 = torch.randint(0, 256, (1, 64, 3, 384, 384), generator=gen, dtype=torch.uint8)
    clip_features = encoders.encode_clip(clip_u8)
    assert clip_features.shape == (1, 64, 1024) and clip_features.dtype == torch.float32
    # uint8 and [0, 1] floats are the same frames (torchvision's scaling: x * (1 / 255))
    torch.testing.assert_close(encoders.encode_clip(clip_u8[:, :4].float().mul(1 / 255), batch_size=3),
                               clip_features[:, :4], rtol=0, atol=1e-6)

    sync_u8 = torch.randint(0, 256, (1, 200, 3, 224, 224), generator=gen, dtype=torch.uint8)
    sync_features = encoders.encode_sync(sync_u8, batch_size=5)
    assert sync_features.shape == (1, 192, 768) and sync_features.dtype == torch.float32
    assert sync_features.std() > 0

    text = encoders.encode_text(["a dog barks", "rain on a tin roof"])
    assert text.shape == (2, 77, 1024) and text.dtype == torch.float32
    empty = encoders.empty_string_feature()
    assert empty.shape == (77, 1024)
    # the tiny empty_string.pth holds this very CLIP's features of ''
    torch.testing.assert_close(empty, encoders.encode_text([""])[0], rtol=0, atol=1e-6)


def test_loaded_weights_are_the_files(tiny_root: Path, encoders: FeatureEncoders) -> None:
    vae_file = tiny_root / TINY / VAE_FILES[encoders.mode]
    state = load_weight_file(vae_file)
    assert all(torch.equal(v, state[k]) for k, v in encoders.vae.state_dict().items())
    sync = load_weight_file(tiny_root / TINY / "synchformer_state_dict.pth")
    assert all(torch.equal(v, sync[k]) for k, v in encoders.synchformer.state_dict().items())
    assert not any(p.requires_grad for p in encoders.vae.parameters())
    assert not encoders.synchformer.training and not encoders.clip.training


def test_bfloat16_outputs(tiny_root: Path) -> None:
    enc = FeatureEncoders("tiny", "16k", root=tiny_root, dtype=torch.bfloat16, components=("audio",))
    mean, std = enc.encode_audio(_wave(1, 128_000))
    assert mean.shape == (1, 250, 20) and mean.dtype == std.dtype == torch.bfloat16
    assert enc.mel.mel_basis.dtype == torch.float32  # the STFT stays in float32


def test_outputs_are_inference_tensors(encoders: FeatureEncoders) -> None:
    mean, _ = encoders.encode_audio(_wave(1, CONTRACT[encoders.mode][0]))
    assert mean.is_inference() and not mean.requires_grad


# ---- what gets loaded ----

def test_only_requested_components_are_loaded(tiny_root: Path, tmp_path: Path) -> None:
    # only the CLIP folder exists: every other file is absent, so touching one would fail
    root = _partial_root(tiny_root, tmp_path, ["DFN5B-CLIP-ViT-H-14-384"])
    enc = FeatureEncoders("tiny", "44k", root=root, components=("text",))
    assert enc.vae is None and enc.vocoder is None and enc.synchformer is None and enc.mel is None
    assert enc.encode_text(["a bell"]).shape == (1, 77, 1024)
    for call, component in [
        (lambda: enc.encode_audio(_wave(1, 353_280)), "audio"),
        (lambda: enc.encode_clip(torch.zeros(1, 1, 3, 384, 384)), "clip"),
        (lambda: enc.encode_sync(torch.zeros(1, 16, 3, 224, 224)), "sync"),
        (lambda: enc.vocode(torch.zeros(1, 128, 4)), "vocoder"),
        (lambda: enc.empty_string_feature(), "empty_string"),
    ]:
        with pytest.raises(RuntimeError, match=f"without the '{component}' component"):
            call()


def test_missing_files_fail_before_anything_loads(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    root = _partial_root(tiny_root, tmp_path, ["v1-16.pth"])
    with pytest.raises(MissingWeightsError) as err:
        FeatureEncoders("tiny", "16k", root=root)
    assert [m.relpath for m in err.value.missing] == [  # in the order of the default components
        "DFN5B-CLIP-ViT-H-14-384", "synchformer_state_dict.pth", "empty_string.pth", "best_netG.pt",
    ]
    with pytest.raises(MissingWeightsError) as err:
        FeatureEncoders("official", "16k", root=root)  # nothing under ext_weights/ itself
    assert len(err.value.missing) == 5
    assert "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/v1-16.pth" in str(err.value)


# ---- bad files ----

def _root_with(tiny_root: Path, tmp_path: Path, name: str, write) -> Path:
    """A root with every tiny file linked except ``name``, which ``write(path)`` creates."""
    names = [p.name for p in (tiny_root / TINY).iterdir() if p.name != name]
    root = _partial_root(tiny_root, tmp_path, names)
    write(root / TINY / name)
    return root


def test_truncated_file_is_named(tiny_root: Path, tmp_path: Path) -> None:
    good = (tiny_root / TINY / "v1-16.pth").read_bytes()
    root = _root_with(tiny_root, tmp_path, "v1-16.pth", lambda p: p.write_bytes(good[: len(good) // 2]))
    with pytest.raises(WeightFileError, match=r"v1-16\.pth is corrupt or truncated"):
        FeatureEncoders("tiny", "16k", root=root, components=("audio",))


def test_wrong_keys_are_named(tiny_root: Path, tmp_path: Path) -> None:
    state = load_weight_file(tiny_root / TINY / "synchformer_state_dict.pth")
    state["vfeat_extractor.not_a_layer.weight"] = state.pop("vfeat_extractor.norm.weight")

    root = _root_with(tiny_root, tmp_path, "synchformer_state_dict.pth", lambda p: save_weight_file(state, p))
    with pytest.raises(WeightFileError) as err:
        FeatureEncoders("tiny", "16k", root=root, components=("sync",))
    msg = str(err.value)
    assert "synchformer_state_dict.pth" in msg and "vfeat_extractor.norm.weight" in msg and "not_a_layer" in msg


def test_a_file_of_the_other_mode_does_not_fit(tiny_root: Path, tmp_path: Path) -> None:
    other = (tiny_root / TINY / "v1-44.pth").read_bytes()  # 128 mel bins, 40 latent channels
    root = _root_with(tiny_root, tmp_path, "v1-16.pth", lambda p: p.write_bytes(other))
    with pytest.raises(WeightFileError, match=r"v1-16\.pth does not fit AudioVAE.*shape mismatches.*data_mean"):
        FeatureEncoders("tiny", "16k", root=root, components=("audio",))


class _Payload:
    """Stands for any pickled object: loading it would need its class, i.e. running code."""

    def __init__(self) -> None:
        self.weight = torch.zeros(3)


@pytest.mark.parametrize(("name", "component"), [("v1-16.pth", "audio"), ("best_netG.pt", "vocoder"),
                                                 ("empty_string.pth", "empty_string")])
def test_pickled_objects_are_refused(tiny_root: Path, tmp_path: Path, name: str, component: str) -> None:
    root = _root_with(tiny_root, tmp_path, name, lambda p: torch.save({"generator": _Payload()}, p))
    with pytest.raises(WeightFileError, match=re.escape(name) + ".*(refused|could not be read)"):
        FeatureEncoders("tiny", "16k", root=root, components=(component,))


def test_bad_clip_checkpoint_is_named(tiny_root: Path, tmp_path: Path) -> None:
    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / CLIP_FILE_NAME).write_bytes(b"not a safetensors file")

    root = _root_with(tiny_root, tmp_path, "DFN5B-CLIP-ViT-H-14-384", write)
    with pytest.raises(WeightFileError, match=rf"{CLIP_FILE_NAME}"):
        FeatureEncoders("tiny", "16k", root=root, components=("text",))


def test_tiny_clip_file_is_the_official_format(tiny_root: Path) -> None:
    folder = tiny_root / TINY / "DFN5B-CLIP-ViT-H-14-384"
    assert os.listdir(folder) == [CLIP_FILE_NAME]
    model = load_clip(folder, "tiny")  # the official loader, given the folder as for a hub snapshot
    assert isinstance(CLIPEncoder("tiny", model=model), CLIPEncoder)
