"""The MM-DiT flow network: official key layouts and sizes (meta device), tiny forward behaviour,
CFG empty conditions, RoPE/time-embedding formulas, weight files."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from mmaudio.model import flow_matching as fm
from mmaudio.model.embeddings import TimestepEmbedder, apply_rope, rope_rotations
from mmaudio.model.network import (
    DERIVED_BUFFER_KEYS,
    NETWORK_PRESETS,
    MMAudioNetwork,
    build_network,
    get_network_preset,
    load_network_weights,
    save_network_weights,
)
from mmaudio.modes import mode_spec
from mmaudio.weights import WeightFileError, load_weight_file, save_weight_file

KEYS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "keys"

OFFICIAL_PARAM_COUNTS = {
    "small_16k": 157_283_644,
    "small_44k": 157_409_144,
    "medium_44k": 621_805_944,
    "large_44k": 1_030_002_168,
    "large_44k_v2": 1_030_575_608,
}
# official preset whose data contract each tiny preset must keep
TINY_COUNTERPART = {"tiny_16k": "small_16k", "tiny_44k": "small_44k"}


def _meta_network(name: str) -> MMAudioNetwork:
    with torch.device("meta"):
        return build_network(name)


@torch.no_grad()
def _randomized(name: str, seed: int = 0) -> MMAudioNetwork:
    """A tiny network with O(1)-activation random weights: the training init zeroes every adaLN gate
    and the output conv, which would make most behaviour untestable."""
    torch.manual_seed(seed)
    net = build_network(name).eval()
    g = torch.Generator().manual_seed(seed)
    for pname, p in net.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if pname.endswith("norm.weight"):
            p.copy_(1 + 0.1 * noise)
        elif pname == "latent_std":
            p.copy_(0.5 + noise.abs())
        elif p.dim() >= 2 and pname not in ("empty_string_feat", "empty_clip_feat", "empty_sync_feat"):
            p.copy_(noise / math.sqrt(p[0].numel()))
        else:
            p.copy_(noise)
    return net


def _inputs(net: MMAudioNetwork, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = net.preset
    return {
        "latent": torch.randn(batch, net.latent_seq_len, p.latent_dim, generator=g),
        "clip_f": torch.randn(batch, net.clip_seq_len, p.clip_dim, generator=g),
        "sync_f": torch.randn(batch, net.sync_seq_len, p.sync_dim, generator=g),
        "text_f": torch.randn(batch, net.text_seq_len, p.text_dim, generator=g),
        "t": torch.rand(batch, generator=g),
    }


@pytest.fixture(scope="module")
def tiny16() -> MMAudioNetwork:
    return _randomized("tiny_16k")


# ---- official layouts (meta device) ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAM_COUNTS))
def test_state_dict_matches_official_key_manifest(name: str) -> None:
    manifest = json.loads((KEYS_DIR / f"network_{name}.json").read_text())
    ours = {k: list(v.shape) for k, v in _meta_network(name).state_dict().items()}
    assert sorted(set(manifest) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(manifest)) == []  # unexpected
    assert {k: v for k, v in ours.items() if manifest[k] != v} == {}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAM_COUNTS))
def test_parameter_count_is_official(name: str) -> None:
    net = _meta_network(name)
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAM_COUNTS[name]
    # only the latent statistics and the empty-string features are frozen
    frozen = sorted(n for n, p in net.named_parameters() if not p.requires_grad)
    assert frozen == ["empty_string_feat", "latent_mean", "latent_std"]


def test_derived_buffers_are_not_saved() -> None:
    net = _meta_network("small_16k")
    assert {n for n, _ in net.named_buffers()} == set(DERIVED_BUFFER_KEYS)
    assert not set(DERIVED_BUFFER_KEYS) & set(net.state_dict())


def _structure(keys: set[str]) -> set[str]:
    return {re.sub(r"(joint_blocks|fused_blocks)\.\d+\.", r"\1.*.", k) for k in keys}


@pytest.mark.parametrize("tiny", sorted(TINY_COUNTERPART))
def test_tiny_keeps_official_structure_and_data_contract(tiny: str) -> None:
    official = get_network_preset(TINY_COUNTERPART[tiny])
    small = get_network_preset(tiny)
    for field in ("mode", "latent_dim", "clip_dim", "sync_dim", "text_dim", "v2"):
        assert getattr(small, field) == getattr(official, field), field
    tiny_net, official_net = _meta_network(tiny), _meta_network(official.name)
    assert (tiny_net.latent_seq_len, tiny_net.clip_seq_len, tiny_net.sync_seq_len, tiny_net.text_seq_len) == (
        official_net.latent_seq_len, official_net.clip_seq_len, official_net.sync_seq_len, official_net.text_seq_len)
    assert _structure(set(tiny_net.state_dict())) == _structure(set(official_net.state_dict()))
    assert sum(p.numel() for p in tiny_net.parameters()) < 3_000_000


def test_unknown_network_preset() -> None:
    with pytest.raises(KeyError, match="huge"):
        get_network_preset("huge")


# ---- tiny forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY_COUNTERPART))
def test_tiny_forward_shapes(name: str) -> None:
    net = _randomized(name)
    x = _inputs(net, batch=2)
    with torch.no_grad():
        flow = net(**x)
        cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    latent_len = mode_spec(net.preset.mode).latent_seq_len
    assert flow.shape == (2, latent_len, net.preset.latent_dim)
    assert torch.isfinite(flow).all() and flow.std() > 0.1
    d = net.preset.hidden_dim
    assert cond.clip_f.shape == (2, 64, d) and cond.text_f.shape == (2, 77, d)
    assert cond.sync_f.shape == (2, latent_len, d)  # upsampled to the latent rate
    assert cond.clip_f_c.shape == cond.text_f_c.shape == (2, d)


def test_tiny_flow_matches_upstream_reference_values(tiny16: MMAudioNetwork) -> None:
    """Reference numbers computed by upstream's MMAudio module holding these same random weights and
    inputs (bench/parity/network.py checks the full comparison); pins the layout quirks (interleaved
    qkv, adjacent-pair RoPE, stretched CLIP RoPE, sync upsampling, global_c output modulation)."""
    x = _inputs(tiny16, batch=2)
    with torch.no_grad():
        flow = tiny16(**x)
        empty = tiny16.predict_flow(x["latent"], x["t"], tiny16.get_empty_conditions(2))
    expected_first = torch.tensor(
        [[2.827864, 2.211958, -1.806750, -3.085631], [3.927974, 3.262602, -4.630685, -2.244808]]
    )
    torch.testing.assert_close(flow[0, :2, :4], expected_first, rtol=1e-4, atol=1e-4)
    expected_last = torch.tensor([0.302331, 4.297916, -3.394789, 3.636782])
    torch.testing.assert_close(flow[1, -1, :4], expected_last, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flow.abs().mean(), torch.tensor(3.964962), rtol=1e-4, atol=1e-4)
    expected_empty = torch.tensor([0.175781, 1.945464, 1.886244, -1.765740])
    torch.testing.assert_close(empty[0, 0, :4], expected_empty, rtol=1e-4, atol=1e-4)


def test_forward_equals_preprocess_then_predict(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=2)
    with torch.no_grad():
        cond = tiny16.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        torch.testing.assert_close(tiny16.predict_flow(x["latent"], x["t"], cond), tiny16(**x), rtol=0, atol=0)


def test_samples_in_a_batch_are_independent(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=2)
    with torch.no_grad():
        both = tiny16(**x)
        first = tiny16(**{k: v[:1] for k, v in x.items()})
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-4)  # batched GEMMs round differently
    assert (both[0] - both[1]).abs().max() > 0.1


@pytest.mark.parametrize("which", ["clip_f", "sync_f", "text_f", "t"])
def test_every_condition_changes_the_flow(tiny16: MMAudioNetwork, which: str) -> None:
    x = _inputs(tiny16, batch=1)
    changed = dict(x)
    changed[which] = x[which] * 0.5 + 0.1
    with torch.no_grad():
        assert (tiny16(**changed) - tiny16(**x)).abs().max() > 1e-3


def test_sync_segment_position_embedding_is_per_frame(tiny16: MMAudioNetwork) -> None:
    """sync_pos_emb (1, 1, 8, C) is added to each of the 24 segments' 8 frames."""
    x = _inputs(tiny16, batch=1)
    pos = tiny16.sync_pos_emb.detach()
    with torch.no_grad():
        a = tiny16.preprocess_conditions(x["clip_f"], x["sync_f"] + pos.reshape(8, -1).repeat(24, 1), x["text_f"])
        tiny16.sync_pos_emb.mul_(2)
        b = tiny16.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        tiny16.sync_pos_emb.copy_(pos)
    torch.testing.assert_close(a.sync_f, b.sync_f, rtol=1e-5, atol=1e-5)


