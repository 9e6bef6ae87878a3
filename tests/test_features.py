"""Feature-set directories: round trip, streaming writer, storage dtypes, and every open() error."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mmaudio.features import (
    FeatureSet,
    FeatureSetError,
    FeatureSetWriter,
    feature_shapes,
    write_feature_set,
)


def _tensors(n: int, mode: str = "16k", kind: str = "video", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((n, *shape), generator=g) for k, shape in feature_shapes(mode, kind).items()}


def _write(tmp_path, n=3, mode="16k", kind="video", **kw):
    ids = [f"v{i}" for i in range(n)]
    texts = [f"label {i}" for i in range(n)]
    t = _tensors(n, mode, kind)
    out = write_feature_set(tmp_path / "fs", mode=mode, kind=kind, ids=ids, texts=texts, tensors=t, **kw)
    return out, ids, texts, t


@pytest.mark.parametrize("mode,kind", [("16k", "video"), ("44k", "audio")])
def test_round_trip_keeps_rows_values_and_order(tmp_path, mode, kind):
    out, ids, texts, t = _write(tmp_path, n=4, mode=mode, kind=kind, rejects=[("bad", "no audio stream")], info={"dataset": "d"})
    fs = FeatureSet.open(out, mode=mode, kind=kind)
    assert len(fs) == 4 and fs.ids == ids and fs.texts == texts
    batch = fs.rows(torch.tensor([3, 1]))
    for k in t:
        assert torch.equal(batch[k], t[k][[3, 1]])
    info = json.loads((out / "info.json").read_text())
    assert info == {"mode": mode, "kind": kind, "storage_dtype": "float32", "rows": 4, "dataset": "d"}
    assert (out / "rejects.tsv").read_text() == "id\treason\nbad\tno audio stream\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs"]  # no temp folder left behind


def test_bfloat16_storage_is_read_as_float32(tmp_path):
    out, _, _, t = _write(tmp_path, storage_dtype="bfloat16")
    fs = FeatureSet.open(out)
    assert fs.storage_dtype == "bfloat16" and fs.td["mean"].dtype == torch.bfloat16
    rows = fs.rows(torch.arange(3))
    assert rows["sync_features"].dtype == torch.float32
    assert torch.equal(rows["sync_features"], t["sync_features"].bfloat16().float())
    assert fs.rows(torch.arange(3), dtype=None)["mean"].dtype == torch.bfloat16


def test_streaming_writer_equals_one_shot_and_checks_row_counts(tmp_path):
    t = _tensors(5, "16k", "audio")
    ids, texts = [f"a{i}" for i in range(5)], list("abcde")
    with FeatureSetWriter(tmp_path / "s", mode="16k", kind="audio", num_rows=5) as w:
        w.append({k: v[:2] for k, v in t.items()})
        w.append({k: v[2:2] for k, v in t.items()})  # an empty part (a shard of rejects only)
        w.append({k: v[2:] for k, v in t.items()})
        w.commit(ids, texts)
    fs = FeatureSet.open(tmp_path / "s")
    assert all(torch.equal(fs.td[k][:], t[k]) for k in t)

    with pytest.raises(FeatureSetError, match="only 2 of 5 rows"):
        with FeatureSetWriter(tmp_path / "short", mode="16k", kind="audio", num_rows=5) as w:
            w.append({k: v[:2] for k, v in t.items()})
            w.commit(ids, texts)
    with pytest.raises(FeatureSetError, match="6 rows written, but the set was sized for 5"):
        with FeatureSetWriter(tmp_path / "long", mode="16k", kind="audio", num_rows=5) as w:
            w.append(t)
            w.append({k: v[:1] for k, v in t.items()})
    with pytest.raises(FeatureSetError, match=r"key 'std' has shape \(2, 250, 19\)"):
        with FeatureSetWriter(tmp_path / "shape", mode="16k", kind="audio", num_rows=2) as w:
            w.append({**{k: v[:2] for k, v in t.items()}, "std": torch.zeros(2, 250, 19)})
    # failed writes leave neither the set nor a temp folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_write_rejects_wrong_keys_and_shapes(tmp_path):
    t = _tensors(2, "16k", "video")
    with pytest.raises(FeatureSetError, match="do not match the contract"):
        write_feature_set(tmp_path / "x", mode="16k", kind="audio", ids=["a", "b"], texts=["x", "y"], tensors=t)
    with pytest.raises(FeatureSetError, match=r"key 'clip_features' has shape \(2, 32, 1024\), expected \(2, 64, 1024\)"):
        bad = {**t, "clip_features": torch.zeros(2, 32, 1024)}
        write_feature_set(tmp_path / "x", mode="16k", kind="video", ids=["a", "b"], texts=["x", "y"], tensors=bad)
    assert not (tmp_path / "x").exists()


def _rewrite_tsv(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_open_names_the_directory_and_the_mismatch(tmp_path):
    out, *_ = _write(tmp_path)
    d = str(out)

    with pytest.raises(FeatureSetError, match=f"{d}: holds mode '16k', expected '44k'"):
        FeatureSet.open(out, mode="44k")
    with pytest.raises(FeatureSetError, match=f"{d}: holds kind 'video', expected 'audio'"):
        FeatureSet.open(out, kind="audio")

    samples = out / "samples.tsv"
    original = samples.read_text()
    _rewrite_tsv(samples, original.splitlines()[:-1])
    with pytest.raises(FeatureSetError, match=f"{d}: samples.tsv has 2 rows but the memmap has 3"):
        FeatureSet.open(out)
    _rewrite_tsv(samples, ["id\tcaption", "v0\tx", "v1\ty", "v2\tz"])
    with pytest.raises(FeatureSetError, match=f"{d}: .*missing required column.*label"):
        FeatureSet.open(out)
    samples.write_text(original)

    info = json.loads((out / "info.json").read_text())
    (out / "info.json").write_text(json.dumps({**info, "rows": 7}))
    with pytest.raises(FeatureSetError, match=f"{d}: info.json says 7 rows but the memmap has 3"):
        FeatureSet.open(out)
    (out / "info.json").write_text(json.dumps({**info, "storage_dtype": "bfloat16"}))
    with pytest.raises(FeatureSetError, match=f"{d}: key '.*' is torch.float32, info.json says bfloat16"):
        FeatureSet.open(out)
    (out / "info.json").write_text(json.dumps({**info, "mode": "22k"}))
    with pytest.raises(FeatureSetError, match=f"{d}: info.json: unknown mode '22k'"):
        FeatureSet.open(out)
    (out / "info.json").write_text("{not json")
    with pytest.raises(FeatureSetError, match=f"{d}: info.json is not valid JSON"):
        FeatureSet.open(out)
    (out / "info.json").write_text(json.dumps({**info, "mode": "44k"}))
    with pytest.raises(FeatureSetError, match=f"{d}: key 'mean' has per-sample shape \\(250, 20\\), expected \\(345, 40\\)"):
        FeatureSet.open(out)
    (out / "info.json").write_text(json.dumps(info))

    os.truncate(out / "td" / "sync_features.memmap", 1000)
    with pytest.raises(FeatureSetError, match=f"{d}: cannot open the memmap in td/"):
        FeatureSet.open(out)

    with pytest.raises(FeatureSetError, match=f"{tmp_path}: not a feature set \\(no info.json\\)"):
        FeatureSet.open(tmp_path)


def test_open_rejects_a_memmap_with_a_missing_key(tmp_path):
    from tensordict import TensorDict

    out, *_ = _write(tmp_path, kind="audio")
    td = TensorDict.load_memmap(out / "td")
    partial = TensorDict({k: td[k].clone() for k in ("mean", "std")}, batch_size=td.batch_size)
    (tmp_path / "fs2").mkdir()
    partial.memmap_(prefix=tmp_path / "fs2" / "td")
    for name in ("samples.tsv", "info.json", "rejects.tsv"):
        (tmp_path / "fs2" / name).write_bytes((out / name).read_bytes())
    with pytest.raises(FeatureSetError, match=r"fs2: keys \['mean', 'std'\] do not match the contract \['mean', 'std', 'text_features'\]"):
        FeatureSet.open(tmp_path / "fs2")
