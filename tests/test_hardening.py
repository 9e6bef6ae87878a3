"""Issue 16 (items 1, 2, 3, 9, 12 and the path / name / TSV classes): what a user types or shares can
neither delete data nor run code nor silently reuse stale results. Each test reproduces its defect on
generated data through the real entry point (stage scripts as subprocesses, real tensordict memmaps,
a real tmpfs for the full disk)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from mmaudio.config import load_params
from mmaudio.examples import generate_examples
from mmaudio.extraction.shards import ContentHashes, paths_fingerprint, shard_fingerprint
from mmaudio.segments import ClipRow
from mmaudio.encoders.tiny import write_tiny_weights
from mmaudio.features import FeatureSet, FeatureSetError, FeatureSetWriter, feature_set_bytes, write_feature_set
from mmaudio.paths import NoSpaceError, OutputPathError, check_stage_paths, clear_dir, remove_stale_siblings, replace_dir
from tests.hostile.generators import ShellOnUnpickle

REPO = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path) -> Path:
    """A throwaway checkout: the shipped params.yaml, a .git folder, an uncommitted file, a media
    folder and an 'official' weight file; tracking off so a stage touches nothing else."""
    root = tmp_path / "clone"
    root.mkdir()
    text = (REPO / "params.yaml").read_text().replace("  enabled: true", "  enabled: false")
    (root / "params.yaml").write_text(text)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "notes.txt").write_text("uncommitted work\n")
    (root / "ext_weights").mkdir()
    (root / "ext_weights" / "v1-16.pth").write_bytes(b"official weights stand-in")
    return root


def _stage(root: Path, script: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *overrides], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _intact(root: Path) -> None:
    assert (root / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (root / "notes.txt").read_text() == "uncommitted work\n"
    assert (root / "params.yaml").is_file()
    assert (root / "ext_weights" / "v1-16.pth").read_bytes() == b"official weights stand-in"


# -- item 1: examples.out_dir= ('' or '.') deleted the whole clone ---------------------------------------


@pytest.mark.parametrize("value", ["", "."])
def test_make_examples_refuses_the_current_folder_and_deletes_nothing(tmp_path, value):
    root = _project(tmp_path)
    res = _stage(root, "make_examples.py", f"examples.out_dir={value}")
    assert res.returncode == 2, res.stderr[-2000:]  # a config error: the short report, no traceback
    assert f"key 'examples.out_dir' is {value!r}: an output must be a folder or file of its own" in res.stderr
    assert "Traceback" not in res.stderr
    _intact(root)
    assert not (root / "video").exists()


def test_output_check_refuses_roots_parents_git_and_other_datasets(tmp_path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    params = load_params(root=root)

    def refused(key: str, value: str, match: str, **kw) -> None:
        with pytest.raises(OutputPathError, match=match):
            check_stage_paths(params, {key: value}, root=root, **kw)

    refused("examples.out_dir", "..", r"key 'examples.out_dir' = '\.\.' is the repository root, the current folder or a parent")
    refused("examples.out_dir", str(root), "is the repository root")
    refused("examples.out_dir", "/", "is the repository root")
    refused("train.out_dir", "./", r"key 'train.out_dir' is './'")
    refused("train.out_dir", " ", r"key 'train.out_dir' is ' '")
    refused("evaluate.out_dir", ".git/hooks", r"lies inside .*/\.git")
    # 'data' holds the example media folders the datasets read: the generator would replace them all
    refused("examples.out_dir", "data", r"key 'examples.out_dir' = 'data' contains input 'audio_datasets\.examples_audio\.media_dir'")
    refused("train.out_dir", "ext_weights", r"key 'train.out_dir' = 'ext_weights' is the official weights folder")
    refused("evaluate.out_dir", "ext_weights/scores", r"lies inside the official weights folder")
    refused("audio_datasets.examples_audio.clips_tsv", "data/examples/audio_captions.tsv",
            r"is input 'audio_datasets\.examples_audio\.captions_tsv'")
    with pytest.raises(OutputPathError, match="keys 'a' and 'b' overlap"):
        check_stage_paths(params, {"a": "data/clips/x.tsv", "b": "data/clips/x.tsv"}, root=root)
    # the defaults pass
    assert check_stage_paths(params, {"examples.out_dir": "data/examples"}, root=root,
                             products=__import__("mmaudio.examples", fromlist=["x"]).example_products(params))
    assert check_stage_paths(params, {"train.out_dir": "models/train"}, root=root)


def test_generate_examples_refuses_a_folder_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputPathError, match=r"example set '': refusing to replace '\.' \(the current folder\)"):
        generate_examples("")
    with pytest.raises(OutputPathError, match=r"refusing to replace .* it is the current folder or one of its parents"):
        generate_examples(tmp_path.parent)
    mine = tmp_path / "mine"
    (mine / "audio").mkdir(parents=True)
    (mine / "audio" / "voice_memo.flac").write_bytes(b"fLaC")
    (mine / "thesis.tex").write_text("\\section{}")
    with pytest.raises(OutputPathError, match=r"holds entries this stage does not write \(thesis\.tex\); refusing to replace it"):
        generate_examples(mine)
    assert (mine / "thesis.tex").is_file() and (mine / "audio" / "voice_memo.flac").is_file()
    assert (tmp_path / "keep.txt").is_file()


@pytest.mark.parametrize("script, key", [("train.py", "train.out_dir"), ("evaluate.py", "evaluate.out_dir")])
def test_torchrun_stages_check_their_outputs_before_any_work(tmp_path, script, key):
    """The stage's own entry point (not only the library check) refuses '.', with the short report."""
    root = _project(tmp_path)
    res = _stage(root, script, f"{key}=.")
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"key '{key}' is '.': an output must be a folder or file of its own" in res.stderr
    assert "Traceback" not in res.stderr
    _intact(root)


