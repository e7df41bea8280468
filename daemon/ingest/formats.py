"""Streaming readers for inbox files: JSONL/NDJSON, CSV (optionally gzipped) and Parquet.

Each reader yields `Chunk`s: line numbers and, for each, a dict of the row's fields or a
`RowError` for a row that cannot become a dict. Whole-file problems raise `FileRejected`.
Every byte is hostile: time and memory are linear in the input, a line (or CSV record, or Parquet
row) past `max_row_bytes` becomes a `row_too_large` error without ever being held whole, and
decompressed `.gz` data and Parquet's materialised values count against `max_file_bytes`.
Nothing reads a file whole into memory; chunks keep the per-row interpreter overhead low.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import reprlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import orjson

from registry.errors import FileRejected

REQUIRED = ("text", "label")
CHUNK_ROWS = 4096
BLOCK_BYTES = 1 << 20
_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".conll": "conll", ".conll.gz": "conll",
}
TAGGED = ("tokens", "tags")  # token classification rows: JSONL or CoNLL files only (daemon/ingest/conll.py)
# causal_lm rows: JSONL only, `{"prompt", "completion"}` or `{"messages"}` (daemon/ingest/chat.py), so no
# one field is required of a file: each row's check says what it lacks
CHAT = ("prompt", "completion")


_SHORT = reprlib.Repr()  # Python 3.10 and 3.11 take no keyword arguments here
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 200, 200, 60


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str | None
    reason: str
    value: object = None

    def as_dict(self) -> dict[str, object]:
        value = self.value
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = _SHORT.repr(value)  # bounded depth and length, whatever the row held
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1 << 53:
            value = _SHORT.repr(value)
        if isinstance(value, str) and len(value) > 200:
            value = value[:200] + "..."
        return {"line": self.line, "field": self.field, "reason": self.reason, "value": value}


class Chunk:
    """Up to CHUNK_ROWS rows: their line numbers and records (dicts of fields, or RowErrors).

    Plain two-column sources give `columns` (texts, labels) instead and build dicts only when asked.
    """

    __slots__ = ("lines", "_records", "columns", "exact")

    def __init__(self, lines: Sequence[int], records: list[object] | None = None,
                 columns: tuple[list[str], list[str]] | None = None, *, exact: bool = True) -> None:
        self.lines = lines
        self._records = records
        self.columns = columns
        # False when the reader cannot name each row's line (Arrow's CSV parser): such a chunk is
        # only usable when every row in it is valid; otherwise the file is read again exactly.
        self.exact = exact

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def records(self) -> list[object]:
        if self._records is None:
            texts, labels = self.columns  # type: ignore[misc]
            self._records = [{"text": text, "label": label} for text, label in zip(texts, labels)]
        return self._records


def format_of(name: str) -> tuple[str, bool] | None:
    """(kind, gzipped) for a supported file name, else None."""
    lower = name.lower()
    for suffix, kind in sorted(_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind, suffix.endswith(".gz")
    return None


class NotFast(Exception):
    """The fast reader cannot take this file as it is; read it again with `fast=False`."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one file: its bytes (decompressed or materialised) and each row's bytes."""

    max_file_bytes: int
    max_row_bytes: int = 1 << 20