def test_untrained_network_predicts_zero_flow() -> None:
    """The training init zeroes the output conv and every adaLN layer (DiT)."""
    net = build_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.ones(20))
    x = _inputs(net, batch=1)
    with torch.no_grad():
        assert net(**x).abs().max() == 0
    assert net.empty_clip_feat.abs().max() == 0 and net.sync_pos_emb.abs().max() == 0


def test_wrong_input_shapes_name_the_input_and_preset(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=1)
    with pytest.raises(ValueError, match=r"sync_f .*tiny_16k"):
        tiny16(x["latent"], x["clip_f"], x["sync_f"][:, :100], x["text_f"], x["t"])
    with pytest.raises(ValueError, match=r"latent .*\(B, 250, 20\)"):
        tiny16(torch.zeros(1, 345, 40), x["clip_f"], x["sync_f"], x["text_f"], x["t"])


# ---- classifier-free guidance ---------------------------------------------------------------------


def test_empty_conditions_are_the_empty_features(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=3)
    with torch.no_grad():
        empty = tiny16.get_empty_conditions(3)
        direct = tiny16.preprocess_conditions(
            tiny16.get_empty_clip_sequence(3), tiny16.get_empty_sync_sequence(3), tiny16.get_empty_string_sequence(3)
        )
        for field in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
            assert getattr(empty, field).shape[0] == 3
            torch.testing.assert_close(getattr(empty, field), getattr(direct, field), rtol=1e-5, atol=1e-5)
        v_empty = tiny16.predict_flow(x["latent"], x["t"], empty)
        v_cond = tiny16(**x)
    assert (v_empty - v_cond).abs().max() > 1e-2
    assert tiny16.get_empty_clip_sequence(2).shape == (2, 64, 1024)
    assert tiny16.get_empty_sync_sequence(2).shape == (2, 192, 768)
    assert tiny16.get_empty_string_sequence(2).shape == (2, 77, 1024)