# Every library function that deletes or replaces a folder, called directly (no stage check in
# front): '' and '.', the filesystem root, a parent of the current folder and a repository root are
# refused whatever the caller's owns() claims, and nothing is deleted.
_REPLACERS = {
    "clear_dir": lambda v, src: clear_dir(v, owns=lambda e: True, what="test"),
    "replace_dir": lambda v, src: replace_dir(src, Path(v), owns=lambda e: True, what="test"),
    "FeatureSetWriter": lambda v, src: FeatureSetWriter(v, mode="16k", kind="audio", num_rows=1),
    "write_tiny_weights": lambda v, src: write_tiny_weights(v),
}


@pytest.mark.parametrize("replacer", sorted(_REPLACERS))
@pytest.mark.parametrize("value", ["", ".", "./", "/", "PARENT", "REPO"])
def test_folder_replacers_refuse_dangerous_paths_and_delete_nothing(tmp_path, monkeypatch, replacer, value):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "keep.txt").write_text("repo file")
    cwd = tmp_path / "parent" / "work"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("work file")
    (tmp_path / "parent" / "keep.txt").write_text("parent file")
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.txt").write_text("new")
    monkeypatch.chdir(cwd)
    path = {"PARENT": str(cwd.parent), "REPO": str(repo)}.get(value, value)
    with pytest.raises(OutputPathError, match="refusing to replace"):
        _REPLACERS[replacer](path, src)
    assert (repo / "keep.txt").read_text() == "repo file" and (repo / ".git").is_dir()
    assert (cwd / "keep.txt").read_text() == "work file"
    assert (tmp_path / "parent" / "keep.txt").read_text() == "parent file"
    assert (src / "new.txt").read_text() == "new"
    assert sorted(p.name for p in cwd.iterdir()) == ["keep.txt"]  # no staging folder left behind


@pytest.mark.parametrize("value", ["", ".", "..", "/"])
def test_stale_sibling_cleanup_refuses_a_path_without_a_name(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputPathError, match="names no folder of its own"):
        remove_stale_siblings(Path(value), ("tmp",))


# -- item 3: tiny_weights.out_dir=ext_weights overwrote the official files -----------------------------------


def test_tiny_weights_stage_refuses_the_official_weights_folder(tmp_path):
    root = _project(tmp_path)
    res = _stage(root, "tiny_weights.py", "tiny_weights.out_dir=ext_weights")
    assert res.returncode == 2, res.stderr[-2000:]  # a config error: the short report, no traceback
    assert "key 'tiny_weights.out_dir' = 'ext_weights' is the official weights folder" in res.stderr
    assert "Traceback" not in res.stderr
    _intact(root)
    assert sorted(p.name for p in (root / "ext_weights").iterdir()) == ["v1-16.pth"]


def test_write_tiny_weights_refuses_a_folder_with_other_files(tmp_path):
    official = tmp_path / "ext_weights"
    (official / "tiny").mkdir(parents=True)
    (official / "v1-16.pth").write_bytes(b"official")
    with pytest.raises(OutputPathError, match=r"holds entries this stage does not write \(tiny/\)"):
        write_tiny_weights(official)
    assert (official / "v1-16.pth").read_bytes() == b"official"


