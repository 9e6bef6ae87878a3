"""The hostile-input cases: each runs one hostile input through the real library entry point beside
good data, checks that the good data was processed, and returns what happened to the hostile one.

An :class:`Outcome` is what a user sees: ``raised`` (exception type and message), ``rejected`` (the
rejects manifest's id and reason) or ``accepted`` (the input was used; the message says how). A case
is handled when the observed outcome has the expected kind and subject and its message matches the
expected pattern in full. Decisions this corpus pins down:

- Extra TSV columns are allowed and ignored; a header-only TSV is an empty list, not an error.
- A caption is kept whole however long (1 MB here) and whatever Unicode it holds; the CLIP
  tokenizer truncates it to 77 tokens at extraction.
- The contents of a media file decide how it is decoded, its suffix only which folder scan picks it
  up: an MP4 named .flac is decoded as the MP4 it is, a WAV named .mp4 is a video without a picture.
- A header that claims more frames or samples than the file holds is not believed: clips are cut
  from the samples that decode.
- A TSV field that is exactly one CSV-quoted string is unquoted; any other field is literal, so a
  caption may start with a quote and an unclosed quote is text, not a malformed table.
- Ids, names on disk and dataset names follow one rule (tables.check_id): a plain file name of at
  most 240 UTF-8 bytes with no control or invisible characters; ids equal after NFKC are duplicates.
- Columns a stage wrote are checked when another reads them back (file names, sample bounds, times).
- No output path may be, contain or lie inside an input, the repository or the official weights;
  a folder is replaced only if it holds nothing but what its writer makes.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmaudio.config import ConfigError, PartitionConfig, load_params
from mmaudio.media import (
    MAX_FRAME_PIXELS,
    MAX_RESAMPLE_KERNEL,
    MediaError,
    decode_audio,
    load_video_clip,
    resample_kernel_entries,
)
from mmaudio.media_index import index_video_list, resolve_media
from mmaudio.partition import AUDIO_SUFFIXES, partition_folder
from mmaudio.tables import TableError, read_tsv, write_tsv
from mmaudio.weights import WeightFileError, load_state_dict_strict, load_weight_file
from tests.hostile import generators as gen
from tests.hostile.generators import GoodMedia

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    kind: str  # raised | rejected | accepted
    subject: str  # exception type name, rejected id, or the accepted item
    message: str  # exception message, reject reason, or what was made of the item

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.message}"


@dataclass(frozen=True)
class Case:
    name: str
    category: str  # media | tsv | params | weights | paths | features | tracking
    expected: Outcome  # message: a regular expression that must match the whole observed message
    run: Callable[[Path, GoodMedia], Outcome]  # (a fresh empty folder, the good files) -> observed
    slow: bool = False
    known_bug: str | None = None  # why the library does not handle it yet (the test is a strict xfail)

    def handled(self, observed: Outcome) -> bool:
        e = self.expected
        return (
            observed.kind == e.kind
            and observed.subject == e.subject
            and re.fullmatch(e.message, observed.message, flags=re.DOTALL) is not None
        )

    def describe_expected(self) -> str:
        return f"{self.expected.kind} {self.expected.subject}: /{self.expected.message}/"


CASES: list[Case] = []


def case(name: str, category: str, kind: str, subject: str, message: str, *, slow: bool = False, known_bug: str | None = None):
    def register(fn: Callable[[Path, GoodMedia], Outcome]) -> Callable[[Path, GoodMedia], Outcome]:
        assert all(c.name != name for c in CASES), f"duplicate case name {name}"
        CASES.append(Case(name, category, Outcome(kind, subject, message), fn, slow, known_bug))
        return fn

    return register


def raised(fn: Callable[[], object], *errors: type[BaseException]) -> Outcome:
    """Run ``fn``; an exception of ``errors`` becomes a ``raised`` outcome, a return ``accepted``."""
    try:
        result = fn()
    except errors as e:
        return Outcome("raised", type(e).__name__, str(e))
    return Outcome("accepted", "call", f"returned {type(result).__name__}")


def _q(path: Path) -> str:
    """A pattern matching ``path`` exactly."""
    return re.escape(str(path))


# -- harnesses: hostile item + good items through one entry point -------------------------------------


def partition_beside_good(tmp: Path, good: GoodMedia, name: str, write: Callable[[Path], object]) -> Outcome:
    """partition_folder on a folder holding the good wav and flac and the hostile file ``name``."""
    folder = tmp / "audio"
    gen.copy_into(good.wav, folder, "good_wav.wav")
    gen.copy_into(good.flac, folder, "good_flac.flac")
    write(folder / name)
    res = partition_folder(folder, PartitionConfig())
    good_clips = sorted(c["id"] for c in res.clips if c["name"].startswith("good_"))
    assert good_clips == ["good_flac_0", "good_wav_0"], f"the good files beside {name} gave clips {good_clips}"
    assert res.files_seen == 3, res.files_seen
    stem = Path(name).stem
    for rid, reason in res.rejects:
        if rid in (stem, name):
            return Outcome("rejected", rid, reason)
    clips = [c for c in res.clips if c["name"] == stem]
    if not clips:
        raise AssertionError(f"{name} is neither in the clips nor in the rejects: dropped silently")
    spans = ", ".join(f"{c['start_sample']}-{c['end_sample']}" for c in clips)
    return Outcome("accepted", stem, f"{len(clips)} clip(s): {spans}")


def index_beside_good(tmp: Path, good: GoodMedia, vid: str, write: Callable[[Path], object] | None) -> Outcome:
    """index_video_list on a list of the good mp4 and mkv and the hostile id ``vid``."""
    media = tmp / "video"
    gen.copy_into(good.mp4, media, "good_a.mp4")
    gen.copy_into(good.mkv, media, "good_b.mkv")
    if write is not None:
        write(media)
    ids = ["good_a", vid, "good_b"]
    write_tsv(tmp / "list.tsv", ("id", "label"), [{"id": i, "label": f"label of {i}"} for i in ids])
    res = index_video_list(tmp / "list.tsv", media, min_duration_sec=8.0)
    indexed = [r["id"] for r in res.rows]
    assert [i for i in indexed if i != vid] == ["good_a", "good_b"], f"good rows beside {vid}: {indexed}"
    assert len(res.rows) + len(res.rejects) == len(ids), "a row was dropped silently"
    for rid, reason in res.rejects:
        if rid == vid:
            return Outcome("rejected", rid, reason)
    row = next(r for r in res.rows if r["id"] == vid)
    return Outcome("accepted", vid, f"{row['file']} {row['width']}x{row['height']} {row['duration_sec']} s")


def decode_beside_good(good: GoodMedia, hostile: Path, **kw) -> Outcome:
    """load_video_clip of the hostile file, then of the good mp4 (which must still give every frame)."""
    observed = raised(lambda: load_video_clip(hostile, duration_sec=8.0, **kw), MediaError)
    clip = load_video_clip(good.mp4, duration_sec=8.0, audio_rate=16000)
    assert clip.frames["clip"].shape == (64, 3, 384, 384) and clip.frames["sync"].shape == (200, 3, 224, 224)
    assert clip.audio.shape == (128000,)
    return observed


# -- media: audio folders (partition) ---------------------------------------------------------------------


@case("zero-byte wav", "media", "rejected", "empty", r"file is empty \(0 bytes\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "empty.wav", lambda p: p.write_bytes(b""))


@case("truncated wav (half of the data)", "media", "rejected", "cut", r"shorter than 8\.1 s \(4\.500 s\)")
def _(tmp, good):
    data = gen.wav_bytes(gen.tone(9.0, 16000), 16000)
    return partition_beside_good(tmp, good, "cut.wav", lambda p: p.write_bytes(data[: 44 + (len(data) - 44) // 2]))


@case("wav header claiming 10^9 frames over 20 s of data", "media", "accepted", "liar",
      r"2 clip\(s\): 0-129600, 190400-320000")
def _(tmp, good):
    return partition_beside_good(
        tmp, good, "liar.wav", lambda p: gen.write_wav(p, gen.tone(20.0, 16000), 16000, declared_frames=10**9)
    )


@case("wav header only (no data chunk payload)", "media", "rejected", "hollow", r"audio stream decodes to no samples")
def _(tmp, good):
    return partition_beside_good(tmp, good, "hollow.wav", lambda p: gen.write_wav(p, np.zeros((1, 0), np.float32), 16000))


@case("truncated flac (first 200 bytes)", "media", "rejected", "stub", r"cannot open as media \(End of file\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "stub.flac", lambda p: p.write_bytes(good.flac.read_bytes()[:200]))


@case("truncated flac (half)", "media", "rejected", "half",
      r"audio decoding failed \(Invalid data found when processing input\)")
def _(tmp, good):
    data = good.flac.read_bytes()
    return partition_beside_good(tmp, good, "half.flac", lambda p: p.write_bytes(data[: len(data) // 2]))


@case("mp4 named .flac", "media", "accepted", "disguised", r"1 clip\(s\): 0-129600")
def _(tmp, good):
    return partition_beside_good(tmp, good, "disguised.flac", lambda p: shutil.copy(good.mp4, p))


@case("float wav with a NaN sample", "media", "rejected", "nan", r"audio contains NaN or infinite samples")
def _(tmp, good):
    wave = gen.tone(9.0, 16000)
    wave[0, 1000] = np.nan
    return partition_beside_good(tmp, good, "nan.wav", lambda p: gen.write_wav(p, wave, 16000, float32=True))


@case("float wav with +inf samples", "media", "rejected", "inf", r"audio contains NaN or infinite samples")
def _(tmp, good):
    wave = gen.tone(9.0, 16000)
    wave[0, 5:9] = np.inf
    return partition_beside_good(tmp, good, "inf.wav", lambda p: gen.write_wav(p, wave, 16000, float32=True))


@case("8-channel wav (downmix to mono)", "media", "accepted", "octo", r"1 clip\(s\): 0-129600; mono = channel mean")
def _(tmp, good):
    wave = gen.tone(9.0, 16000, channels=8)  # channel c at (c + 1) / 8 of the tone
    out = partition_beside_good(tmp, good, "octo.wav", lambda p: gen.write_wav(p, wave, 16000))
    track = decode_audio(tmp / "audio" / "octo.wav")
    assert track.samples.shape == (8, 144000), track.samples.shape
    int16 = (np.clip(wave, -1, 1) * 32767).round() / 32768  # what the file holds, as float
    mono = track.mono().numpy()
    np.testing.assert_allclose(mono, int16.mean(axis=0), rtol=0, atol=1e-7)
    assert abs(float(np.abs(mono).max()) - 0.3 * 4.5 / 8) < 1e-3  # mean of (c + 1) / 8 = 4.5 / 8
    return Outcome(out.kind, out.subject, f"{out.message}; mono = channel mean")


@case("wav header claiming 1 Hz", "media", "rejected", "slow", r"sample rate 1 Hz is outside 4000\.\.768000 Hz")
def _(tmp, good):
    return partition_beside_good(tmp, good, "slow.wav", lambda p: gen.write_wav(p, gen.tone(100.0, 1), 1))


@case("wav header claiming 0 Hz", "media", "rejected", "still",
      r"cannot open as media \(Invalid data found when processing input\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "still.wav", lambda p: gen.write_wav(p, gen.tone(1.0, 100), 0))


@case("wav header claiming 2e9 Hz", "media", "rejected", "fast", r"sample rate 2000000000 Hz is outside 4000\.\.768000 Hz")
def _(tmp, good):
    return partition_beside_good(tmp, good, "fast.wav", lambda p: gen.write_wav(p, gen.tone(0.01, 16000), 2_000_000_000))


@case("wav at 44101 Hz (resampling kernel bomb)", "media", "rejected", "odd",
      rf"sample rate 44101 Hz needs a {resample_kernel_entries(44101, 16000)}-entry kernel to resample to 16000 Hz "
      rf"\(limit {MAX_RESAMPLE_KERNEL}\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "odd.wav", lambda p: gen.write_wav(p, gen.tone(9.0, 44101), 44101))


@case("text file named .wav", "media", "rejected", "notes",
      r"cannot open as media \(Invalid data found when processing input\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "notes.wav", lambda p: p.write_text("RIFF? no, a shopping list\n" * 40))


@case("file named '..flac' (stem '.')", "media", "rejected", "..flac",
      r".*/audio/\.\.flac: id '\.' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "..flac", lambda p: shutil.copy(good.flac, p))


@case("partition reject of 'a\\b.wav' carried into extraction", "media", "accepted", "audio_rows",
      r"1 clip\(s\) to extract; carried rejects \['a\\\\b\.wav'\]")
def _(tmp, good):
    from mmaudio.segments import audio_rows
    from mmaudio.config import AudioDatasetConfig
    from mmaudio.partition import CLIP_COLUMNS
    from mmaudio.tables import write_rejects

    folder = tmp / "audio"
    gen.copy_into(good.wav, folder, "good.wav")
    gen.copy_into(good.wav, folder, "a\\b.wav")
    res = partition_folder(folder, PartitionConfig())
    write_tsv(tmp / "clips.tsv", CLIP_COLUMNS, res.clips)
    write_rejects(tmp / "rejects.tsv", res.rejects)
    write_tsv(tmp / "captions.tsv", ("id", "caption"), [{"id": "good", "caption": "a tone"}])
    ds = AudioDatasetConfig(str(folder), str(tmp / "captions.tsv"), str(tmp / "clips.tsv"), str(tmp / "rejects.tsv"))
    observed = raised(lambda: audio_rows(ds), TableError)
    if observed.kind == "raised":
        return observed
    rows = audio_rows(ds)
    return Outcome("accepted", "audio_rows", f"{len(rows.rows)} clip(s) to extract; carried rejects {[r for r, _ in rows.carried]}")


@case("file name with a backslash", "media", "rejected", "a\\b.wav",
      r".*/audio/a\\b\.wav: id 'a\\\\b' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "a\\b.wav", lambda p: shutil.copy(good.wav, p))


@case("named pipe (FIFO) named .wav (reading would block forever)", "media", "rejected", "pipe", r"not a regular file")
def _(tmp, good):
    return partition_beside_good(tmp, good, "pipe.wav", lambda p: os.mkfifo(p))


@case("symlink to /dev/zero named .wav (reading would never end)", "media", "rejected", "zeros", r"not a regular file")
def _(tmp, good):
    return partition_beside_good(tmp, good, "zeros.wav", lambda p: p.symlink_to("/dev/zero"))


@case("dangling symlink named .flac", "media", "rejected", "gone", r"file does not exist")
def _(tmp, good):
    return partition_beside_good(tmp, good, "gone.flac", lambda p: p.symlink_to(tmp / "nowhere.flac"))


# -- media: video lists (index) and decoding (extraction) ------------------------------------------------------


@case("zero-byte mp4", "media", "rejected", "empty", r"file is empty \(0 bytes\)")
def _(tmp, good):
    return index_beside_good(tmp, good, "empty", lambda m: (m / "empty.mp4").write_bytes(b""))


@case("truncated mp4 (first third)", "media", "rejected", "cut",
      r"cannot open as media \(Invalid data found when processing input\)")
def _(tmp, good):
    data = good.mp4.read_bytes()
    return index_beside_good(tmp, good, "cut", lambda m: (m / "cut.mp4").write_bytes(data[: len(data) // 3]))


@case("truncated mkv (half): header passes, decoding finds too few frames", "media", "raised", "MediaTooShortError",
      r".*/cut\.mkv: video too short: \d+ frames at 8 fps \([0-4]\.\d{3} s\), need 64 for 8 s")
def _(tmp, good):
    data = good.mkv.read_bytes()
    index = index_beside_good(tmp, good, "cut", lambda m: (m / "cut.mkv").write_bytes(data[: len(data) // 2]))
    assert index.kind == "accepted", index  # the Matroska header still says 9 s
    return decode_beside_good(good, tmp / "video" / "cut.mkv", audio_rate=16000)


@case("wav named .mp4 in a video list", "media", "rejected", "sound", r"no video stream")
def _(tmp, good):
    return index_beside_good(tmp, good, "sound", lambda m: shutil.copy(good.wav, m / "sound.mp4"))


@case("MP4 with no track (empty container)", "media", "rejected", "void", r"no video stream")
def _(tmp, good):
    return index_beside_good(tmp, good, "void", lambda m: (m / "void.mp4").write_bytes(gen.empty_mp4_bytes()))


@case("data stream only (KLV), named .mkv", "media", "rejected", "klv", r"no video stream")
def _(tmp, good):
    return index_beside_good(tmp, good, "klv", lambda m: gen.write_data_only(m / "klv.mkv"))


@case("real 8192x8192 frame", "media", "rejected", "huge",
      rf"frame size 8192x8192 \(67108864 pixels\) exceeds the limit of {MAX_FRAME_PIXELS} pixels")
def _(tmp, good):
    out = index_beside_good(tmp, good, "huge", lambda m: gen.write_big_frame(m / "huge.mkv"))
    decoded = decode_beside_good(good, tmp / "video" / "huge.mkv")
    assert decoded.subject == "MediaLimitError" and out.message in decoded.message, decoded
    return out


@case("JPEG and Matroska headers claiming 30000x30000", "media", "raised", "MediaUnreadableError",
      r".*/giant\.mkv: decoding failed \(Invalid data found when processing input\)")
def _(tmp, good):
    path = gen.claim_frame_size(gen.write_mjpeg_mkv(tmp / "giant.mkv"), 30000, 30000)
    return decode_beside_good(good, path)


@case("raw H.264 named .mp4 (no timestamps)", "media", "raised", "MediaUnreadableError",
      r".*/bare\.mp4: decoding failed \(frame without timestamp\)")
def _(tmp, good):
    raw = gen.write_raw_h264(tmp / "bare.h264")
    return decode_beside_good(good, raw.rename(tmp / "bare.mp4"))


@case("one-frame video", "media", "raised", "MediaTooShortError",
      r".*/blink\.mp4: video too short: 1 frames at 8 fps \(0\.100 s\), need 64 for 8 s")
def _(tmp, good):
    from tests.test_media import _write_video_only

    _write_video_only(tmp / "blink.mp4", seconds=0.1, fps=10)
    return decode_beside_good(good, tmp / "blink.mp4")


# -- TSVs ---------------------------------------------------------------------------------------------------


def tsv_beside_good(tmp: Path, good: GoodMedia, content: bytes | str) -> Outcome:
    """index_video_list of a hostile list TSV, then of a good one over the same media."""
    media = tmp / "video"
    gen.copy_into(good.mp4, media, "good_a.mp4")
    hostile = tmp / "list.tsv"
    hostile.write_bytes(content if isinstance(content, bytes) else content.encode())
    observed = raised(lambda: index_video_list(hostile, media, min_duration_sec=8.0), TableError)
    (tmp / "ok.tsv").write_text("id\tlabel\ngood_a\tfine\n")
    assert [r["id"] for r in index_video_list(tmp / "ok.tsv", media, 8.0).rows] == ["good_a"]
    if observed.kind == "accepted":
        res = index_video_list(hostile, media, min_duration_sec=8.0)
        return Outcome("accepted", "list.tsv", f"{len(res.rows)} rows, {len(res.rejects)} rejects")
    return observed


@case("TSV missing the label column", "tsv", "raised", "TableError",
      r".*/list\.tsv: missing required column\(s\) \['label'\]; header is \['id', 'name'\]")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tname\ngood_a\tx\n")


@case("TSV with extra columns (ignored)", "tsv", "accepted", "list.tsv", r"1 rows, 0 rejects")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "source\tid\tlabel\tyear\nyt\tgood_a\tdog\t2019\n")


@case("empty TSV", "tsv", "raised", "TableError", r".*/list\.tsv: empty file, expected a header with columns \['id', 'label'\]")
def _(tmp, good):
    return tsv_beside_good(tmp, good, b"")


@case("TSV with a header only", "tsv", "accepted", "list.tsv", r"0 rows, 0 rejects")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\n")


@case("TSV with a duplicate id", "tsv", "raised", "TableError", r".*/list\.tsv:4: duplicate id 'good_a' \(first on line 2\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\ngood_a\tone\nb\ttwo\ngood_a\tthree\n")


@case("TSV id '../../etc/passwd'", "tsv", "raised", "TableError",
      r".*/list\.tsv:3: id '\.\./\.\./etc/passwd' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\ngood_a\tok\n../../etc/passwd\tsecrets\n")


@case("TSV id '..'", "tsv", "raised", "TableError", r".*/list\.tsv:2: id '\.\.' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\n..\tparent\n")


@case("TSV id with a backslash", "tsv", "raised", "TableError",
      r".*/list\.tsv:2: id 'a\\\\b' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\na\\b\tx\n")


@case("TSV that is not UTF-8 (latin-1 caption)", "tsv", "raised", "TableError",
      r".*/list\.tsv:3: not valid UTF-8 \(byte 0xe9 at offset 26\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, b"id\tlabel\ngood_a\tfine\nb\tcaf\xe9\n")


@case("TSV with a NUL byte in a label (kept: a label is free text)", "tsv", "accepted", "list.tsv", r"1 rows, 0 rejects")
def _(tmp, good):
    return tsv_beside_good(tmp, good, b"id\tlabel\ngood_a\tnul\x00here\n")


@case("TSV with a NUL byte in an id", "tsv", "raised", "TableError",
      r".*/list\.tsv:2: id 'good\\x00a' contains control or invisible characters \(U\+0000\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, b"id\tlabel\ngood\x00a\tx\n")


@case("TSV with an unterminated quote (a label starting with a quote, kept literally)", "tsv", "accepted", "list.tsv",
      r"1 rows, 0 rejects; label '\"never closed'")
def _(tmp, good):
    out = tsv_beside_good(tmp, good, 'id\tlabel\ngood_a\t"never closed\n')
    return Outcome(out.kind, out.subject, f"{out.message}; label {read_tsv(tmp / 'list.tsv', ('id', 'label'))[0]['label']!r}")


@case("1 MB caption (kept whole)", "tsv", "accepted", "long", r"caption of 1000000 characters kept whole, also after a rewrite")
def _(tmp, good):
    caption = ("a dog barks twice while rain falls on a tin roof " * 20409)[:1_000_000]
    write_tsv(tmp / "captions.tsv", ("id", "caption"), [{"id": "good", "caption": "fine"}, {"id": "long", "caption": caption}])
    rows = read_tsv(tmp / "captions.tsv", ("id", "caption"))
    assert rows[0] == {"id": "good", "caption": "fine"}
    write_tsv(tmp / "again.tsv", ("id", "caption"), rows)
    again = read_tsv(tmp / "again.tsv", ("id", "caption"))
    kept = rows[1]["caption"] == caption and again[1]["caption"] == caption
    return Outcome("accepted", rows[1]["id"], f"caption of {len(rows[1]['caption'])} characters kept whole" + (", also after a rewrite" if kept else ", CHANGED"))


@case("captions with U+2028, NEL, form feed, CR LF and a newline", "tsv", "accepted", "captions.tsv",
      r"6 captions round-trip exactly")
def _(tmp, good):
    captions = ["line\u2028separator", "next\x85line", "form\x0cfeed", "dos\r\nending", "two\nlines", "plain"]
    rows = [{"id": f"c{i}", "caption": c} for i, c in enumerate(captions)]
    write_tsv(tmp / "captions.tsv", ("id", "caption"), rows)
    back = read_tsv(tmp / "captions.tsv", ("id", "caption"))
    same = sum(a == b for a, b in zip(rows, back))
    return Outcome("accepted", "captions.tsv", f"{same} captions round-trip exactly" if len(back) == len(rows) else f"{len(back)} rows")


@case("clip TSV name '../outside' reaching resolve_media", "tsv", "raised", "TableError",
      r".*/audio: id '\.\./outside' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    folder = tmp / "audio"
    gen.copy_into(good.flac, tmp, "outside.flac")  # a real file one level up
    gen.copy_into(good.flac, folder)
    assert resolve_media(folder, "good", AUDIO_SUFFIXES) == folder / "good.flac"  # the good file beside
    return raised(lambda: resolve_media(folder, "../outside", AUDIO_SUFFIXES), TableError, FileNotFoundError, ValueError)


# -- names and generated columns (issue 16: validated as a class, on disk and on read-back) ---------------


@case("caption starting with a quote ('\"Hi\" she said'), hand-written and rewritten", "tsv", "accepted", "captions.tsv",
      r"'\"Hi\" she said' and '\"quoted\"' read back as written")
def _(tmp, good):
    (tmp / "captions.tsv").write_text('id\tcaption\ngood\tfine\na\t"Hi" she said\n')
    rows = read_tsv(tmp / "captions.tsv", ("id", "caption"))
    assert rows[0] == {"id": "good", "caption": "fine"}
    rows.append({"id": "b", "caption": '"quoted"'})
    write_tsv(tmp / "again.tsv", ("id", "caption"), rows)
    back = read_tsv(tmp / "again.tsv", ("id", "caption"))
    same = back == rows
    return Outcome("accepted", "captions.tsv", f"{rows[1]['caption']!r} and {back[2]['caption']!r} read back " + ("as written" if same else "CHANGED"))


@case("TSV ids equal after Unicode normalisation (composed vs decomposed e-acute)", "tsv", "raised", "TableError",
      r".*/list\.tsv:3: id 'cafe\u0301' looks the same as 'caf\xe9' on line 2 \(equal after Unicode NFKC normalisation\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\ncaf\u00e9\tone\ncafe\u0301\ttwo\n")


@case("TSV id of 300 bytes (no file system takes the name)", "tsv", "raised", "TableError",
      r".*/list\.tsv:2: id of 300 bytes is longer than 240 bytes \(starts 'xxxx.*'\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\n" + "x" * 300 + "\tlong\n")


@case("TSV id with a right-to-left override (U+202E)", "tsv", "raised", "TableError",
      r".*/list\.tsv:2: id 'evil\\u202egpj\.exe' contains control or invisible characters \(U\+202E\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\nevil\u202egpj.exe\tx\n")


@case("TSV id with a zero-width space", "tsv", "raised", "TableError",
      r".*/list\.tsv:2: id 'good\\u200b_a' contains control or invisible characters \(U\+200B\)")
def _(tmp, good):
    return tsv_beside_good(tmp, good, "id\tlabel\ngood\u200b_a\tx\n")


def _video_ds(tmp: Path, good: GoodMedia, index_rows: list[dict]) -> "object":
    from mmaudio.config import VideoDatasetConfig
    from mmaudio.media_index import INDEX_COLUMNS

    media = tmp / "video"
    gen.copy_into(good.mp4, media, "good_a.mp4")
    full = [{c: r.get(c, "0") for c in INDEX_COLUMNS} for r in index_rows]
    write_tsv(tmp / "index.tsv", INDEX_COLUMNS, full)
    write_tsv(tmp / "rejects.tsv", ("id", "reason"), [])
    return VideoDatasetConfig(str(media), str(tmp / "list.tsv"), str(tmp / "index.tsv"), str(tmp / "rejects.tsv"))


@case("index TSV whose file column is an absolute path (read back unchecked before)", "tsv", "raised", "TableError",
      r".*/index\.tsv:3: id 'b': column 'file': file name '/.*/outside\.mp4' is not a plain file name \(path separator or '\.\.'\)")
def _(tmp, good):
    from mmaudio.segments import video_rows

    outside = gen.copy_into(good.mp4, tmp / "elsewhere", "outside.mp4")
    ds = _video_ds(tmp, good, [{"id": "good_a", "label": "ok", "file": "good_a.mp4"}, {"id": "b", "label": "x", "file": str(outside)}])
    assert [r.id for r in video_rows(_video_ds(tmp / "ok", good, [{"id": "good_a", "label": "ok", "file": "good_a.mp4"}])).rows] == ["good_a"]
    return raised(lambda: video_rows(ds), TableError)


@case("index TSV whose file column names another id's file", "tsv", "raised", "TableError",
      r".*/index\.tsv: id 'b': file 'good_a\.mp4' is not 'b' with one of \.mp4, \.mkv, \.webm, \.mov, \.avi")
def _(tmp, good):
    from mmaudio.segments import video_rows

    ds = _video_ds(tmp, good, [{"id": "b", "label": "x", "file": "good_a.mp4"}])
    return raised(lambda: video_rows(ds), TableError)


@case("clip TSV with a negative start_sample", "tsv", "raised", "TableError",
      r".*/clips\.tsv:3: id 'good_1': column 'start_sample': '-5' is not a non-negative integer")
def _(tmp, good):
    from mmaudio.segments import audio_rows
    from mmaudio.config import AudioDatasetConfig
    from mmaudio.partition import CLIP_COLUMNS

    gen.copy_into(good.wav, tmp / "audio", "good.wav")
    write_tsv(tmp / "captions.tsv", ("id", "caption"), [{"id": "good", "caption": "a tone"}])
    write_tsv(tmp / "rejects.tsv", ("id", "reason"), [])
    rows = [{"id": "good_0", "name": "good", "start_sample": 0, "end_sample": 129600}]
    write_tsv(tmp / "ok.tsv", CLIP_COLUMNS, rows)
    ok = AudioDatasetConfig(str(tmp / "audio"), str(tmp / "captions.tsv"), str(tmp / "ok.tsv"), str(tmp / "rejects.tsv"))
    assert [r.id for r in audio_rows(ok).rows] == ["good_0"]
    write_tsv(tmp / "clips.tsv", CLIP_COLUMNS, rows + [{"id": "good_1", "name": "good", "start_sample": -5, "end_sample": 100}])
    ds = AudioDatasetConfig(str(tmp / "audio"), str(tmp / "captions.tsv"), str(tmp / "clips.tsv"), str(tmp / "rejects.tsv"))
    return raised(lambda: audio_rows(ds), TableError)


@case("events TSV with time_sec 'nan'", "tsv", "raised", "TableError",
      r".*/events\.tsv:3: id 'b': column 'time_sec': 'nan' is not a finite number")
def _(tmp, good):
    from mmaudio.evaluation.proxies import read_event_times

    write_tsv(tmp / "ok.tsv", ("id", "kind", "time_sec"), [{"id": "a", "kind": "impact", "time_sec": "1.5"}])
    assert read_event_times(tmp / "ok.tsv")["a"].tolist() == [1.5]
    write_tsv(tmp / "events.tsv", ("id", "kind", "time_sec"),
              [{"id": "a", "kind": "impact", "time_sec": "1.5"}, {"id": "b", "kind": "impact", "time_sec": "nan"}])
    return raised(lambda: read_event_times(tmp / "events.tsv"), TableError)


@case("file name with an escape character on disk", "media", "rejected", "a\x1bb.wav",
      r".*/audio/a\x1bb\.wav: id 'a\\x1bb' contains control or invisible characters \(U\+001B\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "a\x1bb.wav", lambda p: shutil.copy(good.wav, p))


@case("file name of 250 bytes on disk", "media", "rejected", "y" * 246 + ".wav",
      r".*/audio/y+\.wav: id of 246 bytes is longer than 240 bytes \(starts 'y+'\)")
def _(tmp, good):
    return partition_beside_good(tmp, good, "y" * 246 + ".wav", lambda p: shutil.copy(good.wav, p))


@case("two files whose names differ only in Unicode normalisation", "media", "rejected", "caf\u00e9.wav",
      r"duplicate id 'caf\xe9': cafe\u0301\.wav has a stem that looks the same \(Unicode NFKC\)")
def _(tmp, good):
    folder = tmp / "audio"
    gen.copy_into(good.wav, folder, "good_wav.wav")
    gen.copy_into(good.wav, folder, "caf\u00e9.wav")
    gen.copy_into(good.flac, folder, "cafe\u0301.flac".replace(".flac", ".wav"))
    res = partition_folder(folder, PartitionConfig())
    assert sorted(c["id"] for c in res.clips) == ["cafe\u0301_0", "good_wav_0"], [c["id"] for c in res.clips]
    (rid, reason), = res.rejects
    return Outcome("rejected", rid, reason)


# -- output paths and shared feature sets (issue 16 items 1-3) -------------------------------------------------


def paths_beside_good(tmp: Path, writes: dict[str, str]) -> Outcome:
    """The stages' output check (shipped params.yaml, ``writes`` set as overrides); the shipped
    outputs must pass. Nothing is written: the check runs before any work."""
    from mmaudio.examples import example_products
    from mmaudio.paths import OutputPathError, check_stage_paths

    shipped = load_params(root=REPO)
    assert check_stage_paths(shipped, {"examples.out_dir": shipped.examples.out_dir}, root=REPO, products=example_products(shipped))
    assert check_stage_paths(shipped, {"extract.out_dir": f"{shipped.extract.out_dir}/examples_audio"}, root=REPO)
    params = load_params([f"{k}={v}" for k, v in writes.items() if k == "examples.out_dir"], root=REPO)
    products = example_products(params) if "examples.out_dir" in writes else None
    return raised(lambda: check_stage_paths(params, writes, root=REPO, products=products), OutputPathError)


_OP = "raised", "OutputPathError"


@case("examples.out_dir= (empty: the current folder)", "paths", *_OP, r"key 'examples\.out_dir' is '': an output must be .*")
def _(tmp, good):
    return paths_beside_good(tmp, {"examples.out_dir": ""})


@case("examples.out_dir=. ", "paths", *_OP, r"key 'examples\.out_dir' is '\.': an output must be .*")
def _(tmp, good):
    return paths_beside_good(tmp, {"examples.out_dir": "."})


@case("train.out_dir=.. (a parent of the repository)", "paths", *_OP,
      r"key 'train\.out_dir' = '\.\.' is the repository root, the current folder or a parent of them \(.*\)")
def _(tmp, good):
    return paths_beside_good(tmp, {"train.out_dir": ".."})


@case("examples.out_dir=data (holds the datasets' media)", "paths", *_OP,
      r"key 'examples\.out_dir' = 'data' contains input 'audio_datasets\.examples_audio\.media_dir' \(.*\); refusing to write over it")
def _(tmp, good):
    return paths_beside_good(tmp, {"examples.out_dir": "data"})


@case("extract.out_dir/<name> equal to the dataset's media folder", "paths", *_OP,
      r"key 'extract\.out_dir' = 'data/examples/audio' is input 'audio_datasets\.examples_audio\.media_dir' \(.*\); refusing to write over it")
def _(tmp, good):
    return paths_beside_good(tmp, {"extract.out_dir": "data/examples/audio"})


@case("tiny_weights.out_dir=ext_weights (the official files)", "paths", *_OP,
      r"key 'tiny_weights\.out_dir' = 'ext_weights' is the official weights folder \(.*\); refusing to write over it")
def _(tmp, good):
    return paths_beside_good(tmp, {"tiny_weights.out_dir": "ext_weights"})


@case("evaluate.out_dir inside .git", "paths", *_OP, r"key 'evaluate\.out_dir' = '\.git/x' lies inside .*/\.git")
def _(tmp, good):
    return paths_beside_good(tmp, {"evaluate.out_dir": ".git/x"})


@case("index_tsv equal to the list TSV it reads", "paths", *_OP,
      r"key 'video_datasets\.examples_train\.index_tsv' = 'data/examples/video_train\.tsv' is input "
      r"'video_datasets\.examples_train\.list_tsv' \(.*\); refusing to write over it")
def _(tmp, good):
    return paths_beside_good(tmp, {"video_datasets.examples_train.index_tsv": "data/examples/video_train.tsv"})


@case("clips_tsv equal to rejects_tsv", "paths", *_OP,
      r"keys 'a\.clips_tsv' and 'a\.rejects_tsv' overlap \(.*\); each output needs its own path")
def _(tmp, good):
    return paths_beside_good(tmp, {"a.clips_tsv": "data/clips/x.tsv", "a.rejects_tsv": "data/clips/x.tsv"})


@case("generate_examples onto a folder holding other files", "paths", *_OP,
      r"example set '.*/mine': .*/mine holds entries this stage does not write \(thesis\.tex\); refusing to replace it\. .*")
def _(tmp, good):
    from mmaudio.examples import generate_examples
    from mmaudio.paths import OutputPathError

    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("\\section{}")
    out = raised(lambda: generate_examples(tmp / "mine"), OutputPathError)
    assert (tmp / "mine" / "thesis.tex").is_file()
    return out


def _feature_set(tmp: Path) -> Path:
    from mmaudio.features import write_feature_set

    shapes = {"mean": (250, 20), "std": (250, 20), "text_features": (77, 1024)}
    return write_feature_set(tmp / "fs", mode="16k", kind="audio", ids=["a"], texts=["x"],
                             tensors={k: torch.zeros(1, *s) for k, s in shapes.items()})


@case("feature set with a pickled NonTensorData entry running os.system", "features", "raised", "FeatureSetError",
      r".*/fs: cannot open the memmap in td/ \(unexpected entries \['other/'\]: .*\); refused without loading it; marker file not created")
def _(tmp, good):
    from tensordict import NonTensorData, TensorDict

    from mmaudio.features import FeatureSet, FeatureSetError

    out = _feature_set(tmp)
    assert FeatureSet.open(out).ids == ["a"]
    marker = tmp / "PWNED"
    td = TensorDict.load_memmap(out / "td")
    entries = {k: td[k].clone() for k in td.keys()} | {"other": NonTensorData(gen.ShellOnUnpickle(marker), batch_size=[1])}
    shutil.rmtree(out / "td")
    TensorDict(entries, batch_size=[1]).memmap_(prefix=out / "td")
    obs = raised(lambda: FeatureSet.open(out), FeatureSetError)
    return Outcome(obs.kind, obs.subject, obs.message + ("; marker file CREATED" if marker.exists() else "; marker file not created"))


@case("feature set whose meta.json names a class to import", "features", "raised", "FeatureSetError",
      r".*/fs: cannot open the memmap in td/ \(meta\.json names class 'os:system', not a plain TensorDict\); refused without loading it")
def _(tmp, good):
    import json

    from mmaudio.features import FeatureSet, FeatureSetError

    out = _feature_set(tmp)
    meta = json.loads((out / "td" / "meta.json").read_text())
    (out / "td" / "meta.json").write_text(json.dumps({**meta, "_class": "os:system"}))
    return raised(lambda: FeatureSet.open(out), FeatureSetError)


@case("feature set memmap truncated to half (reading would SIGBUS)", "features", "raised", "FeatureSetError",
      r".*/fs: cannot open the memmap in td/ \(std\.memmap holds 10000 bytes, its shape \[1, 250, 20\] and dtype need 20000\); refused without loading it")
def _(tmp, good):
    from mmaudio.features import FeatureSet, FeatureSetError

    out = _feature_set(tmp)
    os.truncate(out / "td" / "std.memmap", 10000)
    return raised(lambda: FeatureSet.open(out), FeatureSetError)


# -- params -----------------------------------------------------------------------------------------------


def params_beside_good(tmp: Path, overrides: list[str], text: bytes | None = None) -> Outcome:
    """load_params with ``overrides`` (or a hostile params.yaml ``text``); the shipped file must still load."""
    good_root, bad_root = tmp / "good", tmp / "bad"
    good_root.mkdir()
    bad_root.mkdir()
    shutil.copy(REPO / "params.yaml", good_root / "params.yaml")
    if text is None:
        shutil.copy(REPO / "params.yaml", bad_root / "params.yaml")
    else:
        (bad_root / "params.yaml").write_bytes(text)
    observed = raised(lambda: load_params(overrides, root=bad_root), ConfigError)
    assert load_params(root=good_root).partition.max_segments == 5
    return observed


def _shipped_params_with(old: str, new: str) -> bytes:
    text = (REPO / "params.yaml").read_text()
    assert text.count(old) == 1, old
    return text.replace(old, new).encode()


_P = r".*/bad/params\.yaml: "


@case("params: unknown key override", "params", "raised", "ConfigError", _P + r"key 'train\.lr' is not a known key")
def _(tmp, good):
    return params_beside_good(tmp, ["train.lr=1e-3"])


@case("params: unknown key added in the file", "params", "raised", "ConfigError",
      _P + r"key 'partition\.max_segs' is not a known key")
def _(tmp, good):
    return params_beside_good(tmp, [], _shipped_params_with("  max_segments: 5\n", "  max_segments: 5\n  max_segs: 4\n"))


@case("params: wrong type (batch_size=eight)", "params", "raised", "ConfigError",
      _P + r"key 'extract\.batch_size': Value 'eight' of type 'str' could not be converted to Integer")
def _(tmp, good):
    return params_beside_good(tmp, ["extract.batch_size=eight"])


@case("params: negative extract.batch_size", "params", "raised", "ConfigError", _P + r"key 'extract\.batch_size' must be >= 1, got -4")
def _(tmp, good):
    return params_beside_good(tmp, ["extract.batch_size=-4"])


@case("params: negative partition.max_segments", "params", "raised", "ConfigError",
      _P + r"key 'partition\.max_segments' must be >= 1, got -1")
def _(tmp, good):
    return params_beside_good(tmp, ["partition.max_segments=-1"])


@case("params: global batch not divisible by the world size", "params", "raised", "ConfigError",
      _P + r"key 'train\.global_batch_size' \(10\) must be divisible by 'train\.nproc_per_node' \(4\)")
def _(tmp, good):
    return params_beside_good(tmp, ["train.global_batch_size=10", "train.nproc_per_node=4"])


@case("params: learning rate nan", "params", "raised", "ConfigError", _P + r"key 'train\.learning_rate' must be a finite number, got nan")
def _(tmp, good):
    return params_beside_good(tmp, ["train.learning_rate=nan"])


@case("params: segment length inf", "params", "raised", "ConfigError", _P + r"key 'partition\.segment_sec' must be a finite number, got inf")
def _(tmp, good):
    return params_beside_good(tmp, ["partition.segment_sec=inf"])


@case("params.yaml with a !!python/object tag running a command", "params", "raised", "ConfigError",
      _P + r"not valid YAML: could not determine a constructor for the tag "
      r"'tag:yaml\.org,2002:python/object/apply:os\.system' \(line \d+, column \d+\); marker file not created")
def _(tmp, good):
    marker = tmp / "PWNED"
    text = _shipped_params_with("\nprofile: tiny", f"\nprofile: !!python/object/apply:os.system ['touch {marker}']")
    out = params_beside_good(tmp, [], text)
    return Outcome(out.kind, out.subject, out.message + ("; marker file CREATED" if marker.exists() else "; marker file not created"))


@case("params.yaml with a YAML syntax error", "params", "raised", "ConfigError",
      _P + r"not valid YAML: expected ',' or '\]', but got '<stream end>' \(line 3, column 1\)")
def _(tmp, good):
    return params_beside_good(tmp, [], b"profile: tiny\npartition: [1, 2\n")


@case("params.yaml that is not UTF-8", "params", "raised", "ConfigError", _P + r"not valid UTF-8 \(byte offset 12\)")
def _(tmp, good):
    return params_beside_good(tmp, [], b"profile: caf\xe9\n")


@case("params.yaml with a self-referencing alias", "params", "raised", "ConfigError", _P + r"a YAML alias refers to itself")
def _(tmp, good):
    return params_beside_good(tmp, [], b"profile: tiny\nloop: &a [*a]\n")


# -- weight files -------------------------------------------------------------------------------------------


def weights_beside_good(good: GoodMedia, load: Callable[[], object]) -> Outcome:
    """Load a hostile weight file; the good one must still load strictly into its module."""
    observed = raised(load, WeightFileError, FileNotFoundError)
    module = gen.good_module()
    torch.nn.init.zeros_(module.weight)
    load_state_dict_strict(module, load_weight_file(good.weights), source=good.weights)
    assert torch.equal(module.weight, gen.good_module().weight)
    return observed


def _strict(path: Path) -> None:
    load_state_dict_strict(gen.good_module(), load_weight_file(path), source=path)


@case("weights: zero-byte file", "weights", "raised", "WeightFileError", r"weight file is empty \(0 bytes\): .*/w\.pth")
def _(tmp, good):
    (tmp / "w.pth").write_bytes(b"")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


@case("weights: truncated file", "weights", "raised", "WeightFileError", r"weight file .*/w\.pth is corrupt or truncated: .+")
def _(tmp, good):
    data = good.weights.read_bytes()
    (tmp / "w.pth").write_bytes(data[: len(data) // 2])
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


@case("weights: wrong keys", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth does not fit Linear: 1 missing keys \(e\.g\. \['bias'\]\); "
      r"1 unexpected keys \(e\.g\. \['proj\.bias'\]\)")
def _(tmp, good):
    torch.save({"weight": torch.zeros(3, 4), "proj.bias": torch.zeros(3)}, tmp / "w.pth")
    return weights_beside_good(good, lambda: _strict(tmp / "w.pth"))


@case("weights: wrong shapes", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth does not fit Linear: 1 shape mismatches \(e\.g\. \['weight: file \(3, 5\) vs model \(3, 4\)'\]\)")
def _(tmp, good):
    torch.save({"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, tmp / "w.pth")
    return weights_beside_good(good, lambda: _strict(tmp / "w.pth"))


_REFUSED = r"weight file .*/w\.pth holds objects that are not plain tensors/containers and was refused \(loading it could run code\): .+"


@case("weights: pickle payload running os.system (torch.save zip)", "weights", "raised", "WeightFileError",
      _REFUSED + r"; marker file not created")
def _(tmp, good):
    marker = tmp / "PWNED"
    gen.write_pickle_payload(tmp / "w.pth", marker)
    out = weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))
    return Outcome(out.kind, out.subject, out.message + ("; marker file CREATED" if marker.exists() else "; marker file not created"))


@case("weights: pickle payload running os.system (bare pickle)", "weights", "raised", "WeightFileError",
      _REFUSED + r"; marker file not created")
def _(tmp, good):
    marker = tmp / "PWNED"
    gen.write_pickle_payload(tmp / "w.pth", marker, legacy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch notes the pickle protocol before refusing
        out = weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))
    return Outcome(out.kind, out.subject, out.message + ("; marker file CREATED" if marker.exists() else "; marker file not created"))


@case("weights: tensor declaring 2^31-1 elements over 16 bytes", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth is corrupt or truncated: Trying to resize storage that is not resizable")
def _(tmp, good):
    gen.write_huge_declared_tensor(tmp / "w.pth")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


@case("weights: meta tensors (shapes without data)", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth: entries hold no data \(meta tensors\): \['weight', 'bias'\]")
def _(tmp, good):
    torch.save(gen.good_module().to("meta").state_dict(), tmp / "w.pth")
    return weights_beside_good(good, lambda: _strict(tmp / "w.pth"))


@case("weights: a bare tensor instead of a dict", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth does not hold a state dict \(found Tensor\)")
def _(tmp, good):
    torch.save(torch.zeros(3), tmp / "w.pth")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


@case("weights: non-tensor entries", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth: entries are not tensors: \['step', 'note'\]")
def _(tmp, good):
    torch.save({"weight": torch.zeros(3, 4), "step": 7, "note": "hi"}, tmp / "w.pth")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


@case("weights: missing sub-key, keys of mixed types", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth has no entry 'generator' \(has: \['1', 'model'\]\)")
def _(tmp, good):
    torch.save({"model": {}, 1: torch.zeros(1)}, tmp / "w.pth")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth", subkey="generator"))


@case("weights: a folder where the file should be", "weights", "raised", "FileNotFoundError", r"weight file not found: .*/w\.pth")
def _(tmp, good):
    (tmp / "w.pth").mkdir()
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


# -- issue 16, second half: value ranges, YAML structure, non-finite weights, tracking records ---------


@case("params: negative train.gamma", "params", "raised", "ConfigError", _P + r"key 'train\.gamma' must be in \(0, 1\], got -0\.5")
def _(tmp, good):
    return params_beside_good(tmp, ["train.gamma=-0.5"])


@case("params: negative train.weight_decay", "params", "raised", "ConfigError",
      _P + r"key 'train\.weight_decay' must be in \[0, 1\], got -0\.01")
def _(tmp, good):
    return params_beside_good(tmp, ["train.weight_decay=-0.01"])


@case("params: train.seed of 2**70", "params", "raised", "ConfigError",
      _P + r"key 'train\.seed' must be in \[0, 2\*\*32 - 1\], got 1180591620717411303424")
def _(tmp, good):
    return params_beside_good(tmp, [f"train.seed={2**70}"])


@case("params: zero val_interval", "params", "raised", "ConfigError", _P + r"key 'train\.val_interval' must be >= 1, got 0")
def _(tmp, good):
    return params_beside_good(tmp, ["train.val_interval=0"])


@case("params: negative evaluate.cfg_strength", "params", "raised", "ConfigError",
      _P + r"key 'evaluate\.cfg_strength' must be in \[0, inf\), got -4\.5")
def _(tmp, good):
    return params_beside_good(tmp, ["evaluate.cfg_strength=-4.5"])


@case("params: password in tracking.uri", "params", "raised", "ConfigError",
      _P + r"key 'tracking\.uri' \(http://alice:\*\*\*@mlflow\.example:5000\) carries credentials; .*MLFLOW_TRACKING_URI")
def _(tmp, good):
    return params_beside_good(tmp, ["tracking.uri=http://alice:s3cret@mlflow.example:5000"])


@case("params.yaml alias bomb (10**9 values from 500 bytes)", "params", "raised", "ConfigError",
      _P + r"its YAML aliases expand to 1234567911 values \(at most 100000 are read\); refused before expanding them")
def _(tmp, good):
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return params_beside_good(tmp, [], ("profile: tiny\n" + "\n".join(lines) + "\n").encode())


@case("params.yaml nested 100000 levels deep", "params", "raised", "ConfigError",
      _P + r"its YAML nests deeper than 64 levels; refused")
def _(tmp, good):
    return params_beside_good(tmp, [], b"profile: tiny\nx: " + b"[" * 100_000 + b"]" * 100_000 + b"\n")


@case("weights: a NaN entry", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth: entries hold NaN or inf values: \['weight'\]")
def _(tmp, good):
    w = torch.zeros(3, 4)
    w[1, 2] = float("nan")
    torch.save({"weight": w, "bias": torch.zeros(3)}, tmp / "w.pth")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


@case("weights: an inf entry", "weights", "raised", "WeightFileError",
      r"weight file .*/w\.pth: entries hold NaN or inf values: \['bias'\]")
def _(tmp, good):
    torch.save({"weight": torch.zeros(3, 4), "bias": torch.tensor([0.0, float("-inf"), 0.0])}, tmp / "w.pth")
    return weights_beside_good(good, lambda: load_weight_file(tmp / "w.pth"))


def _spool(tmp: Path, artifact: dict) -> Path:
    import json

    spool = tmp / "mlflow_spool" / "shared.jsonl"
    spool.parent.mkdir(parents=True)
    spool.with_suffix(".files").mkdir()
    records = [{"op": "header", "uri": "sqlite:///unused.db", "stage": "x", "run_id": None},
               {"op": "start", "experiment": "hostile", "run_name": "x", "artifact_location": None,
                "resume_run_id": None, "time_ms": 0}, {"op": "artifact", "name": "f", **artifact}]
    spool.write_text("".join(json.dumps(r) + "\n" for r in records))
    return spool


def _replay_beside_good(tmp: Path, spool: Path) -> Outcome:
    """Replay a hostile spool into a fresh store; the store must stay empty, and a good spool beside it replays."""
    import mlflow

    from mmaudio.tracking import SpoolError, replay_spool

    store = f"sqlite:///{tmp / 'store.db'}"
    observed = raised(lambda: replay_spool(spool, uri=store), SpoolError)
    assert mlflow.MlflowClient(tracking_uri=store).get_experiment_by_name("hostile") is None, "records were sent"
    good_dir = tmp / "good"
    good_dir.mkdir()
    ok = _spool(good_dir, {"path": "000000/a.txt", "artifact_path": "notes", "spooled": True})
    (ok.with_suffix(".files") / "000000").mkdir()
    (ok.with_suffix(".files") / "000000" / "a.txt").write_text("a\n")
    run_id = replay_spool(ok, uri=store)
    assert [a.path for a in mlflow.MlflowClient(tracking_uri=store).list_artifacts(run_id, "notes")] == ["notes/a.txt"]
    return observed


@case("spool: artifact path with ../ out of the spool", "tracking", "raised", "SpoolError",
      r"artifact f: path '\.\./\.\./\.\./\.\./\.\./\.\./etc/passwd' leaves the spool folder .*/shared\.files; refused")
def _(tmp, good):
    return _replay_beside_good(tmp, _spool(tmp, {"path": "../../../../../../etc/passwd", "artifact_path": None, "spooled": True}))


@case("spool: artifact record naming an absolute local file", "tracking", "raised", "SpoolError",
      r".*/shared\.jsonl: record 2 \(artifact f\) names a file outside the spool; refused")
def _(tmp, good):
    return _replay_beside_good(tmp, _spool(tmp, {"path": "/etc/passwd", "artifact_path": None}))


@case("run-id file of another training run", "tracking", "raised", "StaleRunIdError",
      r".*/mlflow_run_id\.txt: run 0{32} made a weights\.pth with SHA-256 [0-9a-f]{16}\.\.\., but .*/weights\.pth has "
      r"[0-9a-f]{16}\.\.\.: the run-id file is stale or from another run; rerun the train stage, or delete .* to log "
      r"into a new run")
def _(tmp, good):
    from mmaudio.tracking import StaleRunIdError, run_id_for_weights, write_run_id_file

    (tmp / "weights.pth").write_bytes(b"old weights")
    write_run_id_file(tmp / "mlflow_run_id.txt", "0" * 32, tmp / "weights.pth")
    (tmp / "good.pth").write_bytes(b"good weights")
    write_run_id_file(tmp / "good_run_id.txt", "1" * 32, tmp / "good.pth")
    (tmp / "weights.pth").write_bytes(b"retrained weights")
    observed = raised(lambda: run_id_for_weights(tmp / "mlflow_run_id.txt", tmp / "weights.pth"), StaleRunIdError)
    assert run_id_for_weights(tmp / "good_run_id.txt", tmp / "good.pth") == "1" * 32
    return observed


def run_case(c: Case, tmp: Path, good: GoodMedia) -> Outcome:
    """The observed outcome; a failure of the harness itself (good data not processed, an unexpected
    exception) is reported as ``error`` instead of escaping, so the report shows every case."""
    try:
        return c.run(tmp, good)
    except AssertionError as e:
        return Outcome("error", "AssertionError", str(e) or "assertion failed")
    except Exception as e:  # the report must name any crash, whatever its type
        return Outcome("error", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
