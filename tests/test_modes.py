"""The audio-mode registry: lengths derived from the primary numbers, and every user of a per-mode
fact (features, mel, media checks, network, config) reading it from there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmaudio.choices import Device, ExtractorPreset, Profile, Schedule, Solver, StorageDtype, choice_values
from mmaudio.config import EXTRACT_CHOICES, PROFILES, TRAIN_CHOICES, ConfigError, load_params
from mmaudio.modes import MODES, AudioMode, mode_spec, model_sample_rates

REPO = Path(__file__).resolve().parents[1]


def test_sequence_lengths_per_mode() -> None:
    s16, s44 = mode_spec("16k"), mode_spec(AudioMode.K44)
    assert (s16.latent_seq_len, s16.clip_seq_len, s16.sync_seq_len, s16.text_seq_len, s16.num_audio_samples) == (
        250, 64, 192, 77, 128000)
    assert (s44.latent_seq_len, s44.clip_seq_len, s44.sync_seq_len, s44.text_seq_len, s44.num_audio_samples) == (
        345, 64, 192, 77, 353280)
    assert s16.num_sync_segments == 24 and s16.sync_features_per_segment == 8
    assert (s16.num_mel_frames, s44.num_mel_frames) == (500, 690)
    assert (s16.latent_shape, s44.latent_shape) == ((250, 20), (345, 40))
    assert (s16.text_shape, s16.clip_shape, s16.sync_shape) == ((77, 1024), (64, 1024), (192, 768))
    assert set(MODES) == {"16k", "44k"} and choice_values(AudioMode) == ("16k", "44k")
    with pytest.raises(KeyError, match="22k"):
        mode_spec("22k")


def test_every_per_mode_fact_comes_from_the_registry() -> None:
    from mmaudio.encoders.mel import MEL_PRESETS
    from mmaudio.features import feature_shapes
    from mmaudio.model.network import NETWORK_PRESETS

    assert model_sample_rates() == (16000, 44100)
    for mode, spec in MODES.items():
        mel = MEL_PRESETS[mode]
        assert (mel.sample_rate, mel.hop_length) == (spec.sample_rate, spec.spectrogram_hop)
        assert mel.num_frames(spec.num_audio_samples) == spec.num_mel_frames
        assert feature_shapes(mode, "video") == {"mean": spec.latent_shape, "std": spec.latent_shape,
                                                 "text_features": spec.text_shape, "clip_features": spec.clip_shape,
                                                 "sync_features": spec.sync_shape}
    for preset in NETWORK_PRESETS.values():
        assert preset.sequence is MODES[preset.mode] and preset.latent_dim == MODES[preset.mode].latent_dim
    with pytest.raises(ValueError, match=r"unknown mode '22k'; expected one of \('16k', '44k'\)"):
        feature_shapes("22k", "audio")


def test_media_checks_resample_cost_to_every_mode_rate(tmp_path) -> None:
    from mmaudio.media import MediaLimitError, check_audio_rate

    check_audio_rate(tmp_path / "a.wav", 48000)  # both mode rates are cheap from 48 kHz
    check_audio_rate(tmp_path / "odd.wav", 39595, targets=(16000,))  # 26M kernel entries to 16 kHz: allowed
    with pytest.raises(MediaLimitError, match="to 44100 Hz"):
        check_audio_rate(tmp_path / "odd.wav", 39595)  # 71M entries to 44.1 kHz: the default checks that mode too


@pytest.fixture
def params_dir(tmp_path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_config_rejects_a_network_of_another_mode(params_dir) -> None:
    with pytest.raises(ConfigError, match=r"key 'train.network' \('tiny_16k', mode 16k\) does not match "
                                          r"key 'extract.mode' \('44k'\)"):
        load_params(["extract.mode=44k"], root=params_dir)
    p = load_params(["extract.mode=44k", "train.network=tiny_44k"], root=params_dir)
    assert (p.extract.mode, p.train.network) == ("44k", "tiny_44k")
    with pytest.raises(ConfigError, match=r"key 'train.network' \('tiny_22k'\) is not a known network preset"):
        load_params(["train.network=tiny_22k"], root=params_dir)


def test_config_choices_are_the_enums(params_dir) -> None:
    assert EXTRACT_CHOICES == {"mode": ("16k", "44k"), "storage_dtype": ("float32", "bfloat16"),
                               "device": ("auto", "cpu", "cuda")}
    assert TRAIN_CHOICES == {"schedule": ("step", "constant", "cosine"), "device": ("auto", "cpu", "cuda")}
    assert PROFILES == choice_values(Profile) == ("tiny", "official")
    assert choice_values(Solver) == ("euler", "adaptive") and choice_values(ExtractorPreset) == ("official", "tiny")
    assert choice_values(StorageDtype) == ("float32", "bfloat16") and choice_values(Device) == ("auto", "cpu", "cuda")
    assert choice_values(Schedule) == ("step", "constant", "cosine")
    for override, key in (("evaluate.solver=rk4", "evaluate.solver"), ("train.schedule=linear", "train.schedule"),
                          ("extract.storage_dtype=float16", "extract.storage_dtype"), ("train.device=tpu", "train.device")):
        with pytest.raises(ConfigError, match=rf"key '{key}' must be one of"):
            load_params([override], root=params_dir)