def test_feature_set_writer_refuses_to_replace_a_media_folder(tmp_path):
    media = tmp_path / "audio"
    media.mkdir()
    (media / "rain.flac").write_bytes(b"fLaC source audio")
    with pytest.raises(OutputPathError, match=rf"feature set {media}: .* holds entries this stage does not write \(rain\.flac\)"):
        write_feature_set(media, mode="16k", kind="audio", ids=[], texts=[], tensors={})
    assert (media / "rain.flac").read_bytes() == b"fLaC source audio"
    assert not list(tmp_path.glob(".audio.*"))


# -- item 2: a shared feature set ran code through a pickled TensorDict entry ---------------------------------


def _good_set(tmp_path: Path) -> Path:
    shapes = {"mean": (250, 20), "std": (250, 20), "text_features": (77, 1024)}
    tensors = {k: torch.zeros(2, *s) for k, s in shapes.items()}
    return write_feature_set(tmp_path / "fs", mode="16k", kind="audio", ids=["a", "b"], texts=["x", "y"], tensors=tensors)


@pytest.mark.parametrize("where", ["extra key", "contract key"])
def test_feature_set_with_a_pickled_entry_is_refused_before_loading(tmp_path, where):
    from tensordict import NonTensorData, TensorDict

    out = _good_set(tmp_path)
    marker = tmp_path / "PWNED"
    td = TensorDict.load_memmap(out / "td")  # our own, trusted, set
    payload = NonTensorData(ShellOnUnpickle(marker), batch_size=[2])
    entries = {k: td[k].clone() for k in td.keys()}
    name = "other" if where == "extra key" else "text_features"
    entries[name] = payload
    crafted = tmp_path / "crafted_td"
    TensorDict(entries, batch_size=[2]).memmap_(prefix=crafted)
    shutil.rmtree(out / "td")
    shutil.copytree(crafted, out / "td")
    pickles = list((out / "td").rglob("*.pickle"))
    assert pickles, "the crafted set must hold a pickle"
    # the payload works: tensordict's loader would run it
    if where == "extra key":
        with pytest.warns(FutureWarning):
            TensorDict.load_memmap(crafted)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(FeatureSetError, match=rf"{out}: cannot open the memmap in td/ \(unexpected entries \['{name}/'\]: .*no pickled or nested data\); refused without loading it"):
        FeatureSet.open(out)
    assert not marker.exists()


def test_feature_set_meta_naming_a_class_or_a_wrong_size_is_refused(tmp_path):
    import json

    out = _good_set(tmp_path)
    meta = json.loads((out / "td" / "meta.json").read_text())
    (out / "td" / "meta.json").write_text(json.dumps({**meta, "_class": "os:system"}))
    with pytest.raises(FeatureSetError, match=r"meta.json names class 'os:system', not a plain TensorDict"):
        FeatureSet.open(out)
    (out / "td" / "meta.json").write_text(json.dumps({**meta, "mean": {**meta["mean"], "shape": [2, 250, 40]}}))
    with pytest.raises(FeatureSetError, match=r"mean\.memmap holds 40000 bytes, its shape \[2, 250, 40\] and dtype need 80000"):
        FeatureSet.open(out)
    (out / "td" / "meta.json").write_text(json.dumps(meta))
    fs = FeatureSet.open(out)
    assert fs.ids == ["a", "b"] and tuple(fs.td["mean"].shape) == (2, 250, 20)


# -- item 9: a full disk killed extraction with SIGBUS and left its temp folder ---------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {e}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


_FILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from mmaudio.features import FeatureSetWriter
    out, rows = sys.argv[1], int(sys.argv[2])
    shapes = {"mean": (250, 20), "std": (250, 20), "text_features": (77, 1024)}
    with FeatureSetWriter(out, mode="16k", kind="audio", num_rows=rows) as w:
        for i in range(rows):
            w.append({k: torch.ones(1, *s) for k, s in shapes.items()})
        w.commit([f"r{i}" for i in range(rows)], ["t"] * rows)