def read(source: Path | BinaryIO, limits: Limits | int, on_progress: Callable[[int], None] | None = None, *,
         name: str | None = None, fast: bool = False, required: tuple[str, ...] = REQUIRED) -> Iterator[Chunk]:
    """Yield chunks for every data row of a file: a path, or a binary stream opened by the caller
    (then `name` says which format it is). An int for `limits` is `max_file_bytes`.

    `fast=True` lets plain two-column CSV files go through Arrow's C++ parser; it raises `NotFast`
    (possibly after some chunks) when the file needs the exact row-by-row reader. `required`: the
    fields of the home's task, REQUIRED or TAGGED (token classification: JSONL and CoNLL files).
    """
    limits = Limits(limits) if isinstance(limits, int) else limits
    name = name or os.fsdecode(getattr(source, "name", ""))
    found = format_of(name)
    if found is None:
        raise FileRejected("unsupported_format", f"not one of {', '.join(sorted(_SUFFIXES))}")
    if isinstance(source, Path):
        with open(source, "rb") as raw:
            yield from read(raw, limits, on_progress, name=name, fast=fast, required=required)
        return
    kind, gzipped = found
    tagged, chat = required == TAGGED, required == CHAT
    if (kind == "conll" and not tagged) or (tagged and kind not in ("jsonl", "conll")) or (chat and kind != "jsonl"):
        wanted = ("JSONL or CoNLL files of tokens and tags" if tagged else "JSONL files of prompts and completions or"
                  " chat messages" if chat else "rows of text and label")
        raise FileRejected("unsupported_format", f"a {kind} file, but model.task takes {wanted}")
    if chat:
        required = ()
    raw = source
    if kind == "parquet":
        from daemon.ingest.parquet import read_parquet  # only Parquet files pay for pyarrow.parquet

        yield from read_parquet(raw, limits, on_progress)
        return
    stream: BinaryIO = raw
    if gzipped:
        stream = _Limited(gzip.GzipFile(fileobj=raw, mode="rb"), limits.max_file_bytes)  # type: ignore[assignment]
    if kind == "conll":
        from daemon.ingest.conll import read_conll

        reader = read_conll(stream, limits.max_row_bytes)
    elif kind == "jsonl":
        reader = _read_jsonl(stream, limits.max_row_bytes, required)
    else:
        reader = _read_csv_arrow(stream) if fast else _read_csv(stream, limits.max_row_bytes)
    try:
        for chunk in reader:
            if on_progress:
                on_progress(raw.tell())
            yield chunk
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise FileRejected("unreadable", f"corrupt or truncated gzip data: {exc}") from None


