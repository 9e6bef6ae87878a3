"""params.yaml through Hydra into typed configs; errors name the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmaudio.config import ConfigError, Params, load_params, to_flat_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_dir(tmp_path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_shipped_params_load_into_typed_config():
    p = load_params(root=REPO)
    assert isinstance(p, Params)
    assert p.profile == "tiny"
    assert p.partition.segment_sec == 8.1 and p.partition.max_segments == 5
    assert p.audio_datasets["examples_audio"].clips_tsv == "data/clips/examples_audio.tsv"
    assert p.video_datasets["examples_val"].normalize_audio is False


def test_overrides_change_exactly_the_key(params_dir):
    p = load_params(["partition.max_segments=3", "video_datasets.examples_train.split=val"], root=params_dir)
    assert p.partition.max_segments == 3
    assert p.video_datasets["examples_train"].split == "val"
    assert p.partition.segment_sec == 8.1


def test_unknown_override_names_the_key(params_dir):
    with pytest.raises(ConfigError, match="partition.max_segmentz"):
        load_params(["partition.max_segmentz=3"], root=params_dir)


def test_unknown_key_in_file_names_the_key(params_dir):
    text = (params_dir / "params.yaml").read_text().replace("  max_segments: 5", "  max_segments: 5\n  max_segs: 4")
    (params_dir / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"key 'partition.max_segs'"):
        load_params(root=params_dir)


def test_wrong_type_names_the_key(params_dir):
    with pytest.raises(ConfigError, match=r"key 'partition.max_segments'.*"):
        load_params(["partition.max_segments=many"], root=params_dir)
    with pytest.raises(ConfigError, match=r"key 'video_datasets.examples_train.normalize_audio'"):
        load_params(["video_datasets.examples_train.normalize_audio=perhaps"], root=params_dir)


def test_bad_values_name_the_key(params_dir):
    with pytest.raises(ConfigError, match=r"key 'partition.max_segments' must be >= 1, got 0"):
        load_params(["partition.max_segments=0"], root=params_dir)
    with pytest.raises(ConfigError, match=r"key 'profile' must be one of"):
        load_params(["profile=huge"], root=params_dir)


def test_unknown_dataset_field(params_dir):
    with pytest.raises(ConfigError, match=r"examples_audio.captions"):
        load_params(["+audio_datasets.examples_audio.captions=x.tsv"], root=params_dir)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params.yaml does not exist"):
        load_params(root=tmp_path)


def test_flatten_for_mlflow():
    flat = to_flat_dict(load_params(root=REPO))
    assert flat["partition.max_segments"] == 5
    assert flat["audio_datasets.examples_audio.media_dir"] == "data/examples/audio"
    assert flat["tracking.uri"] is None