""")


def test_full_disk_gives_enospc_naming_the_set_and_leaves_no_temp_folder(tmp_path):
    # 2 MB of tmpfs; 8 rows of a 16 kHz audio set take 8 x 355 KB. Before the fix the memmap writes
    # hit the full disk and the process died of SIGBUS, leaving .fs.tmp-<pid>/ behind.
    with _tmpfs(tmp_path / "small", "2m") as disk:
        # fill all but ~600 KB so that the set's free-space estimate would pass for 1 row, not for 8
        res = subprocess.run([sys.executable, "-c", _FILL_SCRIPT, str(disk / "fs"), "8"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert res.returncode == 1, (res.returncode, res.stderr[-2000:])  # not -7 (SIGBUS)
        need = feature_set_bytes("16k", "audio", 8) / 1e6
        assert f"NoSpaceError: [Errno 28] No space left on device: feature set {disk / 'fs'} needs {need:.1f} MB" in res.stderr
        assert list(disk.iterdir()) == []
        # a set that fits is written whole
        res = subprocess.run([sys.executable, "-c", _FILL_SCRIPT, str(disk / "fs"), "2"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert FeatureSet.open(disk / "fs").ids == ["r0", "r1"]


def test_fallocate_turns_a_disk_filled_after_the_estimate_into_enospc(tmp_path, monkeypatch):
    with _tmpfs(tmp_path / "small", "2m") as disk:
        monkeypatch.setattr("mmaudio.features.check_free_space", lambda *a, **k: None)  # the estimate is skipped: fallocate must catch it
        with pytest.raises(NoSpaceError, match=rf"No space left on device: feature set {disk / 'fs'} needs"):
            FeatureSetWriter(disk / "fs", mode="16k", kind="audio", num_rows=8)
        assert list(disk.iterdir()) == []


def test_free_space_is_checked_before_a_byte_is_written(tmp_path):
    rows = 10**9  # 355 TB: no disk here holds it
    with pytest.raises(NoSpaceError, match=rf"feature set {tmp_path / 'fs'} needs 3\d{{8}}\.\d MB but {tmp_path} has"):
        FeatureSetWriter(tmp_path / "fs", mode="16k", kind="audio", num_rows=rows)
    assert list(tmp_path.iterdir()) == []


def test_temp_folders_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".fs.tmp-{dead}"
    (stale / "td").mkdir(parents=True)
    live = tmp_path / f".fs.tmp-{os.getppid()}"  # a running process's folder stays
    live.mkdir()
    _good_set(tmp_path)
    assert not stale.exists() and live.exists()


# -- output writability up front ----------------------------------------------------------------------------


def test_read_only_output_is_refused_before_any_work(tmp_path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    params = load_params(root=root)
    with _tmpfs(root / "ro", "1m", "ro") as ro:
        with pytest.raises(OutputPathError, match=rf"key 'train.out_dir' = 'ro/train': {ro} is not writable \(read-only file system\)"):
            check_stage_paths(params, {"train.out_dir": "ro/train"}, root=root)
    (root / "afile").write_text("x")
    with pytest.raises(OutputPathError, match=r"key 'train.out_dir' = 'afile/train': .*/afile is a file"):
        check_stage_paths(params, {"train.out_dir": "afile/train"}, root=root)


# -- item 12: a media file swapped for another of the same size, time stamps restored -------------------------


def test_fingerprint_follows_content_not_size_and_time(tmp_path):
    media = tmp_path / "a.wav"
    media.write_bytes(b"RIFF" + bytes(1000))
    st = os.stat(media)
    rows = [ClipRow("a", "caption", str(media), 0, 100)]
    before = shard_fingerprint(rows, {"mode": "16k"})
    weights_before = paths_fingerprint([media])
    with open(media, "r+b") as f:  # the same inode, the same size, other content (cp -p onto it)
        f.write(b"RIFF" + bytes(999) + b"\x01")
    os.utime(media, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(media).st_size == st.st_size and os.stat(media).st_mtime_ns == st.st_mtime_ns
    assert shard_fingerprint(rows, {"mode": "16k"}) != before
    assert paths_fingerprint([media]) != weights_before
    hashes = ContentHashes()
    assert hashes(media) == hashes(str(media)) and hashes(tmp_path / "gone.wav") == "missing"
    os.mkfifo(tmp_path / "pipe.wav")  # never read (it would block)
    assert hashes(tmp_path / "pipe.wav") == "not a regular file"


@pytest.mark.parametrize("name,match", [
    ("../up", r"dataset name '\.\./up' is not a plain file name"),
    ("a\u202eb", r"dataset name 'a\\u202eb' contains control or invisible characters \(U\+202E\)"),
    ("x" * 300, r"dataset name of 300 bytes is longer than 240 bytes"),
    (".hidden", r"dataset name '\.hidden' must not start with '\.'"),
])
def test_dataset_names_follow_the_file_name_rules(name, match):
    from mmaudio.config import ConfigError, validate

    ds = {"media_dir": "m", "captions_tsv": "c.tsv", "clips_tsv": "k.tsv", "rejects_tsv": "r.tsv"}
    assert validate({"audio_datasets": {"fine": ds}}, source="p.yaml").audio_datasets["fine"].media_dir == "m"
    with pytest.raises(ConfigError, match=rf"^p\.yaml: {match}"):
        validate({"audio_datasets": {name: ds}}, source="p.yaml")
