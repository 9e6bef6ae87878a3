"""The batched memmap loader: disjoint rank slices, oversampling, exact positions, audio-only rows,
the prefetch threads, bf16 storage, and the latent statistics."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

import pytest
import torch

from mmaudio.features import FeatureSet, write_feature_set
from mmaudio.training.loader import Batch, TrainLoader, TrainSource, latent_stats, val_batches, wire_dtype

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sources(feature_root) -> list[TrainSource]:
    return [
        TrainSource("syn_video", FeatureSet.open(feature_root / "syn_video"), repeat=2),
        TrainSource("syn_audio", FeatureSet.open(feature_root / "syn_audio"), repeat=1),
    ]


@pytest.fixture(scope="module")
def bf16_sources(tmp_path_factory, sources) -> list[TrainSource]:
    """The same sets stored as bfloat16."""
    root = tmp_path_factory.mktemp("bf16")
    out = []
    for s in sources:
        fs = s.features
        write_feature_set(root / s.name, mode="16k", kind=fs.kind, ids=fs.ids, texts=fs.texts,
                          tensors={k: fs.td[k][:] for k in fs.td.keys()}, storage_dtype="bfloat16")
        out.append(TrainSource(s.name, FeatureSet.open(root / s.name), repeat=s.repeat))
    return out


def _loader(sources, rank=0, world=1, batch=8, prefetch=0, workers=2, device=CPU) -> TrainLoader:
    return TrainLoader(sources, mode="16k", global_batch_size=batch, rank=rank, world_size=world, seed=7,
                       device=device, prefetch=prefetch, workers=workers)


def _equal(a: Batch, b: Batch) -> bool:
    return all(torch.equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(Batch))


def _cat(parts: list[Batch]) -> Batch:
    return Batch(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Batch)})


def test_an_epoch_holds_every_row_repeat_times(sources):
    loader = _loader(sources)
    assert loader.num_rows == 24 * 2 + 12 and loader.steps_per_epoch == 7  # 60 rows, 4 dropped
    perm = loader.permutation(0)
    assert sorted(perm.tolist()) == list(range(60))
    src, row = loader.locate(perm)
    counts = Counter(zip(src.tolist(), row.tolist()))
    assert all(counts[(0, r)] == 2 for r in range(24)) and all(counts[(1, r)] == 1 for r in range(12))
    assert not torch.equal(loader.permutation(1), perm)  # reshuffled every epoch


def test_ranks_read_disjoint_slices_of_the_same_global_batch(sources):
    single = _loader(sources, batch=8)
    ranks = [_loader(sources, rank=r, world=4, batch=8) for r in range(4)]
    for _ in range(9):  # across an epoch boundary
        whole = single.next()
        parts = [r.next() for r in ranks]
        assert all(len(p) == 2 for p in parts)
        assert _equal(_cat(parts), whole)
    assert single.state_dict()["epoch"] == 1 and single.state_dict()["step_in_epoch"] == 2


def test_rows_carry_their_features_and_audio_rows_have_no_video(sources):
    loader = _loader(sources)
    src, row = loader.global_rows(0, 0)
    batch = loader.read(0, 0)
    for i in range(8):
        fs = sources[int(src[i])].features
        stored = fs.rows(row[i : i + 1])
        assert torch.equal(batch.latent_mean[i], stored["mean"][0])
        assert torch.equal(batch.text_features[i], stored["text_features"][0])
        if fs.kind == "video":
            assert batch.video_exist[i] and torch.equal(batch.sync_features[i], stored["sync_features"][0])
        else:
            assert not batch.video_exist[i]
            assert not batch.clip_features[i].any() and not batch.sync_features[i].any()
    assert {int(s) for s in src} == {0, 1}  # this seed mixes both kinds in the first batch


def test_position_resumes_exactly_with_and_without_prefetch(sources):
    straight = _loader(sources)
    want = [straight.next() for _ in range(12)]
    first = _loader(sources, prefetch=2)
    got = [first.next() for _ in range(5)]
    state = first.state_dict()
    first.close()
    second = _loader(sources, prefetch=3)
    second.load_state_dict(state)
    got += [second.next() for _ in range(7)]
    second.close()
    assert all(_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="global_batch_size"):
        _loader(sources, batch=4).load_state_dict(state)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_worker_threads_keep_the_batch_sequence(sources, workers):
    straight, threaded = _loader(sources), _loader(sources, prefetch=2, workers=workers)
    for _ in range(16):  # two epoch boundaries (7 steps an epoch)
        assert _equal(threaded.next(), straight.next())
    threaded.close()
    assert threaded.state_dict() == straight.state_dict()


def test_one_set_batches_match_row_by_row_reads(sources):
    loader = _loader(sources[:1])  # the whole batch from one set: one index_select per key
    for step in range(3):
        _, rows = loader.global_rows(0, step)
        batch = loader.read(0, step)
        want = sources[0].features.rows(rows)
        assert torch.equal(batch.clip_features, want["clip_features"]) and torch.equal(batch.latent_std, want["std"])
        assert batch.video_exist.all()


def test_bf16_storage_delivers_float32_of_the_stored_values(sources, bf16_sources):
    assert wire_dtype(bf16_sources) == torch.bfloat16 and wire_dtype(sources) == torch.float32
    assert wire_dtype([sources[0], bf16_sources[1]]) == torch.float32  # mixed storage travels as float32
    f32, bf16 = _loader(sources), _loader(bf16_sources, prefetch=2)
    for _ in range(9):
        a, b = f32.next(), bf16.next()
        for f in fields(Batch):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert y.dtype == x.dtype  # float32 features, bool video_exist
            assert torch.equal(y, x.to(torch.bfloat16).to(x.dtype)) if x.is_floating_point() else torch.equal(x, y)
    bf16.close()


def test_mixed_storage_dtypes_in_one_batch(sources, bf16_sources):
    ref, mixed = _loader(sources), _loader([sources[0], bf16_sources[1]])
    for _ in range(3):
        a, b = ref.next(), mixed.next()
        audio = ~a.video_exist
        assert audio.any() and a.video_exist.any()
        assert torch.equal(b.latent_mean[~audio], a.latent_mean[~audio])  # the float32 video set, as stored
        assert torch.equal(b.text_features[audio], a.text_features[audio].to(torch.bfloat16).float())
        assert not b.clip_features[audio].any() and torch.equal(b.clip_features[~audio], a.clip_features[~audio])


def test_a_failing_read_surfaces_in_the_training_loop(sources, monkeypatch):
    loader = _loader(sources, prefetch=2)
    read = loader.read

    def failing_read(epoch, step, **kw):
        if step == 3:
            raise OSError("disk gone")
        return read(epoch, step, **kw)

    monkeypatch.setattr(loader, "read", failing_read)
    for _ in range(3):
        loader.next()
    with pytest.raises(RuntimeError, match="prefetch thread failed") as err:
        loader.next()
    assert isinstance(err.value.__cause__, OSError)
    loader.close()


@pytest.mark.gpu
@pytest.mark.parametrize("prefetch,workers", [(0, 1), (2, 1), (2, 2)])
def test_gpu_batches_equal_the_cpu_read(sources, bf16_sources, prefetch, workers):
    """Pinned buffers, the workers' side streams and the cast on the device change no value."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = torch.device("cuda", 0)
    for srcs in (sources, bf16_sources):
        loader, ref = _loader(srcs, prefetch=prefetch, workers=workers, device=gpu), _loader(srcs)
        assert loader.wire_dtype == wire_dtype(srcs)
        for _ in range(9):
            a, b = ref.next(), loader.next()
            for f in fields(Batch):
                x, y = getattr(a, f.name), getattr(b, f.name)
                assert y.device == gpu and y.dtype == x.dtype and torch.equal(y.cpu(), x)
        loader.close()