def test_empty_conditions_with_negative_text(tiny16: MMAudioNetwork) -> None:
    neg = _inputs(tiny16, batch=2, seed=7)["text_f"]
    with torch.no_grad():
        empty = tiny16.get_empty_conditions(2, negative_text_features=neg)
        direct = tiny16.preprocess_conditions(tiny16.get_empty_clip_sequence(2), tiny16.get_empty_sync_sequence(2), neg)
    torch.testing.assert_close(empty.text_f, direct.text_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(empty.clip_f_c, direct.clip_f_c, rtol=1e-5, atol=1e-5)
    assert (empty.text_f[0] - empty.text_f[1]).abs().max() > 1e-3  # per-sample negatives kept


def test_replace_with_empty_masks_rows_and_trains_empty_features(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=3)
    null_video = torch.tensor([True, False, False])
    null_text = torch.tensor([False, False, True])
    clip_f, sync_f, text_f = tiny16.replace_with_empty(
        x["clip_f"], x["sync_f"], x["text_f"], null_video=null_video, null_text=null_text
    )
    assert torch.equal(clip_f[0], tiny16.get_empty_clip_sequence(1)[0].detach())
    assert torch.equal(sync_f[0], tiny16.get_empty_sync_sequence(1)[0].detach())
    assert torch.equal(text_f[2], tiny16.empty_string_feat.detach())
    assert torch.equal(clip_f[1:], x["clip_f"][1:]) and torch.equal(text_f[:2], x["text_f"][:2])
    tiny16.zero_grad()
    tiny16(x["latent"], clip_f, sync_f, text_f, x["t"]).square().mean().backward()
    assert tiny16.empty_clip_feat.grad.abs().sum() > 0 and tiny16.empty_sync_feat.grad.abs().sum() > 0
    assert tiny16.empty_string_feat.grad is None  # frozen
    tiny16.zero_grad()


def test_cfg_euler_sampling_runs_on_the_network(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=2)
    with torch.no_grad():
        cond = tiny16.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
        empty = tiny16.get_empty_conditions(2)
        calls = []

        def counted(latent, t, c):
            calls.append(c is empty)
            return tiny16.predict_flow(latent, t, c)

        x1 = fm.euler_sample(fm.cfg_velocity_fn(counted, cond, empty, 4.5), x["latent"], num_steps=3)
    assert x1.shape == x["latent"].shape and torch.isfinite(x1).all()
    assert calls == [False, True] * 3  # conditional then unconditional, every step


# ---- normalisation and weight files ---------------------------------------------------------------


def test_normalize_roundtrip_uses_the_latent_statistics(tiny16: MMAudioNetwork) -> None:
    x = _inputs(tiny16, batch=2)["latent"]
    with torch.no_grad():
        z = tiny16.normalize(x)
        torch.testing.assert_close(z, (x - tiny16.latent_mean) / tiny16.latent_std)
        torch.testing.assert_close(tiny16.unnormalize(z), x, rtol=1e-5, atol=1e-5)
    assert not torch.equal(z, x)


def test_missing_latent_statistics_are_nan_and_bad_sizes_rejected() -> None:
    net = build_network("tiny_16k")
    assert torch.isnan(net.normalize(torch.zeros(1, 250, 20))).all()
    with pytest.raises(ValueError, match="latent_mean has 40 values.*needs 20"):
        build_network("tiny_16k", latent_mean=torch.zeros(40), latent_std=torch.ones(40))
    with pytest.raises(ValueError, match="together"):
        build_network("tiny_16k", latent_mean=torch.zeros(20))


def test_weight_file_roundtrip_and_strict_errors(tiny16: MMAudioNetwork, tmp_path: Path) -> None:
    path = save_network_weights(tiny16, tmp_path / "mmaudio_tiny_16k.pth")
    state = load_weight_file(path)
    assert set(state) == set(tiny16.state_dict())  # flat dict, official keys
    fresh = build_network("tiny_16k")
    load_network_weights(fresh, path)
    x = _inputs(tiny16, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**x), tiny16(**x), rtol=0, atol=0)

    # files carrying the derived buffers still load
    with_buffers = dict(state, **{k: torch.zeros(1) for k in DERIVED_BUFFER_KEYS})
    save_weight_file(with_buffers, tmp_path / "with_buffers.pth")
    load_network_weights(build_network("tiny_16k"), tmp_path / "with_buffers.pth")

    broken = dict(state)
    del broken["final_layer.conv.weight"]
    save_weight_file(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightFileError, match=r"broken\.pth.*final_layer\.conv\.weight"):
        load_network_weights(build_network("tiny_16k"), tmp_path / "broken.pth")
    with pytest.raises(WeightFileError, match="shape mismatch"):
        load_network_weights(build_network("tiny_44k"), path)


