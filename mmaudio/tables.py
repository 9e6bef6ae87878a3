"""TSV tables with strict checks: required columns, unique and safe ids, UTF-8.

Ids are file stems; an id that is not a plain file name would let a row point outside its folder,
so it is an error, never a silent skip.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


class TableError(ValueError):
    """A TSV cannot be used as it is; the message names the file, the line, the column or the id."""


def check_id(value: str, *, source: str = "", line: int | None = None) -> str:
    """Return ``value`` if it is a plain file name usable as an id, else raise :class:`TableError`."""
    where = f"{source}:{line}" if line is not None else source
    if value is None or value.strip() == "":
        raise TableError(f"{where}: empty id")
    if value != value.strip():
        raise TableError(f"{where}: id {value!r} has leading or trailing white space")
    if "/" in value or "\\" in value or value in (".", "..") or ".." in value.split("."):
        raise TableError(f"{where}: id {value!r} is not a plain file name (path separator or '..')")
    if "\x00" in value or any(ord(c) < 32 for c in value):
        raise TableError(f"{where}: id {value!r} contains control characters")
    return value


def read_tsv(
    path: str | os.PathLike,
    required: Sequence[str],
    *,
    id_column: str | None = "id",
    unique: bool = True,
) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header line, as dicts of strings.

    Raises :class:`TableError` for a missing file, bytes that are not UTF-8, a missing column,
    a row with the wrong number of fields, an unsafe id or (``unique``) a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: file does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TableError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from e
    if text.startswith("\ufeff"):
        text = text[1:]
    # csv caps a field at 128 KiB by default, which would fail a whole table over one long caption;
    # a field may be as long as the file, so a caption is kept whole (the text encoder truncates it).
    if len(text) > csv.field_size_limit():
        csv.field_size_limit(len(text))
    # csv splits records itself (newline=""): only \n and \r end a line, and a quoted field keeps
    # them; str.splitlines would also break on U+2028, \x85, \x0c ... inside a caption.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", strict=True)
    try:
        header = next(reader, [])
        if not any(h.strip() for h in header):
            raise TableError(f"{path}: empty file, expected a header with columns {list(required)}")
        missing = [c for c in required if c not in header]
        if missing:
            raise TableError(f"{path}: missing required column(s) {missing}; header is {header}")
        if len(set(header)) != len(header):
            raise TableError(f"{path}: repeated column names in header {header}")
        rows: list[dict[str, str]] = []
        first_line_of: dict[str, int] = {}
        for fields in reader:
            lineno = reader.line_num  # a quoted field may span lines: this is the record's last line
            if not fields or all(f == "" for f in fields):
                continue
            if len(fields) != len(header):
                raise TableError(f"{path}:{lineno}: expected {len(header)} fields, found {len(fields)}")
            row = dict(zip(header, fields))
            if id_column is not None:
                rid = check_id(row[id_column], source=str(path), line=lineno)
                if unique:
                    if rid in first_line_of:
                        raise TableError(
                            f"{path}:{lineno}: duplicate id {rid!r} (first on line {first_line_of[rid]})"
                        )
                    first_line_of[rid] = lineno
            rows.append(row)
    except csv.Error as e:
        raise TableError(f"{path}:{reader.line_num}: malformed TSV ({e})") from e
    return rows


def write_tsv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Path:
    """Write rows atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(columns)
            for r in rows:
                w.writerow([r[c] for c in columns])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


REJECT_COLUMNS = ("id", "reason")


def write_rejects(path: str | os.PathLike, rejects: Sequence[tuple[str, str]]) -> Path:
    """The rejects manifest every skipping stage writes next to its outs: ``id, reason``."""
    return write_tsv(path, REJECT_COLUMNS, [{"id": i, "reason": r} for i, r in rejects])


REJECTS_LOGGED = 50  # rejects logged one line each; the rest are counted by kind (the manifest has all)


def log_reject_summary(logger: logging.Logger, rejects: Sequence[tuple[str, str]]) -> None:
    """Log the first rejects one per line, then how many there are of each kind of reason, so a list
    of 15,000 missing files gives a few lines, not 15,000."""
    for rid, reason in rejects[:REJECTS_LOGGED]:
        logger.warning("rejected %s: %s", rid, reason)
    if len(rejects) > REJECTS_LOGGED:
        logger.warning("... and %d more rejects (all in the rejects manifest)", len(rejects) - REJECTS_LOGGED)
    kinds: dict[str, int] = {}
    for _, reason in rejects:
        kind = re.split(r"[(:'\d]", reason, maxsplit=1)[0].strip()  # the reason without its particulars
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        logger.info("rejects: %6d  %s", n, kind)
