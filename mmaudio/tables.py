"""TSV tables with strict checks: required columns, unique and safe ids, UTF-8.

Ids are file stems; an id that is not a plain file name would let a row point outside its folder,
so it is an error, never a silent skip. The same check covers names read from disk and columns
that a stage wrote and another reads back (a generated TSV is an input like any other).

Quoting: a field that is exactly one double-quoted string (``"..."`` with inner quotes doubled, as
csv writers produce for text holding tabs, newlines or quotes) is unquoted; any other field is
taken literally, so a caption may start with a quote (``"Hi" she said``). Writers quote what needs
it, so everything written reads back unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

MAX_ID_BYTES = 240  # UTF-8 bytes: the id plus the longest media suffix must fit a 255-byte file name
# Unicode categories that render as nothing or move text: controls (C0, DEL, C1), format characters
# (zero-width, bidi overrides, BOM), line/paragraph separators and surrogates (undecodable bytes).
_INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


class TableError(ValueError):
    """A TSV cannot be used as it is; the message names the file, the line, the column or the id."""


def check_id(value: str, *, source: str = "", line: int | None = None, what: str = "id") -> str:
    """Return ``value`` if it is a plain file name usable as an id, else raise :class:`TableError`
    (``what`` names the value in the message: an id, a file name)."""
    where = f"{source}:{line}" if line is not None else source
    if value is None or value.strip() == "":
        raise TableError(f"{where}: empty {what}")
    if value != value.strip():
        raise TableError(f"{where}: {what} {value!r} has leading or trailing white space")
    if "/" in value or "\\" in value or value in (".", "..") or ".." in value.split("."):
        raise TableError(f"{where}: {what} {value!r} is not a plain file name (path separator or '..')")
    printable_ascii = value.isascii() and value.isprintable()
    bad = [] if printable_ascii else [c for c in value if unicodedata.category(c) in _INVISIBLE_CATEGORIES]
    if bad:
        shown = ", ".join(sorted({f"U+{ord(c):04X}" for c in bad}))
        raise TableError(f"{where}: {what} {value!r} contains control or invisible characters ({shown})")
    size = len(value.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise TableError(f"{where}: {what} of {size} bytes is longer than {MAX_ID_BYTES} bytes (starts {value[:40]!r})")
    return value


def lookalike_key(value: str) -> str:
    """What two ids that look the same share: their NFKC form (composed vs decomposed accents,
    full-width letters, ligatures). Two files whose names differ only here are duplicates."""
    return unicodedata.normalize("NFKC", value)


# -- checks of generated columns, for read_tsv(checks=...) ---------------------------------------------


def plain_file_name(value: str) -> str:
    """A file name inside its folder (the same rules as an id): no path, no ``..``, no control characters."""
    try:
        return check_id(value, what="file name")
    except TableError as e:
        raise ValueError(str(e).removeprefix(": ")) from e


def nonnegative_int(value: str) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"{value!r} is not a non-negative integer")
    return int(value)


def finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not a number") from e
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    return x


# -- reading ----------------------------------------------------------------------------------------

_QUOTED = re.compile(r'"([^"]*(?:""[^"]*)*)"(?=[\t\r\n]|\Z)')
_PLAIN = re.compile(r"[^\t\r\n]*")
_LINE_END = re.compile(r"\r\n|\n|\r")


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of every record of ``text``; see the module doc for quoting."""
    if '"' not in text:  # nothing quoted: one record per line (10x faster than the scanner below)
        lines = _LINE_END.split(text)
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines, 1):
            yield i, line.split("\t")
        return
    pos, line, end = 0, 1, len(text)
    while pos < end:
        start_line = line
        fields: list[str] = []
        while True:
            m = _QUOTED.match(text, pos) if text.startswith('"', pos) else None
            if m is not None:
                value = m.group(1).replace('""', '"')
                line += len(_LINE_END.findall(m.group(1)))
            else:
                m = _PLAIN.match(text, pos)
                value = m.group(0)
            fields.append(value)
            pos = m.end()
            if pos < end and text[pos] == "\t":
                pos += 1
                continue
            break
        if pos < end:
            nl = _LINE_END.match(text, pos)
            pos = nl.end()
            line += 1
        yield start_line, fields


def read_tsv(
    path: str | os.PathLike,
    required: Sequence[str],
    *,
    id_column: str | None = "id",
    unique: bool = True,
    checks: Mapping[str, Callable[[str], object]] | None = None,
) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header line, as dicts of strings.

    Raises :class:`TableError` for a missing file, bytes that are not UTF-8, a missing column,
    a row with the wrong number of fields, an unsafe id, (``unique``) a repeated id or two ids that
    look the same (:func:`lookalike_key`), or a value that one of ``checks`` (column -> function
    raising ValueError) refuses.
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
    # Records split on \n, \r\n and \r only, and a quoted field keeps them; str.splitlines would
    # also break on U+2028, \x85, \x0c ... inside a caption. A field may be as long as the file.
    records = _records(text)
    _, header = next(records, (1, []))
    if not any(h.strip() for h in header):
        raise TableError(f"{path}: empty file, expected a header with columns {list(required)}")
    missing = [c for c in required if c not in header]
    if missing:
        raise TableError(f"{path}: missing required column(s) {missing}; header is {header}")
    if len(set(header)) != len(header):
        raise TableError(f"{path}: repeated column names in header {header}")
    rows: list[dict[str, str]] = []
    first_line_of: dict[str, tuple[int, str]] = {}
    for lineno, fields in records:
        if all(f == "" for f in fields):
            continue
        if len(fields) != len(header):
            raise TableError(f"{path}:{lineno}: expected {len(header)} fields, found {len(fields)}")
        row = dict(zip(header, fields))
        if id_column is not None:
            rid = check_id(row[id_column], source=str(path), line=lineno)
            if unique:
                key = lookalike_key(rid)
                if key in first_line_of:
                    first, other = first_line_of[key]
                    if other == rid:
                        raise TableError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {first})")
                    raise TableError(
                        f"{path}:{lineno}: id {rid!r} looks the same as {other!r} on line {first} "
                        "(equal after Unicode NFKC normalisation)"
                    )
                first_line_of[key] = (lineno, rid)
        for column, check in (checks or {}).items():
            try:
                check(row[column])
            except ValueError as e:
                who = f"id {row[id_column]!r}: " if id_column is not None else ""
                raise TableError(f"{path}:{lineno}: {who}column '{column}': {e}") from e
        rows.append(row)
    return rows


def _quote(value: object) -> str:
    """``value`` as a TSV field: quoted (inner quotes doubled) when it holds a tab, a line end or a quote."""
    text = str(value)
    if any(c in text for c in '\t\n\r"'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_tsv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> Path:
    """Write rows atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(_quote(c) for c in columns) + "\n")
            for r in rows:
                line = "\t".join(_quote(r[c]) for c in columns)
                f.write((line or '""') + "\n")  # a blank line would read as no row
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