class _Limited(io.RawIOBase):
    """A read-only stream that fails as too_large past `limit` bytes (for decompressed data).

    Reads go straight to the decompressor in blocks, never through a buffer that grows."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        self._inner = inner
        self._left = limit
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self._inner.read(len(buffer))
        self._left -= len(data)
        if self._left < 0:
            raise FileRejected("too_large", f"decompressed data exceeds inbox.max_file_bytes = {self._limit}")
        buffer[: len(data)] = data
        return len(data)


def _utf8_error(raw: bytes, line: int) -> FileRejected | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileRejected("unreadable", f"line {line}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})")
    return None


@dataclass(frozen=True, slots=True)
class Oversize:
    """Stands for a line longer than `max_row_bytes`; its bytes were counted, never kept."""

    size: int


def _line_blocks(stream: BinaryIO, max_row_bytes: int) -> Iterator[tuple[int, list[bytes | Oversize]]]:
    """(number of the first line, lines without b"\\n") in blocks of about 1 MiB.

    Linear in the input: each byte is split once and joined at most once, and a line longer than
    `max_row_bytes` is only counted from then on (an `Oversize` in its place), so no line, however
    long, is held whole or copied again as each block arrives.
    """
    pieces: list[bytes] = []  # the start of the line that runs across blocks
    held = 0  # bytes in pieces
    skipped = -1  # >= 0 while the current line is past the cap: its length so far
    first = 1
    while data := stream.read(BLOCK_BYTES):
        parts = data.split(b"\n")
        tail = parts.pop()  # the start of a line that goes on in the next block
        if parts:  # parts[0] ends the carried line
            head = parts[0]
            if skipped >= 0:
                parts[0] = Oversize(skipped + len(head))  # type: ignore[call-overload]
            elif held + len(head) > max_row_bytes:
                parts[0] = Oversize(held + len(head))  # type: ignore[call-overload]
            elif pieces:
                parts[0] = b"".join((*pieces, head))
            if max(map(len, parts[1:]), default=0) > max_row_bytes:
                parts[1:] = [line if len(line) <= max_row_bytes else Oversize(len(line)) for line in parts[1:]]
            yield first, parts  # type: ignore[misc]
            first += len(parts)
            pieces, held, skipped = [], 0, -1
        if skipped >= 0:
            skipped += len(tail)
        elif held + len(tail) > max_row_bytes:
            skipped, pieces, held = held + len(tail), [], 0
        elif tail:
            pieces.append(tail)
            held += len(tail)
    if skipped >= 0:
        yield first, [Oversize(skipped)]
    elif pieces:
        yield first, [b"".join(pieces)]


def too_large(line: int, size: int, max_row_bytes: int) -> RowError:
    return RowError(line, None, "row_too_large", f"{size} bytes > inbox.max_row_bytes = {max_row_bytes}")


def _read_jsonl(stream: BinaryIO, max_row_bytes: int, required: tuple[str, ...] = REQUIRED) -> Iterator[Chunk]:
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    parsed = rows = objects = oversize = 0
    seen: set[str] = set()
    first_error: str | None = None
    for first, block in _line_blocks(stream, max_row_bytes):
        if first == 1 and isinstance(block[0], bytes) and block[0].startswith(b"\xef\xbb\xbf"):
            block[0] = block[0][3:]
        for start in range(0, len(block), CHUNK_ROWS):
            part = block[start:start + CHUNK_ROWS]
            base = first + start
            try:  # the common case: every line is a JSON object; parsed in one call
                records = list(map(loads, part))
            except decode_error:
                records = None
            if records is not None and set(map(type, records)) == {dict}:
                rows += len(records)
                parsed += len(records)
                objects += len(records)
                if len(seen) < 2:
                    for record in records:
                        seen.update(key for key in required if key in record)
                yield Chunk(range(base, base + len(records)), records)
                continue
            lines: list[int] = []
            chunk: list[object] = []
            for line, raw in enumerate(part, base):
                if type(raw) is Oversize:
                    rows += 1
                    oversize += 1
                    lines.append(line)
                    chunk.append(too_large(line, raw.size, max_row_bytes))
                    continue
                try:
                    record = loads(raw)
                except decode_error as exc:
                    problem = _utf8_error(raw, line)
                    if problem:
                        raise problem from None
                    if not raw.strip():
                        continue  # a blank line
                    first_error = first_error or f"line {line}: {exc}"
                    rows += 1
                    lines.append(line)
                    chunk.append(RowError(line, None, "invalid_json", raw.strip()[:200].decode(errors="replace")))
                    continue
                rows += 1
                parsed += 1
                lines.append(line)
                if type(record) is not dict:
                    chunk.append(RowError(line, None, "not_object", record))
                else:
                    objects += 1
                    seen.update(key for key in required if key in record)
                    chunk.append(record)
            if chunk:
                yield Chunk(lines, chunk)
    if rows == 0:
        raise FileRejected("empty", "no data rows")
    if parsed == 0 and oversize < rows:
        raise FileRejected("unreadable", f"no line is valid JSON ({first_error})")
    missing = [key for key in required if key not in seen]
    if missing and objects:
        raise FileRejected("missing_columns", f"no row has the required field(s) {', '.join(missing)}")


def _csv_lines(stream: BinaryIO, max_row_bytes: int, oversize: dict[int, int], read: list[int]) -> Iterator[str]:
    """The file's lines, decoded, for `csv.reader`; a line past the cap is given as an empty line
    and noted in `oversize` (line number -> bytes), so the row holding it can be refused. `read[0]`
    counts the bytes handed over."""
    for first, block in _line_blocks(stream, max_row_bytes):
        read[0] += sum(len(raw) for raw in block if type(raw) is bytes)
        if first == 1 and isinstance(block[0], bytes) and block[0].startswith(b"\xef\xbb\xbf"):
            block[0] = block[0][3:]
        for line, raw in enumerate(block, first):
            if type(raw) is Oversize:
                oversize[line] = raw.size
                yield "\n"
                continue
            try:
                yield raw.decode("utf-8") + "\n"
            except UnicodeDecodeError as exc:
                raise FileRejected("unreadable", f"line {line}: not valid UTF-8 ({exc.reason})") from None


def _read_csv(stream: BinaryIO, max_row_bytes: int) -> Iterator[Chunk]:
    oversize: dict[int, int] = {}
    read = [0]  # bytes given to the parser: a chunk ends at about BLOCK_BYTES of them, however long its rows
    # Not strict: text after a closing quote stays part of the field ("ab"c reads as abc), as in
    # Arrow's and pandas' parsers, so both of our CSV readers agree on every file.
    reader = csv.reader(_csv_lines(stream, max_row_bytes, oversize, read), strict=False)
    csv.field_size_limit(max_row_bytes)  # a longer field is refused as the parser meets it

    def records() -> Iterator[tuple[int, list[str] | RowError]]:
        """(last line, the record's fields or an error) for each record."""
        last = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if "field larger than field limit" not in str(exc):
                    raise
                yield reader.line_num, too_large(reader.line_num, max_row_bytes + 1, max_row_bytes)
                last = reader.line_num
                continue
            spanned = [oversize.pop(n) for n in range(last + 1, reader.line_num + 1) if n in oversize]
            last = reader.line_num
            if spanned:
                yield last, too_large(last, sum(spanned), max_row_bytes)
            elif len(row) > 1 and sum(map(len, row)) > max_row_bytes:
                yield last, too_large(last, sum(map(len, row)), max_row_bytes)
            else:
                yield last, row

    try:
        found = records()
        try:
            header_line, header = next(found)
        except StopIteration:
            raise FileRejected("empty", "no header and no rows") from None
        if isinstance(header, RowError):
            raise FileRejected("unreadable", f"line {header_line}: the header is longer than inbox.max_row_bytes")
        header = [name.strip() for name in header]
        dupes = sorted({name for name in header if header.count(name) > 1})
        if dupes:
            raise FileRejected("unreadable", f"duplicate column(s) in header: {', '.join(dupes)}")
        missing = [key for key in REQUIRED if key not in header]
        if missing:
            raise FileRejected("missing_columns", f"header lacks required column(s) {', '.join(missing)}; it has {', '.join(header) or 'none'}")
        width = len(header)
        plain = sorted(header) == ["label", "text"]
        text_at, label_at = header.index("text"), header.index("label")
        rows = 0
        while True:
            lines: list[int] = []
            values: list[list[str] | RowError] = []
            add_line, add_values = lines.append, values.append
            start = read[0]
            for line, row in found:
                add_line(line)
                add_values(row)
                if len(values) == CHUNK_ROWS or read[0] - start > BLOCK_BYTES:
                    break
            if not values:
                break
            if plain and set(map(type, values)) == {list} and set(map(len, values)) == {2}:  # the common case
                rows += len(values)
                yield Chunk(lines, columns=([v[text_at] for v in values], [v[label_at] for v in values]))  # type: ignore[index]
                continue
            kept_lines: list[int] = []
            records_: list[object] = []
            for line, row in zip(lines, values):
                if not row:
                    continue  # a blank line
                rows += 1
                kept_lines.append(line)
                if isinstance(row, RowError):
                    records_.append(row)
                elif len(row) != width:
                    shown = repr(row)
                    records_.append(RowError(line, None, "field_count", f"{len(row)} fields, header has {width}: {shown[:200]}"))
                else:
                    records_.append(dict(zip(header, row)))
            if records_:
                yield Chunk(kept_lines, records_)
        if rows == 0:
            raise FileRejected("empty", "header only, no data rows")
    except csv.Error as exc:
        raise FileRejected("unreadable", f"line {reader.line_num}: malformed CSV: {exc}") from None


def _read_csv_arrow(stream: BinaryIO) -> Iterator[Chunk]:
    """Plain `text,label` CSV through Arrow's parser; anything else raises NotFast."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=1 << 20, use_threads=False),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={"text": pa.string(), "label": pa.string()},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        if sorted(name.strip() for name in reader.schema.names) != ["label", "text"] or \
                reader.schema.names != [name.strip() for name in reader.schema.names]:
            raise NotFast("not a plain text,label file")
        rows = 0
        for batch in reader:
            for start in range(0, batch.num_rows, CHUNK_ROWS):
                part = batch.slice(start, CHUNK_ROWS)
                rows += part.num_rows
                yield Chunk(range(part.num_rows), columns=(part.column("text").to_pylist(),
                                                          part.column("label").to_pylist()), exact=False)
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
        raise NotFast(str(exc)) from None
    if rows == 0:
        raise NotFast("no rows")
