"""Frames as upstream's decoder makes them, checked against libavfilter itself.

Upstream (torio's StreamingMediaDecoder) runs each decoded frame, with its own timestamp, through the
filter chain ``fps=F,format=pix_fmts=rgb24`` and hands the uint8 pictures to torchvision's v2 Resize
(bicubic, antialias) [+ CenterCrop]. Here the same chain runs through PyAV's libavfilter bindings on
generated media (constant rates, a variable rate, a stream that starts late, one that ends right at
8 s), the filter's frames go through torchvision's own transforms, and the decoder's frames must
equal them: the same source frame for every output (indices compared), and a pixel difference of 0.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from mmaudio.media import (
    CLIP_FRAMES,
    IMAGEBIND_FRAMES,
    SYNC_FRAMES,
    FpsSelector,
    FrameSpec,
    fps_rescale,
    load_video_clip,
)

W, H = 112, 64  # wider than high, so the Synchformer stream resizes and crops


def _picture(i: int) -> np.ndarray:
    """Frame i: a gradient that moves with i and a bar whose height encodes i (every frame distinct)."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([(x * 2 + i * 5) % 256, (y * 3 + i * 11) % 256, ((x + y + i * 7) * 2) % 256], -1)
    img[: 4 + (i % 50), :6] = 255
    return img.astype(np.uint8)


