"""Parity of the DeSync and IB-score extractors with av-benchmark's Synchformer and hkchengrex/ImageBind, CPU.

Both sides get the same random weights, written once by our savers in the official flat layouts and
read by upstream with its own strict ``load_state_dict`` (as extraction_models.py / imagebind_huge do).
Upstream's preprocessing runs as upstream wrote it: ``encode_audio_with_sync`` (extract.py) and
``encode_video_with_sync`` / ``encode_video_with_imagebind`` (extract_video.py) are taken from their
source files and executed verbatim (those scripts cannot be imported without CLAP, PaSST, MS-CLAP and
colorlog), ``ImageBindAudioDataset.load_and_transform_audio_data`` reads the clip through a patched
``torchaudio.load``, ``VideoDataset``'s ``ib_transform``/``sync_transform`` and ``SpatialCrop`` are used
as its ``sample`` does, and DeSync's window slicing and class grid are upstream's
(``compare_v_a(v[:, :14], a[:, :14])``, ``[:, -14:]``, ``make_class_grid(-2, 2, 21)``).

Rows (float32, largest |ours - upstream| / max |upstream|), at official size by default:

- Synchformer, the whole official layout (all 513 entries) loaded strictly by both sides. Video:
  32 frames (3 segments) through ``sync_transform`` + ``encode_video_with_sync``, full Motionformer.
  Audio: one 4.8 s window (14 segments) of a 44.1 kHz stereo clip, through upstream's
  ``SynchformerAudioDataset`` steps (mono, Resample, cut) and ``encode_audio_with_sync``, full AST.
  Offsets: ``compare_v_a`` on the same 14-segment features (upstream's video features, padded), and
  DeSync's two windows of 8 s (24-segment) features with upstream's grid and argmax. With
  ``end_to_end=True`` a whole 4.8 s window (120 frames) goes through ``predict_offsets`` instead
  (14 Motionformer segments: several minutes on CPU).
- ImageBind: upstream's ``ImageBindModel`` with imagebind_huge's hyperparameters (vision 1280 wide,
  32 blocks, 16 heads; audio 768, 12 blocks, 12 heads; 1024-d output); the text/depth/thermal/imu
  towers, which are not compared, at one block to save memory. Video: 4 frames of 180x320 (so the
  resize and the three crops matter) -> 9 clips; audio: an 8 s 44.1 kHz stereo clip -> resampled,
  3 fbank clips.

``visual_depth`` / ``vision_depth`` cut the Motionformer / ImageBind vision tower to their first blocks
on both sides, for a quicker run.

    python bench/parity/av_sync_ib.py --upstream /path/to/av-benchmark --imagebind /path/to/ImageBind \
        --deps /path/to/site-packages

Upstream needs einops, timm, omegaconf, transformers 4.x (the AST code uses helpers removed in 5.x,
with a matching huggingface_hub < 1.0), iopath and pytorchvideo (ImageBind's imports and the audio clip
sampler). ``deps`` folders go *in front* of sys.path while upstream is imported, so that transformers
4.x finds its own huggingface_hub. pytorchvideo 0.1.5 imports ``torchvision.transforms.functional_tensor``
(renamed ``_functional_tensor`` in torchvision 0.17+): that alias is installed; ``torio`` (gone from
torchaudio 2.9+, only used by ``VideoDataset.sample``) is stubbed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

from mmaudio.evaluation.extractors.imagebind import (
    IMAGEBIND_PRESETS,
    build_imagebind,
    load_imagebind,
    save_imagebind,
)
from mmaudio.evaluation.extractors.synchformer_av import (
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    build_synchformer_av,
    load_synchformer_av,
    offset_grid,
    prepare_sync_audio,
    save_synchformer_av,
)
from mmaudio.weights import load_weight_file

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import (  # noqa: E402
    check_under,
    function_from_source,
    parity_parser,
    rel_diff,
    run_cli,
    stereo_tones,
)

CLIP_RATE = 44_100  # Hz, native rate of the test audio


def _stereo_clip(seconds: float, seed: int) -> torch.Tensor:
    """(2, L) float32 at 44.1 kHz: tones with vibrato, noise and a DC offset."""
    return stereo_tones(int(CLIP_RATE * seconds), CLIP_RATE, torch.Generator().manual_seed(seed)).float()


def _smooth_frames(num: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(num, 3, H, W) uint8 frames: upsampled noise, so resizing does not destroy all structure."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num, 3, height // 8, width // 8, generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand(num, 3, height, width, generator=gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _random_state_dict(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Weights ~ N(0, 1 / fan_in), LayerNorm gains near 1, small non-zero biases, O(1) tokens and
    positions, so activations stay O(1), attention is far from uniform and every entry matters."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        if key.endswith("log_logit_scale"):
            x = torch.tensor(math.log(20.0))  # a fixed constant upstream; keep its official value
        elif key.endswith(("token", "_tok", "pos_embed", "pos_emb", "temp_embed", "position_embeddings", "bias_k",
                           "bias_v")):
            x = 0.5 * x
        elif len(shape) >= 2:
            x = x / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):  # LayerNorm gains
            x = 1.0 + 0.1 * x
        else:
            x = 0.1 * x
        out[key] = x
    return out


@contextlib.contextmanager
def _upstream_path(paths: list[str]) -> Iterator[None]:
    """Upstream folders and deps in front of sys.path; shims for two modules newer libraries lack."""
    added = [p for p in paths if p not in sys.path]
    sys.path[:0] = added
    shims = {}
    if importlib.util.find_spec("torchvision.transforms.functional_tensor") is None:
        shims["torchvision.transforms.functional_tensor"] = importlib.import_module(
            "torchvision.transforms._functional_tensor"
        )
    if importlib.util.find_spec("torio") is None:
        torio, torio_io = types.ModuleType("torio"), types.ModuleType("torio.io")
        torio_io.StreamingMediaDecoder = None  # only VideoDataset.sample uses it; never called here
        torio.io = torio_io
        shims.update({"torio": torio, "torio.io": torio_io})
    sys.modules.update(shims)
    try:
        yield
    finally:
        for p in added:
            sys.path.remove(p)


def _import_upstream(av_benchmark_dir: str, imagebind_dir: str | None, deps: list[str]) -> dict[str, types.ModuleType]:
    names = {
        "synchformer": "av_bench.synchformer.synchformer",
        "audio_dataset": "av_bench.data.audio_dataset",
        "video_dataset": "av_bench.data.video_dataset",
        "imagebind_model": "imagebind.models.imagebind_model",
        "einops": "einops",
    }
    paths = [av_benchmark_dir] + ([imagebind_dir] if imagebind_dir else []) + deps
    with _upstream_path(paths):
        modules = {key: importlib.import_module(name) for key, name in names.items()}
    for key in ("synchformer", "audio_dataset", "video_dataset"):
        check_under(modules[key], av_benchmark_dir)
    if imagebind_dir:
        check_under(modules["imagebind_model"], imagebind_dir)
    return modules


def _synchformer_rows(
    up: dict[str, types.ModuleType], av_benchmark_dir: str, folder: Path, visual_depth: int, end_to_end: bool
) -> list[tuple[str, float]]:
    rows = []
    path = folder / "synchformer_state_dict.pth"
    model = build_synchformer_av("official", device="meta")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(_random_state_dict(shapes, seed=1), assign=True)
    save_synchformer_av(model, path)
    del model

    ref = up["synchformer"].Synchformer().eval()
    ref.load_state_dict(torch.load(path, weights_only=True))  # strict, as extraction_models.py:52-54
    ours = load_synchformer_av(path, "official")  # strict, all 513 entries
    if visual_depth < len(ref.vfeat_extractor.blocks):  # both sides keep the same first blocks
        ref.vfeat_extractor.blocks = ref.vfeat_extractor.blocks[:visual_depth]
        ours.vfeat_extractor.blocks = ours.vfeat_extractor.blocks[:visual_depth]
    depth_note = "full 12 blocks" if visual_depth >= 12 else f"{visual_depth} of 12 blocks"

    # video features: upstream's sync_transform (video_dataset.py:51-57) then encode_video_with_sync
    encode_video_with_sync = function_from_source(
        Path(av_benchmark_dir) / "extract_video.py",
        "encode_video_with_sync",
        {"torch": torch, "rearrange": up["einops"].rearrange, "Synchformer": up["synchformer"].Synchformer},
    )
    num_frames = WINDOW_FRAMES if end_to_end else 32
    frames = _smooth_frames(num_frames, 224, 224, seed=2)[None]  # (1, T, 3, 224, 224) uint8
    sync_transform = up["video_dataset"].VideoDataset([], duration_sec=8.0).sync_transform
    with torch.no_grad():
        normalised = sync_transform(frames[0]).as_subclass(torch.Tensor)  # (T, 3, 224, 224) in [-1, 1]
        ref_v = encode_video_with_sync(ref, normalised[None])  # (1, S, 8, 768)
    ours_v = ours.encode_video_segments(frames)
    rows.append((f"Synchformer video features {tuple(ref_v.shape)}, Motionformer {depth_note}",
                 rel_diff(ours_v, ref_v)))

    # audio features: SynchformerAudioDataset.sample's steps (audio_dataset.py:206-222) then
    # encode_audio_with_sync with the MelSpectrogram of extraction_models.py:57-63
    stereo = _stereo_clip(WINDOW_SAMPLES / 16000 + 0.1, seed=3)  # 44.1 kHz, a little over 4.8 s
    dataset = up["audio_dataset"].SynchformerAudioDataset([Path("clip.wav")], duration=WINDOW_SAMPLES / 16000)
    with mock.patch.object(up["audio_dataset"].torchaudio, "load", return_value=(stereo, CLIP_RATE)):
        ref_wave, _ = dataset.sample(0)
    ours_wave = prepare_sync_audio(stereo[None], CLIP_RATE, duration_sec=WINDOW_SAMPLES / 16000)
    rows.append(("Synchformer audio input (mono, resampled, cut) (1, 76800)", rel_diff(ours_wave, ref_wave[None])))
    torchaudio = up["audio_dataset"].torchaudio
    encode_audio_with_sync = function_from_source(
        Path(av_benchmark_dir) / "av_bench" / "extract.py",
        "encode_audio_with_sync",
        {"torch": torch, "torchaudio": torchaudio, "pad_or_truncate": up["audio_dataset"].pad_or_truncate,
         "Synchformer": up["synchformer"].Synchformer},
    )
    # the transform upstream holds in ExtractionModels (extraction_models.py:57-63)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, win_length=400, hop_length=160, n_fft=1024, n_mels=128
    )
    with torch.no_grad():
        ref_a = encode_audio_with_sync(ref, ref_wave[None], mel)  # (1, 14, 6, 768)
    ours_a = ours.encode_audio_segments(ours_wave)
    rows.append(("Synchformer audio features (1, 14, 6, 768), full AST", rel_diff(ours_a, ref_a)))

    gen = torch.Generator().manual_seed(4)
    if end_to_end:  # frames and audio of one 4.8 s window -> logits, through the whole model
        with torch.no_grad():
            ref_logits = ref.compare_v_a(ref_v, ref_a)
        ours_logits = ours.predict_offsets(frames, ours_wave)
        rows.append(("predict_offsets logits, one 4.8 s window (1, 21), end to end", rel_diff(ours_logits, ref_logits)))
    else:  # the same 14-segment features on both sides (upstream's video features, padded)
        v14 = torch.cat((ref_v.expand(2, -1, -1, -1), torch.randn(2, 14 - ref_v.shape[1], 8, 768, generator=gen)), 1)
        a14 = torch.cat((ref_a, torch.randn(1, 14, 6, 768, generator=gen)))
        with torch.no_grad():
            ref_logits = ref.compare_v_a(v14, a14)
        rows.append(("compare logits, one 4.8 s window (2, 21)", rel_diff(ours.compare(v14, a14), ref_logits)))
    # DeSync: upstream's two slices of 8 s (24-segment) features, its grid and argmax
    v24, a24 = torch.randn(3, 24, 8, 768, generator=gen), torch.randn(3, 24, 6, 768, generator=gen)
    with torch.no_grad():
        ref_first = ref.compare_v_a(v24[:, :14], a24[:, :14])  # evaluate.py:180
        ref_last = ref.compare_v_a(v24[:, -14:], a24[:, -14:])  # evaluate.py:185
        ref_two = torch.stack((ref_first, ref_last), dim=1)
    ours_two = ours.desync_logits(v24, a24)
    rows.append(("DeSync logits, first and last window (3, 2, 21)", rel_diff(ours_two, ref_two)))
    grid = up["synchformer"].make_class_grid(-2, 2, 21)
    rows.append(("DeSync offset grid (21,)", rel_diff(offset_grid(), grid)))
    same_argmax = torch.equal(ours_two.argmax(-1), ref_two.argmax(-1))
    rows.append(("DeSync argmax classes differ (0 = identical)", 0.0 if same_argmax else 1.0))
    return rows


def _imagebind_rows(
    up: dict[str, types.ModuleType], av_benchmark_dir: str, folder: Path, vision_depth: int
) -> list[tuple[str, float]]:
    rows = []
    official = IMAGEBIND_PRESETS["official"]
    preset = dataclasses.replace(
        official, name=f"official_vision{vision_depth}", vision=dataclasses.replace(official.vision, depth=vision_depth)
    )
    path = folder / "imagebind_huge.pth"
    model = build_imagebind(preset, device="meta")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(_random_state_dict(shapes, seed=5), assign=True)
    save_imagebind(model, path)
    del model

    # imagebind_huge's hyperparameters (imagebind_model.py:480-491), depths cut where not compared
    ref = up["imagebind_model"].ImageBindModel(
        vision_embed_dim=1280, vision_num_blocks=vision_depth, vision_num_heads=16,
        text_embed_dim=1024, text_num_blocks=1, text_num_heads=16, out_embed_dim=1024,
        audio_drop_path=0.1, imu_drop_path=0.7, depth_num_blocks=1, thermal_num_blocks=1, imu_num_blocks=1,
    ).eval()
    state = ref.state_dict()
    ours_sd = load_weight_file(path)
    if not set(ours_sd) <= set(state):
        raise RuntimeError(f"our ImageBind entries missing upstream: {sorted(set(ours_sd) - set(state))[:5]}")
    state.update(ours_sd)
    ref.load_state_dict(state)  # strict; the text/depth/thermal/imu towers keep their random init
    ours = load_imagebind(path, preset)
    modality = up["imagebind_model"].ModalityType

    # video: ib_transform + SpatialCrop as VideoDataset.sample (video_dataset.py:101,110-111), then
    # encode_video_with_imagebind (extract_video.py:59-71)
    dataset = up["video_dataset"].VideoDataset([], duration_sec=8.0)
    frames = _smooth_frames(4, 180, 320, seed=6)  # (4, 3, 180, 320): 0.5 fps for 8 s
    ib_chunk = dataset.ib_transform(frames).as_subclass(torch.Tensor)  # (4, 3, 224, 398)
    ib_chunk = torch.stack(dataset.crop([ib_chunk]))  # (3, 4, 3, 224, 224)
    encode_video_with_imagebind = function_from_source(
        Path(av_benchmark_dir) / "extract_video.py",
        "encode_video_with_imagebind",
        {"torch": torch, "rearrange": up["einops"].rearrange, "ModalityType": modality, "imagebind_model": None},
    )
    with torch.no_grad():
        ref_v = encode_video_with_imagebind(ref, ib_chunk[None])  # (1, 1024)
    ours_v = ours.encode_video(frames[None])
    rows.append((f"ImageBind video embedding (1, 1024), vision {vision_depth} of 32 blocks", rel_diff(ours_v, ref_v)))

    # audio: ImageBindAudioDataset.load_and_transform_audio_data (audio_dataset.py:150-186), extract.py:101-103
    stereo = _stereo_clip(8.0, seed=7)  # (2, 352800) at 44.1 kHz
    dataset = up["audio_dataset"].ImageBindAudioDataset([Path("clip.wav")])
    with mock.patch.object(up["audio_dataset"].torchaudio, "load", return_value=(stereo.clone(), CLIP_RATE)):
        ref_in = dataset.load_and_transform_audio_data(Path("clip.wav"))  # (1, 3, 1, 128, 204)
    with torch.no_grad():
        ref_a = ref({modality.AUDIO: ref_in})[modality.AUDIO]  # (1, 1024)
    ours_a = ours.encode_audio(stereo[None], CLIP_RATE)
    rows.append(("ImageBind audio embedding (1, 1024), full 12 blocks", rel_diff(ours_a, ref_a)))
    ib_ref = torch.cosine_similarity(ref_v, ref_a, dim=-1).mean().item()
    ib_ours = torch.cosine_similarity(ours_v, ours_a, dim=-1).mean().item()
    rows.append(("IB-score of the pair (abs diff)", abs(ib_ours - ib_ref)))
    return rows


def run(
    av_benchmark_dir: str,
    imagebind_dir: str | None = None,
    deps: list[str] | None = None,
    *,
    visual_depth: int = 12,
    vision_depth: int = 32,
    end_to_end: bool = False,
) -> list[tuple[str, float]]:
    """Largest relative differences (max|ours - upstream| / max|upstream|) of each output, float32 CPU.

    ``imagebind_dir``: a checkout of hkchengrex/ImageBind (None: the installed ``imagebind`` package).
    ``deps``: folders with the packages upstream needs and the environment lacks.
    ``visual_depth`` / ``vision_depth``: Motionformer / ImageBind vision blocks kept on both sides (full:
    12 / 32). ``end_to_end``: frames and audio of a whole 4.8 s window through ``predict_offsets``
    (14 Motionformer segments; several minutes on CPU at full depth).
    """
    up = _import_upstream(av_benchmark_dir, imagebind_dir, deps or [])
    with tempfile.TemporaryDirectory(prefix="av_sync_ib_parity_") as tmp:
        rows = _synchformer_rows(up, av_benchmark_dir, Path(tmp), visual_depth, end_to_end)
        rows += _imagebind_rows(up, av_benchmark_dir, Path(tmp), vision_depth)
    return rows


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "checkout of hkchengrex/av-benchmark",
                           deps_help="extra folder of packages upstream needs", threads=True)
    parser.add_argument("--imagebind", default=None, help="checkout of hkchengrex/ImageBind")
    parser.add_argument("--visual-depth", type=int, default=12, help="Motionformer blocks to compare (12 = full)")
    parser.add_argument("--vision-depth", type=int, default=32, help="ImageBind vision blocks to compare (32 = full)")
    parser.add_argument("--end-to-end", action="store_true", help="also run a whole 4.8 s window end to end")
    run_cli(
        parser,
        lambda args: run(args.upstream, args.imagebind, args.deps, visual_depth=args.visual_depth,
                         vision_depth=args.vision_depth, end_to_end=args.end_to_end),
        "max rel diff (float32, CPU)",
        timed=True,
    )


if __name__ == "__main__":
    main()
