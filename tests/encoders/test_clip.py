"""CLIP encoder: official key layout and size, feature contract with the tiny preset, file formats."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from mmaudio.encoders.clip import (
    CLIP_PRESETS,
    OFFICIAL_HUB_ID,
    CLIPEncoder,
    build_clip,
    compute_empty_string_feature,
    get_clip_preset,
    load_clip,
    load_empty_string,
    resolve_clip_weights,
    save_clip,
    save_empty_string,
)
from mmaudio.weights import WeightFileError

MANIFEST = Path(__file__).parents[1] / "fixtures" / "keys" / "clip_vit_h_14_384.json"
OFFICIAL_PARAMS = 986_714_881
SOT, EOT = 49406, 49407  # open_clip BPE start/end-of-text ids
# The Normalize constants upstream's FeaturesUtils applies (restated here so a wrong module constant fails).
UPSTREAM_MEAN = (0.48145466, 0.4578275, 0.40821073)
UPSTREAM_STD = (0.26862954, 0.26130258, 0.27577711)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach the network: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("CLIP code tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny() -> CLIPEncoder:
    torch.set_num_threads(1)
    return CLIPEncoder("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_file(tiny: CLIPEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_clip(tiny.model, tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin")


def _frames(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, t, 3, 384, 384, generator=torch.Generator().manual_seed(seed))


# ---- official architecture (meta device: no memory, no weights) ----

def test_official_state_dict_matches_upstream_manifest() -> None:
    model = build_clip("official", device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = json.loads(MANIFEST.read_text())
    assert len(expected) == 686
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}


def test_official_parameter_count_and_architecture() -> None:
    model = build_clip("official", device="meta")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    # QuickGELU carries no weights, so the manifest cannot see it; DFN5B needs it in both towers.
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.transformer.resblocks[23].mlp.gelu, QuickGELU)
    assert model.visual.grid_size == (27, 27)  # 378 px / 14, also what a 384 px frame yields
    assert model.context_length == 77 and model.vocab_size == 49408


def test_official_config_equals_open_clip_builtin() -> None:
    """The hub config of DFN5B-CLIP-ViT-H-14-384 is open_clip's 'ViT-H-14-378-quickgelu'."""
    builtin = open_clip.get_model_config("ViT-H-14-378-quickgelu")
    ours = get_clip_preset("official").open_clip_cfg()
    assert ours["embed_dim"] == builtin["embed_dim"] == 1024
    assert ours["quick_gelu"] is builtin["quick_gelu"] is True
    assert {k: ours["vision_cfg"][k] for k in builtin["vision_cfg"]} == builtin["vision_cfg"]
    assert {k: ours["text_cfg"][k] for k in builtin["text_cfg"]} == builtin["text_cfg"]


@pytest.mark.parametrize("name", sorted(CLIP_PRESETS))
def test_every_preset_keeps_the_feature_contract(name: str) -> None:
    p = CLIP_PRESETS[name]
    assert (p.embed_dim, p.text_width, p.context_length, p.vocab_size, p.frame_size) == (1024, 1024, 77, 49408, 384)
    assert p.frame_size // p.vision_patch_size == p.vision_image_size // p.vision_patch_size


def test_unknown_preset_is_named() -> None:
    with pytest.raises(KeyError, match="'huge'"):
        get_clip_preset("huge")


# ---- tokenizer ----

def test_tokenizer_is_offline_bpe(tiny: CLIPEncoder) -> None:
    tokenizer = open_clip.get_tokenizer("ViT-H-14-378-quickgelu")  # the network is refused here
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    tokens = tiny.tokenize(["", "a dog barks"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :3].tolist() == [SOT, EOT, 0] and int(tokens[0].count_nonzero()) == 2
    assert tokens[1, 0] == SOT and EOT in tokens[1].tolist()
    long_caption = tiny.tokenize(["word " * 200])
    assert long_caption[0, -1] == EOT  # truncated to 77 with the end token kept
    with pytest.raises(TypeError):
        tiny.tokenize("not a list")


# ---- features with the tiny preset ----

def test_image_features_shape_norm_and_normalisation(tiny: CLIPEncoder) -> None:
    frames = _frames(2, 3)
    feats = tiny.encode_image(frames)
    assert feats.shape == (2, 3, 1024) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 3), atol=1e-5, rtol=0)
    assert (feats[0, 0] - feats[0, 1]).abs().max() > 1e-3  # different frames, different features
    # Same as open_clip's own encode_image on frames normalised with upstream's constants.
    mean = torch.tensor(UPSTREAM_MEAN).view(3, 1, 1)
    std = torch.tensor(UPSTREAM_STD).view(3, 1, 1)
    with torch.no_grad():
        ref = tiny.model.encode_image(((frames - mean) / std).flatten(0, 1), normalize=True).view(2, 3, -1)
    torch.testing.assert_close(feats, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.encode_image(frames, batch_size=2), feats, atol=1e-6, rtol=0)


def test_image_input_is_checked(tiny: CLIPEncoder) -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 224, 224\)"):
        tiny.encode_image(torch.rand(1, 2, 3, 224, 224))
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode_image(torch.zeros(1, 1, 3, 384, 384, dtype=torch.int32))


def test_uint8_frames_are_scaled_like_torchvision(tiny: CLIPEncoder) -> None:
    frames_u8 = (_frames(1, 2) * 255).round().to(torch.uint8)
    scaled = frames_u8.float().mul_(1.0 / 255)  # torchvision ToDtype(float32, scale=True)
    torch.testing.assert_close(tiny.encode_image(frames_u8), tiny.encode_image(scaled), atol=0, rtol=0)


