"""The evaluation weight resolver: precedence, offline behaviour and what its errors say."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import pytest

from mmaudio.weights import manifest
from mmaudio.evaluation.resolver import EVALUATION_WEIGHTS, MissingWeightsError, WeightSource, resolve_weight
from mmaudio.weights import WeightFileError

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hf_cache(cache_dir: Path, repo_id: str, filename: str, content: bytes = b"hub") -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot that holds the file."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    path = repo_dir / "snapshots" / REVISION / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def test_precedence_explicit_then_ext_weights_then_hf_cache(tmp_path, no_network):
    name, repo = "CLAP_weights_2023.pth", "microsoft/msclap"
    cache = tmp_path / "hf"
    cached = fake_hf_cache(cache, repo, name)
    ext = tmp_path / "ext_weights"
    ext.mkdir()

    assert resolve_weight(name, ext_dir=ext, hf_cache_dir=cache) == cached  # repo from the registry
    (ext / name).write_bytes(b"local")
    assert resolve_weight(name, ext_dir=ext, hf_cache_dir=cache) == ext / name
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"mine")
    assert resolve_weight(name, explicit=explicit, ext_dir=ext, hf_cache_dir=cache) == explicit


def test_hf_cache_with_a_different_file_name_in_the_repo(tmp_path, no_network):
    cache = tmp_path / "hf"
    cached = fake_hf_cache(cache, "org/model", "weights/model.bin")
    found = resolve_weight(
        "model.bin", ext_dir=tmp_path, hf_repo="org/model", hf_filename="weights/model.bin", hf_cache_dir=cache
    )
    assert found == cached


def test_a_missing_explicit_path_is_an_error_not_a_fallback(tmp_path, no_network):
    (tmp_path / "imagebind_huge.pth").write_bytes(b"x")
    with pytest.raises(MissingWeightsError) as err:
        resolve_weight("imagebind_huge.pth", explicit=tmp_path / "nope.pth", ext_dir=tmp_path)
    text = str(err.value)
    assert "imagebind_huge.pth" in text and str(tmp_path / "nope.pth") in text
    assert "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth" in text


def test_missing_registry_file_names_its_source_and_unknown_size(tmp_path, no_network):
    with pytest.raises(MissingWeightsError) as err:
        resolve_weight("Cnn14_16k_mAP=0.438.pth", ext_dir=tmp_path / "ext_weights", hf_cache_dir=tmp_path / "hf")
    text = str(err.value)
    assert "'Cnn14_16k_mAP=0.438.pth'" in text
    assert "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth" in text
    assert "size unknown" in text
    assert str(tmp_path / "ext_weights" / "Cnn14_16k_mAP=0.438.pth") in text


def test_missing_unregistered_file_names_the_given_repo_and_size(tmp_path, no_network):
    with pytest.raises(MissingWeightsError) as err:
        resolve_weight("custom.pt", ext_dir=tmp_path, hf_repo="me/custom", size=123, hf_cache_dir=tmp_path / "hf")
    text = str(err.value)
    assert "'custom.pt'" in text and "Hugging Face repo me/custom" in text and "123 bytes" in text
    assert isinstance(err.value, FileNotFoundError)


def test_every_registered_file_fails_offline_with_its_source(tmp_path, no_network):
    for name, source in EVALUATION_WEIGHTS.items():
        assert source.filename == name and (source.url or source.hf_repo)
        with pytest.raises(MissingWeightsError) as err:
            resolve_weight(name, ext_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
        assert name in str(err.value)
        assert (source.url or f"Hugging Face repo {source.hf_repo}") in str(err.value)


def test_a_file_of_the_wrong_size_is_refused(tmp_path, no_network):
    (tmp_path / "w.pth").write_bytes(b"12345")
    assert resolve_weight("w.pth", ext_dir=tmp_path, size=5) == tmp_path / "w.pth"
    with pytest.raises(WeightFileError, match="5 bytes, expected 6"):
        resolve_weight("w.pth", ext_dir=tmp_path, size=6)


def test_names_must_be_plain_file_names(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        resolve_weight("../escape.pth", ext_dir=tmp_path)


def _serve(monkeypatch, payload: bytes) -> list[str]:
    """Stand-in for urllib's urlopen that serves ``payload`` (nothing leaves the machine)."""
    requested: list[str] = []

    def fake_urlopen(url: str):
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def test_download_only_when_allowed_and_verified_before_it_lands(tmp_path, monkeypatch):
    payload = b"weights"
    source = WeightSource("w.pth", "test", url="https://example.invalid/w.pth", md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(manifest.WEIGHT_FILES, "w.pth", source)
    requested = _serve(monkeypatch, payload)

    with pytest.raises(MissingWeightsError):
        resolve_weight("w.pth", ext_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    assert requested == []
    path = resolve_weight("w.pth", ext_dir=tmp_path, allow_download=True, hf_cache_dir=tmp_path / "hf")
    assert path == tmp_path / "w.pth" and path.read_bytes() == payload
    assert requested == ["https://example.invalid/w.pth"]


def test_a_download_with_the_wrong_checksum_leaves_nothing_behind(tmp_path, monkeypatch):
    source = WeightSource("w.pth", "test", url="https://example.invalid/w.pth", md5="0" * 32)
    monkeypatch.setitem(manifest.WEIGHT_FILES, "w.pth", source)
    _serve(monkeypatch, b"tampered")
    with pytest.raises(WeightFileError, match="md5"):
        resolve_weight("w.pth", ext_dir=tmp_path, allow_download=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_hint_names_the_pinned_hub_cli(tmp_path):
    """huggingface_hub 1.x+ installs `hf`, not `huggingface-cli`; the pipeline itself never downloads."""
    with pytest.raises(MissingWeightsError) as info:
        resolve_weight("w.pth", ext_dir=tmp_path / "ext", hf_repo="org/repo", hf_cache_dir=tmp_path / "hf")
    text = str(info.value)
    assert f"`hf download org/repo w.pth --local-dir {tmp_path / 'ext'}`" in text
    assert "huggingface-cli" not in text and "allow_download=True" in text
