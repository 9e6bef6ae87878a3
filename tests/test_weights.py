"""The weights package: one manifest of every known file, one resolver, one missing-weights error."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from mmaudio.encoders import bigvgan, clip, profiles
from mmaudio.evaluation import resolver
from mmaudio.weights import WEIGHT_FILES, MissingWeightsError, hf_cache_file, resolve_file
from mmaudio.weights.manifest import MMAUDIO_RELEASE_URL

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_the_manifest_lists_every_file_a_profile_or_extractor_reads() -> None:
    official = profiles.get_profile("official")
    for mode in profiles.MODES:
        for component in profiles.COMPONENTS:
            for relpath in profiles.component_files(mode, component):
                source = WEIGHT_FILES[relpath]
                assert source.group == "encoders" and (source.url or source.hf_repo), relpath
                hint = official.source_hint(relpath)
                assert (source.url or source.hf_repo) in hint, (relpath, hint)
    assert WEIGHT_FILES["v1-16.pth"].url == f"{MMAUDIO_RELEASE_URL}/v1-16.pth"
    assert WEIGHT_FILES["v1-16.pth"].md5 == "69f56803f59a549a1a507c93859fd4d7"  # MMAudio download_utils.py
    assert clip.OFFICIAL_HUB_ID == WEIGHT_FILES["DFN5B-CLIP-ViT-H-14-384"].hf_repo == "apple/DFN5B-CLIP-ViT-H-14-384"
    assert bigvgan.HF_REPO_44K == WEIGHT_FILES["bigvgan_v2_44khz_128band_512x"].hf_repo
    assert {n for n, s in WEIGHT_FILES.items() if s.group == "network"} == {
        "mmaudio_small_16k.pth", "mmaudio_small_44k.pth", "mmaudio_medium_44k.pth", "mmaudio_large_44k.pth",
        "mmaudio_large_44k_v2.pth"}
    assert set(resolver.EVALUATION_WEIGHTS) == {n for n, s in WEIGHT_FILES.items() if s.group == "evaluation"}
    assert "Cnn14_16k_mAP=0.438.pth" in resolver.EVALUATION_WEIGHTS and "v1-16.pth" not in resolver.EVALUATION_WEIGHTS


def test_one_missing_weights_error_for_profiles_and_files(tmp_path: Path) -> None:
    assert profiles.MissingWeightsError is resolver.MissingWeightsError is MissingWeightsError
    with pytest.raises(MissingWeightsError) as a:
        profiles.check_weights("official", "16k", ["audio"], root=tmp_path)
    with pytest.raises(MissingWeightsError) as b:
        resolve_file("v1-44.pth", ext_dir=tmp_path / "ext")
    assert [m.relpath for m in a.value.missing] == ["v1-16.pth"]
    assert [m.relpath for m in b.value.missing] == ["v1-44.pth"]
    text = str(b.value)  # the same manifest entry tells both where to get the file
    assert f"{MMAUDIO_RELEASE_URL}/v1-44.pth" in text and str(tmp_path / "ext" / "v1-44.pth") in text
    assert "44.1 kHz audio VAE" in text  # what needs it


def test_the_resolver_order_and_the_cache_lookup(tmp_path: Path, empty_hf_cache: Path) -> None:
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "v1-16.pth").write_bytes(b"local")
    (tmp_path / "mine.pth").write_bytes(b"mine")
    assert resolve_file("v1-16.pth", explicit=tmp_path / "mine.pth", ext_dir=tmp_path / "ext") == tmp_path / "mine.pth"
    assert resolve_file("v1-16.pth", ext_dir=tmp_path / "ext") == tmp_path / "ext" / "v1-16.pth"
    assert hf_cache_file("apple/DFN5B-CLIP-ViT-H-14-384", clip.WEIGHT_FILE_NAMES) is None
    snap = empty_hf_cache / "models--org--m" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "b.bin").write_bytes(b"x")
    (empty_hf_cache / "models--org--m" / "refs").mkdir()
    (empty_hf_cache / "models--org--m" / "refs" / "main").write_text("0" * 40)
    assert hf_cache_file("org/m", ["a.bin", "b.bin"]) == snap / "b.bin"  # the first name the cache holds


def test_profiles_carry_fields_not_names() -> None:
    tiny, official = profiles.get_profile("tiny"), profiles.get_profile("official")
    assert tiny.written_by == "run `dvc repro tiny_weights`" and official.written_by is None
    assert tiny.empty_string_optional and not official.empty_string_optional
    assert tiny.source_hint("v1-16.pth") == tiny.written_by and tiny.hub_repo(profiles.CLIP_DIR) is None
    assert official.hub_repo(profiles.CLIP_DIR) == "apple/DFN5B-CLIP-ViT-H-14-384"
    # no code compares a profile (or a mode) by its name
    for path in (REPO / "mmaudio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ("tiny", "official", "16k", "44k")
                                                      for c in node.comparators):
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno} compares with a profile or mode name")


def test_the_trainer_imports_neither_encoders_nor_evaluation() -> None:
    for path in (REPO / "mmaudio" / "training").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.startswith(("mmaudio.encoders", "mmaudio.evaluation"))]
            assert not bad, f"{path.relative_to(REPO)}:{node.lineno} imports {bad}"