def test_text_features_are_per_token_unprojected_and_causal(tiny: CLIPEncoder) -> None:
    captions = ["a dog barks", "rain on a tin roof", ""]
    tokens = tiny.tokenize(captions)
    feats = tiny.encode_text(captions)
    assert feats.shape == (3, 77, 1024) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3, 77), atol=1e-5, rtol=0)
    # Causal mask: position 0 sees only the start token, so it is the same for every caption.
    torch.testing.assert_close(feats[:, 0], feats[:1, 0].expand(3, -1), atol=1e-6, rtol=0)
    assert (feats[0, 1] - feats[1, 1]).abs().max() > 1e-3
    # Pre-projection: projecting the end-token feature gives open_clip's pooled text embedding.
    eot = tokens.argmax(dim=-1)
    with torch.no_grad():
        pooled = tiny.model.encode_text(tokens, normalize=True)  # (3, 1024)
    projected = F.normalize(feats[torch.arange(3), eot] @ tiny.model.text_projection, dim=-1)
    torch.testing.assert_close(projected, pooled, atol=1e-5, rtol=0)


def test_empty_string_file_round_trip(tiny: CLIPEncoder, tmp_path: Path) -> None:
    feature = compute_empty_string_feature(tiny)
    assert feature.shape == (1, 77, 1024)
    path = save_empty_string(feature, tmp_path / "empty_string.pth")
    raw = torch.load(path, weights_only=True)  # upstream's format: a bare (1, 77, D) tensor
    assert isinstance(raw, torch.Tensor) and raw.shape == (1, 77, 1024)
    loaded = load_empty_string(path)  # the tensor at index 0 of the file
    assert loaded.shape == (77, 1024)
    assert torch.equal(loaded, tiny.encode_text([""])[0])
    with pytest.raises(ValueError, match=r"\(77, 1024\)"):
        save_empty_string(feature[0], tmp_path / "bad.pth")


# ---- weight files ----

@pytest.mark.parametrize("form", ["file", "directory", "safetensors"])
def test_tiny_save_load_round_trip_is_exact(tiny: CLIPEncoder, tiny_file: Path, tmp_path: Path, form: str) -> None:
    if form == "file":
        source = tiny_file
    elif form == "directory":
        source = tiny_file.parent
    else:
        source = save_clip(tiny.model, tmp_path / "open_clip_model.safetensors")
    loaded = CLIPEncoder("tiny", source)
    ours, theirs = tiny.model.state_dict(), loaded.model.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    frames, captions = _frames(1, 2, seed=1), ["a cat meows", ""]
    assert torch.equal(loaded.encode_image(frames), tiny.encode_image(frames))
    assert torch.equal(loaded.encode_text(captions), tiny.encode_text(captions))


def test_saved_file_is_a_flat_open_clip_state_dict(tiny: CLIPEncoder, tiny_file: Path) -> None:
    sd = torch.load(tiny_file, weights_only=True, mmap=True)
    assert set(sd) == set(tiny.model.state_dict())
    assert sd["token_embedding.weight"].shape == (49408, 1024) and "attn_mask" not in sd
    # open_clip's own checkpoint loader accepts it strictly, as it does the official file.
    fresh = build_clip("tiny", seed=1)
    open_clip.load_checkpoint(fresh, str(tiny_file), strict=True)
    assert torch.equal(fresh.visual.proj, tiny.model.visual.proj)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build_clip("tiny", seed=3), build_clip("tiny", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.visual.proj, build_clip("tiny", seed=4).visual.proj)


def test_bad_weight_files_name_the_file(tiny: CLIPEncoder, tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        load_clip(missing, "tiny")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(WeightFileError, match="empty.bin"):
        load_clip(empty, "tiny")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(WeightFileError, match="garbage.bin"):
        load_clip(garbage, "tiny")
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightFileError, match="broken.safetensors"):
        load_clip(bad_st, "tiny")
    partial = {k: v for k, v in tiny.model.state_dict().items() if k != "ln_final.weight"}
    torch.save(partial, tmp_path / "partial.bin")
    with pytest.raises(WeightFileError, match=r"partial\.bin.*ln_final\.weight"):
        load_clip(tmp_path / "partial.bin", "tiny")
    misshapen = dict(tiny.model.state_dict(), **{"visual.proj": torch.zeros(64, 512)})
    torch.save(misshapen, tmp_path / "misshapen.bin")
    with pytest.raises(WeightFileError, match=r"misshapen\.bin.*visual\.proj: file \(64, 512\)"):
        load_clip(tmp_path / "misshapen.bin", "tiny")
    with pytest.raises(FileNotFoundError, match="no CLIP checkpoint"):
        load_clip(tmp_path, "tiny")


def test_bad_empty_string_files_name_the_file(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_shape.pth"
    torch.save(torch.zeros(77, 1024), wrong)  # missing the batch axis: [0] would be a vector
    with pytest.raises(WeightFileError, match="wrong_shape.pth"):
        load_empty_string(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage")
    with pytest.raises(WeightFileError, match="garbage.pth"):
        load_empty_string(garbage)


def test_official_weights_come_from_the_local_hf_cache_only(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    with pytest.raises(FileNotFoundError, match=OFFICIAL_HUB_ID):
        resolve_clip_weights(None, "official", hf_cache_dir=cache)
    # A snapshot laid out as huggingface_hub caches it is found without any network access.
    repo = cache / ("models--" + OFFICIAL_HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    found = resolve_clip_weights(None, "official", hf_cache_dir=cache)
    assert found == snapshot / "open_clip_pytorch_model.bin"
    with pytest.raises(ValueError, match="tiny"):
        resolve_clip_weights(None, "tiny")