def test_meta_built_network_recovers_buffers_after_to_empty() -> None:
    with torch.device("meta"):
        net = build_network("tiny_16k")
    net = net.to_empty(device="cpu")
    net.reset_buffers()
    ref = build_network("tiny_16k")
    torch.testing.assert_close(net.latent_rot, ref.latent_rot, rtol=0, atol=0)
    torch.testing.assert_close(net.clip_rot, ref.clip_rot, rtol=0, atol=0)
    torch.testing.assert_close(net.t_embed.freqs, ref.t_embed.freqs, rtol=0, atol=0)


def test_set_sequence_lengths_runs_other_durations() -> None:
    net = _randomized("tiny_16k")
    net.set_sequence_lengths(latent_seq_len=125, clip_seq_len=32, sync_seq_len=88)
    assert net.latent_rot.shape[1] == 125 and net.clip_rot.shape[1] == 32
    x = {"latent": torch.randn(1, 125, 20), "clip_f": torch.randn(1, 32, 1024), "sync_f": torch.randn(1, 88, 768),
         "text_f": torch.randn(1, 77, 1024), "t": torch.rand(1)}
    with torch.no_grad():
        assert net(**x).shape == (1, 125, 20)


# ---- RoPE and time embedding ----------------------------------------------------------------------


def test_rope_rotates_adjacent_channel_pairs() -> None:
    rot = rope_rotations(4, 8)  # (1, 4, 4, 2, 2)
    assert rot.shape == (1, 4, 4, 2, 2)
    x = torch.zeros(1, 1, 4, 8)
    x[..., 0] = 1.0  # unit vector in channel 0 at every position
    out = apply_rope(x, rot)[0, 0]  # (4, 8)
    # lowest pair has frequency 1: position n maps (1, 0) to (cos n, sin n) in channels (0, 1)
    n = torch.arange(4.0)
    torch.testing.assert_close(out[:, 0], torch.cos(n))
    torch.testing.assert_close(out[:, 1], torch.sin(n))
    assert out[:, 2:].abs().max() == 0  # nothing leaks to the other half of the head