def test_batch_larger_than_an_epoch_names_the_key(sources):
    with pytest.raises(ValueError, match=r"train.global_batch_size \(64\) is larger than one epoch"):
        _loader(sources, batch=64)


def test_val_batches_cover_the_set_once_over_ranks(feature_root):
    val = FeatureSet.open(feature_root / "syn_val")
    seen = []
    for rank in range(2):
        for rows, part, batch in val_batches(val, mode="16k", global_batch_size=4, rank=rank, world_size=2):
            if batch is not None:
                seen.append(batch.latent_mean)
    assert torch.equal(torch.cat(sorted(seen, key=lambda t: float(t[0, 0, 0]))).sort(0).values,
                       val.td["mean"][:].sort(0).values)
    assert sum(len(t) for t in seen) == 6


def test_latent_stats_match_torch_over_rows_and_frames(feature_root):
    fs = FeatureSet.open(feature_root / "syn_video")
    mean, std = latent_stats(fs, chunk_rows=5)  # uneven chunks exercise the merge
    data = fs.td["mean"][:].double()
    torch.testing.assert_close(mean, data.mean(dim=(0, 1)).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(std, data.std(dim=(0, 1)).float(), rtol=1e-6, atol=0)
    assert std.min() > 0.3 and mean[0] < -1 and mean[-1] > 2  # the synthetic offsets and scales
