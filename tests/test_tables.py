"""TSV checks and the video-list index: every bad row is an error or a rejects entry."""

from __future__ import annotations

import shutil

import pytest

from mmaudio.media_index import index_video_list
from mmaudio.tables import TableError, check_id, read_tsv, write_tsv


def test_round_trip_keeps_order_and_odd_captions(tmp_path):
    rows = [{"id": "b", "caption": 'a "quoted"\ttabbed caption'}, {"id": "a", "caption": "naïve café ♪"}]
    write_tsv(tmp_path / "c.tsv", ("id", "caption"), rows)
    assert read_tsv(tmp_path / "c.tsv", ("id", "caption")) == rows


def test_missing_required_column(tmp_path):
    (tmp_path / "l.tsv").write_text("id\tname\nx\ty\n")
    with pytest.raises(TableError, match=r"l.tsv: missing required column\(s\) \['label'\]"):
        read_tsv(tmp_path / "l.tsv", ("id", "label"))


def test_duplicate_ids(tmp_path):
    (tmp_path / "l.tsv").write_text("id\tlabel\nx\tone\ny\ttwo\nx\tthree\n")
    with pytest.raises(TableError, match=r"l.tsv:4: duplicate id 'x' \(first on line 2\)"):
        read_tsv(tmp_path / "l.tsv", ("id", "label"))


@pytest.mark.parametrize("bad", ["a/b", "..", "../etc", "x\\y", "", " pad"])
def test_unsafe_ids(tmp_path, bad):
    (tmp_path / "l.tsv").write_text(f"id\tlabel\nok\tfine\n{bad}\tbad\n")
    with pytest.raises(TableError, match=r"l.tsv:3: (empty id|id .* (not a plain file name|white space))"):
        read_tsv(tmp_path / "l.tsv", ("id", "label"))


def test_check_id_accepts_plain_names():
    for ok in ["-0jeONf82dE_000021", "a.b", "clip_1", "a..b"]:
        assert check_id(ok) == ok


def test_non_utf8_caption(tmp_path):
    (tmp_path / "c.tsv").write_bytes(b"id\tcaption\nx\tfine\ny\tcaf\xe9 latin-1\n")
    with pytest.raises(TableError, match=r"c.tsv:3: not valid UTF-8 \(byte 0xe9"):
        read_tsv(tmp_path / "c.tsv", ("id", "caption"))


def test_wrong_field_count_and_empty_file(tmp_path):
    (tmp_path / "c.tsv").write_text("id\tcaption\nx\ta\textra\n")
    with pytest.raises(TableError, match=r"c.tsv:2: expected 2 fields, found 3"):
        read_tsv(tmp_path / "c.tsv", ("id", "caption"))
    (tmp_path / "e.tsv").write_text("")
    with pytest.raises(TableError, match="e.tsv: empty file"):
        read_tsv(tmp_path / "e.tsv", ("id", "caption"))
    with pytest.raises(TableError, match="nothing.tsv: file does not exist"):
        read_tsv(tmp_path / "nothing.tsv", ("id",))


def test_video_list_index_rejects_bad_rows_and_keeps_good_ones(examples_dir, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for name in ["flash_000.mp4", "sweep_000.mkv", "flash_001.webm"]:
        shutil.copy(examples_dir / "video" / name, media / name)
    from tests.test_media import _write_video_only, write_audio_only_mp4

    write_audio_only_mp4(examples_dir / "audio" / "clicks_000.flac", media / "audio_only.mp4")
    (media / "empty.mp4").write_bytes(b"")
    (media / "text.mp4").write_text("hello")
    src = (examples_dir / "video" / "flash_003.mp4").read_bytes()
    (media / "truncated.mp4").write_bytes(src[: len(src) // 2])
    (media / "twin.mp4").write_bytes(b"")
    (media / "twin.mkv").write_bytes(b"")
    _write_video_only(media / "mute.mp4")
    ids = ["flash_000", "audio_only", "empty", "text", "truncated", "mute", "missing", "twin", "sweep_000", "flash_001"]
    write_tsv(tmp_path / "list.tsv", ("id", "label"), [{"id": i, "label": f"label of {i}"} for i in ids])

    res = index_video_list(tmp_path / "list.tsv", media, min_duration_sec=8.0)
    assert [r["id"] for r in res.rows] == ["flash_000", "sweep_000", "flash_001"]
    assert res.rows[0]["file"] == "flash_000.mp4" and res.rows[0]["audio_rate"] == 16000
    reasons = dict(res.rejects)
    assert reasons["audio_only"] == "no video stream"
    assert reasons["mute"] == "no audio stream"
    assert reasons["empty"] == "file is empty (0 bytes)"
    assert reasons["text"].startswith("cannot open as media")
    assert reasons["truncated"].startswith("cannot open as media")
    assert reasons["missing"].startswith("no file for id 'missing'")
    assert "matches several files" in reasons["twin"]
    assert len(res.rows) + len(res.rejects) == len(ids)
