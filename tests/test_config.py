"""params.yaml through Hydra into typed configs; errors name the key."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import subprocess
import sys

from mmaudio.config import ConfigError, Params, error_report, load_params, to_flat_dict

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


def _report(overrides, root) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_params(overrides, root=root)
    return error_report(info.value).splitlines()


def test_error_report_is_three_lines_naming_key_value_and_what_is_allowed(params_dir):
    where = f"config error in {params_dir / 'params.yaml'}: "
    assert _report(["train.learning_rate=abc"], params_dir) == [
        where + "key 'train.learning_rate'", "  value:   'abc'", "  allowed: a number"]
    assert _report(["train.schedule=linear"], params_dir) == [
        where + "key 'train.schedule'", "  value:   'linear'", "  allowed: must be one of ('step', 'constant', 'cosine')"]
    # a typo'd key keeps its reason: the keys that exist there
    assert _report(["partition.max_segmentz=3"], params_dir) == [
        where + "key 'partition.max_segmentz'", "  value:   '3'",
        "  allowed: the keys of its section: min_duration_sec, segment_sec, max_segments"]
    assert _report(["video_datasets.examples_train.normalize_audio=perhaps"], params_dir)[1:] == [
        "  value:   'perhaps'", "  allowed: true or false"]
    assert _report(["train.milestones=5"], params_dir)[1:] == ["  value:   '5'", "  allowed: a list of integers"]


@pytest.mark.parametrize("key", ["train.num_iterations", "train.ema.snapshot_every", "profile",
                                 "video_datasets.examples_val.normalize_audio"])
def test_a_key_missing_from_params_yaml_is_an_error_not_a_default(params_dir, key):
    """A deleted key would silently become the dataclass default (upstream's 300000 steps, ...)."""
    with pytest.raises(ConfigError, match=rf"key '{key}' is missing") as info:
        load_params([f"~{key}"], root=params_dir)
    assert error_report(info.value).splitlines()[1] == "  value:   (missing)"


def test_stage_script_prints_the_short_error_and_exits_2(params_dir):
    """A stage script (and `python -m mmaudio.check_params`, which the torchrun stages run first):
    no traceback, the three lines, exit status 2."""
    for cmd in ([sys.executable, str(REPO / "stages/make_examples.py"), "train.learning_rate=abc"],
                [sys.executable, "-m", "mmaudio.check_params", "train.learning_rate=abc"]):
        out = subprocess.run(cmd, cwd=params_dir, capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        lines = [line for line in out.stderr.splitlines() if "Warning" not in line and line.strip()]
        assert lines == [f"config error in {params_dir / 'params.yaml'}: key 'train.learning_rate'",
                         "  value:   'abc'", "  allowed: a number"], out.stderr
    ok = subprocess.run([sys.executable, "-m", "mmaudio.check_params"], cwd=params_dir, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_stage_help_keeps_its_own_examples():
    out = subprocess.run([sys.executable, str(REPO / "stages/train.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "\n    torchrun --standalone --nproc_per_node=1 stages/train.py [train.learning_rate=2e-4 ...]\n" in out
    assert "partition.max_segments" not in out


@pytest.mark.parametrize("override, message", [
    ("train.gamma=-0.5", r"key 'train\.gamma' must be in \(0, 1\], got -0\.5"),
    ("train.gamma=0", r"key 'train\.gamma' must be in \(0, 1\], got 0\.0"),
    ("train.weight_decay=-0.001", r"key 'train\.weight_decay' must be in \[0, 1\], got -0\.001"),
    ("train.learning_rate=-1e-3", r"key 'train\.learning_rate' must be in \(0, inf\), got -0\.001"),
    ("train.seed=99999999999999999999", r"key 'train\.seed' must be in \[0, 2\*\*32 - 1\], got 99999999999999999999"),
    ("train.seed=-1", r"key 'train\.seed' must be in \[0, 2\*\*32 - 1\], got -1"),
    ("evaluate.seed=4294967296", r"key 'evaluate\.seed' must be in \[0, 2\*\*32 - 1\], got 4294967296"),
    ("examples.seed=-3", r"key 'examples\.seed' must be in \[0, 2\*\*32 - 1\], got -3"),
    ("tiny_weights.seed=18446744073709551616", r"key 'tiny_weights\.seed' must be in \[0, 2\*\*32 - 1\]"),
    ("evaluate.cfg_strength=-1", r"key 'evaluate\.cfg_strength' must be in \[0, inf\), got -1\.0"),
    ("train.log_interval=0", r"key 'train\.log_interval' must be >= 1, got 0"),
    ("train.ema.snapshot_every=-5", r"key 'train\.ema\.snapshot_every' must be >= 1, got -5"),
])
def test_out_of_range_values_name_key_value_and_range(params_dir, override, message):
    """Values that type-check but would train with a negative lr, overflow a derived seed or loop forever."""
    with pytest.raises(ConfigError, match=message):
        load_params([override], root=params_dir)


def test_range_edges_are_accepted(params_dir):
    p = load_params(["train.gamma=1", "train.weight_decay=0", "train.seed=4294967295", "evaluate.cfg_strength=0"],
                    root=params_dir)
    assert (p.train.gamma, p.train.weight_decay, p.train.seed, p.evaluate.cfg_strength) == (1.0, 0.0, 2**32 - 1, 0.0)


def test_alias_bomb_is_refused_before_expansion(params_dir):
    """Nine levels of ten aliases each expand to 10**9 values from a file of a few hundred bytes."""
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = params_dir / "params.yaml"
    path.write_text(path.read_text() + "\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: its YAML aliases expand to \d+ values \(at most 100000 are read\); "
                                          r"refused before expanding them$"):
        load_params(root=params_dir)


def test_a_few_aliases_are_fine(params_dir):
    path = params_dir / "params.yaml"
    text = path.read_text().replace("  seed: 14159265", "  seed: &s 14159265")
    text = re.sub(r"\n  seed: 0  # row i[^\n]*", "\n  seed: *s", text)
    path.write_text(text)
    assert load_params(root=params_dir).evaluate.seed == 14159265


@pytest.mark.parametrize("uri", ["http://alice:s3cret@mlflow.example:5000", "https://mlflow.example/?token=s3cret",
                                 "postgresql://mlflow:s3cret@db:5432/mlflow"])
def test_credentials_in_the_tracking_uri_are_refused_without_echoing_them(params_dir, uri):
    with pytest.raises(ConfigError, match=r"key 'tracking\.uri' \(.*\*\*\*.*\) carries credentials") as e:
        load_params([f"tracking.uri='{uri}'"], root=params_dir)
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("levels", [65, 100_000])
def test_deeply_nested_yaml_is_refused_naming_the_file(params_dir, levels):
    path = params_dir / "params.yaml"
    path.write_text(path.read_text() + "\nx: " + "[" * levels + "]" * levels + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: its YAML nests deeper than 64 levels; refused$"):
        load_params(root=params_dir)