def write_test_video(path, pts_list, time_base: Fraction, codec="libx264", rate=None) -> None:
    """A video whose frame i is shown at pts_list[i] (in ``time_base`` units), nearly lossless."""
    with av.open(str(path), "w") as c:
        opts = {"crf": "1", "preset": "ultrafast"} if codec == "libx264" else {"qscale": "1"}
        s = c.add_stream(codec, rate=rate or 25, options=opts)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = time_base
        s.time_base = time_base
        for i, pts in enumerate(pts_list):
            f = av.VideoFrame.from_ndarray(_picture(i), format="rgb24")
            f.pts, f.time_base = pts, time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def reference_frames(path, spec: FrameSpec, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of libavfilter's ``fps={spec.fps},format=pix_fmts=rgb24`` chain fed with
    every decoded frame of the file, as torio feeds it (frame pts, then end of stream)."""
    out: list[np.ndarray] = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        graph = av.filter.Graph()
        src = graph.add_buffer(template=stream)
        fps = graph.add("fps", f"fps={spec.fps}")
        fmt = graph.add("format", "pix_fmts=rgb24")
        sink = graph.add("buffersink")
        src.link_to(fps)
        fps.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    out.append(graph.pull().to_ndarray())
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in c.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
        decoded = [f.to_ndarray(format="rgb24") for f in av.open(str(path)).decode(video=0)]
    assert len(out) >= n, f"{path}: the filter gave {len(out)} frames, the test needs {n}"
    return out[:n], decoded


def upstream_transform(frames: list[np.ndarray], spec: FrameSpec) -> torch.Tensor:
    """Upstream's own torchvision v2 transforms (before their float conversion) on the uint8 (T, 3, H, W)
    tensor torio returns (a permuted (T, H, W, 3) buffer, so channels-last in memory)."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    bicubic = v2.InterpolationMode.BICUBIC
    if spec.resize == "squash":
        return v2.Resize((spec.size, spec.size), interpolation=bicubic)(x)
    if spec.resize == "short_side_center_crop":
        return v2.Compose([v2.Resize(spec.size, interpolation=bicubic), v2.CenterCrop(spec.size)])(x)
    return x


def _source_indices(images, decoded: list[np.ndarray]) -> list[int]:
    """Which decoded source frame each image is (every source frame is distinct)."""
    where = {d.tobytes(): i for i, d in enumerate(decoded)}
    assert len(where) == len(decoded), "every source frame must be distinct"
    return [where[np.ascontiguousarray(img).tobytes()] for img in images]


def _cfr(fps: Fraction, seconds: float) -> tuple[list[int], Fraction]:
    tb = 1 / fps
    return list(range(int(seconds * fps))), tb


def _vfr(seconds: float) -> tuple[list[int], Fraction]:
    rng = np.random.default_rng(7)
    pts, t = [], 0
    while t < seconds * 1000:
        pts.append(t)
        t += int(rng.choice([17, 23, 33, 40, 50, 67, 100]))  # ms: a phone's variable frame rate
    return pts, Fraction(1, 1000)


def _late(seconds: float) -> tuple[list[int], Fraction]:
    return [1300 + 40 * i for i in range(int(seconds * 25))], Fraction(1, 1000)  # first frame at 1.3 s


VIDEOS = {
    "24fps": (_cfr(Fraction(24), 9.0), "libx264", 24),
    "25fps": (_cfr(Fraction(25), 9.0), "libx264", 25),
    "29.97fps": (_cfr(Fraction(30000, 1001), 9.0), "libx264", Fraction(30000, 1001)),
    "30fps": (_cfr(Fraction(30), 9.0), "mpeg4", 30),
    "60fps": (_cfr(Fraction(60), 8.5), "libx264", 60),
    "vfr": (_vfr(9.0), "libx264", 30),
    "late_start": (_late(9.0), "libx264", 25),
    "ends_at_8s": (_cfr(Fraction(30), 8.0), "libx264", 30),  # the last Synchformer frame comes at EOF
}


@pytest.fixture(scope="module")
def parity_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    paths = {}
    for name, ((pts, tb), codec, rate) in VIDEOS.items():
        ext = "mp4" if name != "vfr" else "mkv"
        paths[name] = folder / f"{name}.{ext}"
        write_test_video(paths[name], pts, tb, codec=codec, rate=rate)
    return paths


@pytest.mark.parametrize("name", list(VIDEOS))
def test_frames_equal_libavfilter_fps_and_torchvision_uint8_resize(parity_videos, name):
    path = parity_videos[name]
    specs = (CLIP_FRAMES, SYNC_FRAMES, IMAGEBIND_FRAMES)
    natives = tuple(FrameSpec(f"native_{s.name}", s.fps, 0, "native") for s in specs)
    clip = load_video_clip(path, duration_sec=8.0, specs=specs + natives)
    for spec in specs:
        n = spec.num_frames(8.0)
        ref, decoded = reference_frames(path, spec, n)
        ours_idx = _source_indices(clip.frames[f"native_{spec.name}"].permute(0, 2, 3, 1).numpy(), decoded)
        ref_idx = _source_indices(ref, decoded)
        assert ours_idx == ref_idx, f"{name} at {spec.fps} fps: source frames differ"
        expected = upstream_transform(ref, spec)
        got = clip.frames[spec.name]
        assert got.shape == expected.shape and got.dtype == torch.uint8
        assert int((got.int() - expected.int()).abs().max()) == 0, f"{name} {spec.name}: pixels differ"


def test_imagebind_frames_of_a_25fps_clip_sit_at_odd_seconds(parity_videos):
    """av-benchmark's 0.5 fps stream of an 8 s clip shows the frames at 0.96, 2.96, 4.96, 6.96 s."""
    path = parity_videos["25fps"]
    frames = load_video_clip(path, duration_sec=8.0, specs=(IMAGEBIND_FRAMES,)).frames["imagebind"]
    decoded = [f.to_ndarray(format="rgb24") for f in av.open(str(path)).decode(video=0)]
    idx = _source_indices(frames.permute(0, 2, 3, 1).numpy(), decoded)
    assert [i / 25 for i in idx] == [0.96, 2.96, 4.96, 6.96]


def test_fps_rounding_is_nearest_with_halves_away_from_zero():
    tb = Fraction(1, 1000)
    assert fps_rescale(62, tb, Fraction(8)) == 0  # 0.496 frames
    assert fps_rescale(63, tb, Fraction(8)) == 1  # 0.504
    assert fps_rescale(20, tb, Fraction(25)) == 1  # exactly 0.5 rounds up
    assert fps_rescale(-20, tb, Fraction(25)) == -1  # and -0.5 down
    assert fps_rescale(999, tb, Fraction(1, 2)) == 0 and fps_rescale(1000, tb, Fraction(1, 2)) == 1


def test_selector_on_30fps_into_25fps():
    """30 -> 25 fps: input i rounds to slot round(5i/6) (halves up): inputs 3 and 4 both round to slot
    3, so input 3 is dropped (likewise 9 and 10); the last input fills the slots up to its end time."""
    sel = FpsSelector(Fraction(25), Fraction(1, 30))
    emitted = [sel.push(i, 1) for i in range(13)] + [sel.finish()]
    # the count for push(i + 1) is how many slots input i fills
    assert emitted[1:] == [1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    assert sum(emitted) == 11  # 13 frames = 0.4333 s -> slots 0..10
