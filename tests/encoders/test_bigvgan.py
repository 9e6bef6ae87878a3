"""BigVGAN vocoders: official key layouts, sizes, output lengths, file formats and error messages.

Full-size models are only built on the meta device (no memory, no compute); real forwards use the
tiny presets, which keep the mels / sample rate / hop of the official ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmaudio.encoders.alias_free import Activation1d, DownSample1d, UpSample1d, kaiser_sinc_lowpass
from mmaudio.encoders.bigvgan import (
    HF_REPO_44K,
    PRESETS,
    BigVGAN,
    BigVGANConfig,
    build_vocoder,
    get_preset,
    load_vocoder,
    official_state_dict,
    save_vocoder,
)
from mmaudio.weights import WeightFileError

torch.set_num_threads(1)

KEYS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "keys"
MANIFESTS = {"16k": "bigvgan_16k.json", "44k_v2": "bigvgan_v2_44k.json"}
# parameters counted with weight norm applied (weight_g + weight_v), as the official files store them
PARAM_COUNTS = {"16k": 112_231_250, "44k_v2": 122_184_529}
# 8 s of audio: mel frames -> samples
EIGHT_SECONDS = {
    "16k": (500, 128_000), "44k_v2": (690, 353_280), "tiny_16k": (500, 128_000), "tiny_44k": (690, 353_280),
}

# Generator part of nvidia/bigvgan_v2_44khz_128band_512x/config.json, with some of its training keys.
OFFICIAL_44K_CONFIG_JSON = {
    "resblock": "1", "num_gpus": 0, "batch_size": 4, "learning_rate": 0.0001,
    "upsample_rates": [8, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False, "use_bias_at_final": False, "activation": "snakebeta", "snake_logscale": True,
    "use_cqtd_instead_of_mrd": True, "mpd_reshapes": [2, 3, 5, 7, 11], "segment_size": 65536,
    "num_mels": 128, "num_freq": 2049, "n_fft": 2048, "hop_size": 512, "win_size": 2048,
    "sampling_rate": 44100, "fmin": 0, "fmax": None,
}


def _meta_model(preset: str) -> BigVGAN:
    with torch.device("meta"):
        return BigVGAN(get_preset(preset).config)


def _mel(preset: str, frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, get_preset(preset).config.num_mels, frames, generator=gen)


@pytest.fixture(scope="module")
def tiny16() -> BigVGAN:
    return build_vocoder("tiny_16k", seed=0).eval()


@pytest.fixture(scope="module")
def tiny44() -> BigVGAN:
    return build_vocoder("tiny_44k", seed=0).eval()


# ----------------------------------------------------------------------------- layout and size


@pytest.mark.parametrize("preset", ["16k", "44k_v2"])
def test_state_dict_matches_official_key_manifest(preset: str) -> None:
    expected = json.loads((KEYS_DIR / MANIFESTS[preset]).read_text())
    got = {k: list(v.shape) for k, v in _meta_model(preset).state_dict().items()}
    assert got == expected
    assert "conv_pre.weight_g" in got and "resblocks.0.activations.0.upsample.filter" in got


@pytest.mark.parametrize("preset", ["16k", "44k_v2"])
def test_parameter_count(preset: str) -> None:
    assert sum(p.numel() for p in _meta_model(preset).parameters()) == PARAM_COUNTS[preset]


@pytest.mark.parametrize("preset", ["16k", "44k_v2"])
def test_output_length_official_on_meta(preset: str) -> None:
    frames, samples = EIGHT_SECONDS[preset]
    model = _meta_model(preset)
    with torch.device("meta"):
        y = model(torch.empty(2, model.config.num_mels, frames))
    assert tuple(y.shape) == (2, 1, samples)


def test_tiny_presets_keep_the_official_contract() -> None:
    for tiny, official in [("tiny_16k", "16k"), ("tiny_44k", "44k_v2")]:
        t, o = PRESETS[tiny].config, PRESETS[official].config
        assert (t.num_mels, t.sampling_rate, t.hop_length) == (o.num_mels, o.sampling_rate, o.hop_length)
        assert PRESETS[tiny].layout == PRESETS[official].layout
    assert PRESETS["16k"].config.hop_length == 256 and PRESETS["44k_v2"].config.hop_length == 512


def test_official_config_json_gives_the_44k_preset() -> None:
    config = BigVGANConfig.from_json_dict(OFFICIAL_44K_CONFIG_JSON, source="config.json")
    assert config == PRESETS["44k_v2"].config
    # what we write is read back to the same config, and carries hop_size like the official file
    written = config.to_json_dict()
    assert written["hop_size"] == 512
    assert BigVGANConfig.from_json_dict(written, source="x") == config


def test_config_json_missing_key_or_inconsistent_hop_is_named() -> None:
    broken = {k: v for k, v in OFFICIAL_44K_CONFIG_JSON.items() if k != "num_mels"}
    with pytest.raises(WeightFileError, match=r"cfg\.json.*num_mels"):
        BigVGANConfig.from_json_dict(broken, source="cfg.json")
    with pytest.raises(WeightFileError, match="hop_size 256"):
        BigVGANConfig.from_json_dict({**OFFICIAL_44K_CONFIG_JSON, "hop_size": 256}, source="cfg.json")


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="tiny_44k"):
        get_preset("22k")


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("preset", ["tiny_16k", "tiny_44k"])
def test_tiny_output_length_for_eight_seconds(preset: str, tiny16: BigVGAN, tiny44: BigVGAN) -> None:
    model = tiny16 if preset == "tiny_16k" else tiny44
    frames, samples = EIGHT_SECONDS[preset]
    with torch.inference_mode():
        y = model(_mel(preset, frames))
    assert tuple(y.shape) == (1, 1, samples)
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0 and y.std() > 0


def test_final_bound_is_tanh_for_16k_and_clamp_for_44k(tiny16: BigVGAN, tiny44: BigVGAN) -> None:
    with torch.inference_mode():
        # a huge input drives both outputs to the bound
        y16 = tiny16(100 * _mel("tiny_16k", 8))
        y44 = tiny44(100 * _mel("tiny_44k", 8))
    assert y16.abs().max() <= 1.0 and y44.abs().max() <= 1.0
    assert (y44.abs() == 1.0).any()  # clamp (44k) saturates exactly at the bound
    assert tiny16.conv_post.bias is not None and tiny44.conv_post.bias is None


def test_forward_rejects_wrong_mel_bins(tiny16: BigVGAN) -> None:
    with pytest.raises(ValueError, match=r"\(B, 80, T\)"):
        tiny16(torch.zeros(1, 128, 4))


def test_weight_norm_removal_keeps_the_function() -> None:
    model = build_vocoder("tiny_16k", seed=3).eval()
    mel = _mel("tiny_16k", 12)
    with torch.inference_mode():
        before = model(mel)
        after = model.remove_weight_norm()(mel)
    assert not model.has_weight_norm
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- save / load


def _assert_loaded_for_inference(model: BigVGAN) -> None:
    keys = model.state_dict().keys()
    assert not model.has_weight_norm
    assert not any(k.endswith((".weight_g", ".weight_v")) for k in keys)
    assert "conv_pre.weight" in keys and "ups.0.0.weight" in keys and "resblocks.0.convs1.0.weight" in keys
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("preset", ["tiny_16k", "tiny_44k"])
def test_tiny_save_load_round_trip_is_exact(preset: str, tmp_path: Path) -> None:
    model = build_vocoder(preset, seed=7).eval()
    target = tmp_path / ("best_netG.pt" if preset == "tiny_16k" else "bigvgan_tiny")
    written = save_vocoder(model, target)

    # official format: {'generator': state dict with weight norm}
    raw = torch.load(written, map_location="cpu", weights_only=True)
    assert list(raw) == ["generator"]
    assert set(raw["generator"]) == set(model.state_dict())
    if preset == "tiny_44k":
        assert written == target / "bigvgan_generator.pt"
        written_config = json.loads((target / "config.json").read_text())
        assert BigVGANConfig.from_json_dict(written_config, source="x") == model.config

    loaded = load_vocoder(target, preset)
    _assert_loaded_for_inference(loaded)
    model.remove_weight_norm()
    mel = _mel(preset, 20, batch=2)
    with torch.inference_mode():
        assert torch.equal(loaded(mel), model(mel))


def test_load_accepts_parametrization_names_and_folded_checkpoints(tmp_path: Path) -> None:
    model = build_vocoder("tiny_16k", seed=11).eval()
    # the names torch.nn.utils.parametrizations.weight_norm gives (upstream MMAudio's modules)
    new_names = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
    renamed = {}
    for key, value in model.state_dict().items():
        for old, new in new_names.items():
            key = key.replace(old, new)
        renamed[key] = value
    torch.save({"generator": renamed}, tmp_path / "new_torch.pt")
    from_new = load_vocoder(tmp_path / "new_torch.pt", "tiny_16k")

    model.remove_weight_norm()
    torch.save({"generator": model.state_dict()}, tmp_path / "folded.pt")
    from_folded = load_vocoder(tmp_path / "folded.pt", "tiny_16k")

    mel = _mel("tiny_16k", 10)
    with torch.inference_mode():
        ref = model(mel)
        assert torch.equal(from_new(mel), ref)
        assert torch.equal(from_folded(mel), ref)
    # a folded model is written back in the weight-norm layout
    assert set(official_state_dict(model)) == set(build_vocoder("tiny_16k").state_dict())


def test_wrong_keys_raise_weight_file_error_naming_the_file(tmp_path: Path) -> None:
    sd = build_vocoder("tiny_16k", seed=0).state_dict()
    sd["conv_pre.weight_gain"] = sd.pop("conv_pre.weight_g")
    bad = tmp_path / "wrong_keys.pt"
    torch.save({"generator": sd}, bad)
    with pytest.raises(WeightFileError, match=r"wrong_keys\.pt.*conv_pre\.weight_g"):
        load_vocoder(bad, "tiny_16k")


def test_missing_generator_entry_raises_weight_file_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "no_generator.pt"
    torch.save(build_vocoder("tiny_16k", seed=0).state_dict(), bad)  # not nested under 'generator'
    with pytest.raises(WeightFileError, match=r"no_generator\.pt.*'generator'"):
        load_vocoder(bad, "tiny_16k")


def test_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    save_vocoder(build_vocoder("tiny_44k", seed=0), tmp_path / "tiny44.pt")  # 128 mels, saved as a file
    with pytest.raises(WeightFileError, match=r"tiny44\.pt.*conv_pre\.weight_v"):
        load_vocoder(tmp_path / "tiny44.pt", "tiny_16k")


def test_directory_config_must_keep_the_preset_contract(tmp_path: Path) -> None:
    save_vocoder(build_vocoder("tiny_16k", seed=0), tmp_path / "v", layout="hf_dir")
    with pytest.raises(WeightFileError, match=r"config\.json has num_mels=80.*needs 128"):
        load_vocoder(tmp_path / "v", "tiny_44k")


def test_missing_16k_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*best_netG\.pt"):
        load_vocoder(tmp_path / "nope.pt", "16k")


def test_missing_44k_directory_names_the_repo_and_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_vocoder(tmp_path / "bigvgan_v2", "44k_v2")
    msg = str(err.value)
    assert HF_REPO_44K in msg and str(tmp_path / "bigvgan_v2") in msg
    assert "config.json" in msg and "bigvgan_generator.pt" in msg

    empty_cache = tmp_path / "hf_cache"
    with pytest.raises(FileNotFoundError) as err:
        load_vocoder(None, "44k_v2", cache_dir=empty_cache)
    assert HF_REPO_44K in str(err.value) and str(empty_cache) in str(err.value)


def test_44k_is_found_in_the_hugging_face_cache(tmp_path: Path) -> None:
    # the cache layout huggingface_hub writes: refs/main names the snapshot folder
    repo = tmp_path / ("models--" + HF_REPO_44K.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    # a tiny model with the 44k contract stands in for the official snapshot
    save_vocoder(build_vocoder("tiny_44k", seed=5), repo / "snapshots" / "0123abcd", layout="hf_dir")
    model = load_vocoder(None, "44k_v2", cache_dir=tmp_path)
    assert model.config == PRESETS["tiny_44k"].config  # config.json of the snapshot decides the widths
    _assert_loaded_for_inference(model)


# ----------------------------------------------------------------------------- anti-aliased activation


def test_lowpass_taps_are_symmetric_and_sum_to_one() -> None:
    taps = kaiser_sinc_lowpass(0.25, 0.3, 12).flatten()
    assert taps.shape == (12,)
    torch.testing.assert_close(taps.sum(), torch.tensor(1.0))
    torch.testing.assert_close(taps, taps.flip(0))


def test_resampling_lengths_and_transparency_for_a_low_tone() -> None:
    t = torch.arange(400, dtype=torch.float32)
    x = torch.sin(2 * math.pi * 0.02 * t).view(1, 1, -1)  # 0.02 cycles/sample: far below both cut-offs
    up, down = UpSample1d(2, 12), DownSample1d(2, 12)
    assert up(x).shape == (1, 1, 800) and down(x).shape == (1, 1, 200)
    # the chain with an identity nonlinearity returns the band-limited input (edges aside)
    y = Activation1d(torch.nn.Identity())(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[..., 20:-20], x[..., 20:-20], rtol=0, atol=1e-3)