def test_rope_is_relative_and_norm_preserving() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=g)
    rot = rope_rotations(20, 16)
    qs = apply_rope(q.expand(1, 1, 20, 16), rot)[0, 0]  # (20, 16)
    ks = apply_rope(k.expand(1, 1, 20, 16), rot)[0, 0]
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(20))
    # <R(m) q, R(n) k> depends only on m - n
    torch.testing.assert_close(qs[5] @ ks[2], qs[15] @ ks[12], rtol=1e-4, atol=1e-4)


def test_clip_rope_is_stretched_onto_the_latent_timeline(tiny16: MMAudioNetwork) -> None:
    scale = 250 / 64
    angle = tiny16.clip_rot[0, 1, 0]  # CLIP position 1, frequency 1
    c, s = math.cos(scale), math.sin(scale)
    torch.testing.assert_close(angle, torch.tensor([[c, -s], [s, c]]))
    torch.testing.assert_close(tiny16.latent_rot[0, 1, 0, 1, 0], torch.tensor(math.sin(1.0)))


def test_timestep_frequencies_v1_and_v2() -> None:
    v1 = TimestepEmbedder(64, num_freq_features=256, max_period=10000)
    assert v1.freqs.shape == (128,)
    torch.testing.assert_close(v1.freqs[[0, -1]], torch.tensor([1.0, 10000 ** (-254 / 256)]))
    v2 = TimestepEmbedder(64, num_freq_features=64, max_period=1)
    torch.testing.assert_close(v2.freqs[[0, -1]], torch.tensor([1e4, 1e4 * 10000 ** (-62 / 64)]))
    feats = v1.sinusoidal_features(torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(feats[0], torch.cat([torch.ones(128), torch.zeros(128)]))  # cos first
    torch.testing.assert_close(feats[1, 128], torch.tensor(math.sin(0.5)))


def test_v2_changes_projections_and_time_embedding() -> None:
    with torch.device("meta"):
        v2 = build_network(dataclasses.replace(get_network_preset("tiny_44k"), v2=True, name="tiny_44k_v2"))
    keys = set(v2.state_dict())
    assert "clip_input_proj.2.w1.weight" in keys and "clip_input_proj.1.w1.weight" not in keys
    assert isinstance(v2.audio_input_proj[1], torch.nn.SiLU)
    assert v2.t_embed.mlp[0].weight.shape == (64, 64)
