"""Streaming readers for inbox files: JSONL/NDJSON, CSV (optionally gzipped) and Parquet.

Each reader yields `Chunk`s: line numbers and, for each, a dict of the row's fields or a
`RowError` for a row that cannot become a dict. Whole-file problems raise `FileRejected`.
Nothing reads a file whole into memory; chunks keep the per-row interpreter overhead low.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import orjson

from registry.errors import FileRejected

REQUIRED = ("text", "label")
CHUNK_ROWS = 4096
# A gzip member may expand to at most this many times `inbox.max_file_bytes` (a bomb guard).
GZIP_EXPANSION_LIMIT = 100
_SUFFIXES = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet",
}


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str | None
    reason: str
    value: object = None

    def as_dict(self) -> dict[str, object]:
        value = self.value
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = repr(value)
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


def read(path: Path, max_bytes: int, on_progress: Callable[[int], None] | None = None, *,
         fast: bool = False) -> Iterator[Chunk]:
    """Yield chunks for every data row of the file at `path`.

    `fast=True` lets plain two-column CSV files go through Arrow's C++ parser; it raises `NotFast`
    (possibly after some chunks) when the file needs the exact row-by-row reader.
    """
    found = format_of(path.name)
    if found is None:
        raise FileRejected("unsupported_format", f"{path.name}: not one of {', '.join(sorted(_SUFFIXES))}")
    kind, gzipped = found
    if kind == "parquet":
        yield from _read_parquet(path, on_progress)
        return
    with open(path, "rb") as raw:
        stream: BinaryIO = raw
        if gzipped:
            stream = io.BufferedReader(_Limited(gzip.GzipFile(fileobj=raw, mode="rb"), max_bytes * GZIP_EXPANSION_LIMIT),
                                       1 << 20)
        if kind == "jsonl":
            reader = _read_jsonl(stream)
        else:
            reader = _read_csv_arrow(stream) if fast else _read_csv(stream)
        try:
            for chunk in reader:
                if on_progress:
                    on_progress(raw.tell())
                yield chunk
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise FileRejected("unreadable", f"corrupt or truncated gzip data: {exc}") from None


class _Limited(io.RawIOBase):
    """A read-only stream that fails as too_large past `limit` bytes (for decompressed data)."""

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
            raise FileRejected("too_large", f"decompressed data exceeds {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def _utf8_error(raw: bytes, line: int) -> FileRejected | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileRejected("unreadable", f"line {line}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})")
    return None


def _line_blocks(stream: BinaryIO) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, lines without b"\\n") in blocks of about 1 MiB."""
    carry = b""
    first = 1
    while data := stream.read(1 << 20):
        lines = (carry + data).split(b"\n")
        carry = lines.pop()
        if lines:
            yield first, lines
            first += len(lines)
    if carry:
        yield first, [carry]


def _read_jsonl(stream: BinaryIO) -> Iterator[Chunk]:
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    parsed = rows = objects = 0
    seen: set[str] = set()
    first_error: str | None = None
    for first, block in _line_blocks(stream):
        if first == 1 and block[0].startswith(b"\xef\xbb\xbf"):
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
                        seen.update(key for key in REQUIRED if key in record)
                yield Chunk(range(base, base + len(records)), records)
                continue
            lines: list[int] = []
            chunk: list[object] = []
            for line, raw in enumerate(part, base):
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
                    chunk.append(RowError(line, None, "invalid_json", raw.strip().decode()))
                    continue
                rows += 1
                parsed += 1
                lines.append(line)
                if type(record) is not dict:
                    chunk.append(RowError(line, None, "not_object", record))
                else:
                    objects += 1
                    seen.update(key for key in REQUIRED if key in record)
                    chunk.append(record)
            if chunk:
                yield Chunk(lines, chunk)
    if rows == 0:
        raise FileRejected("empty", "no data rows")
    if parsed == 0:
        raise FileRejected("unreadable", f"no line is valid JSON ({first_error})")
    missing = [key for key in REQUIRED if key not in seen]
    if missing and objects:
        raise FileRejected("missing_columns", f"no row has the required field(s) {', '.join(missing)}")


def _read_csv(stream: BinaryIO) -> Iterator[Chunk]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    # Not strict: text after a closing quote stays part of the field ("ab"c reads as abc), as in
    # Arrow's and pandas' parsers, so both of our CSV readers agree on every file.
    reader = csv.reader(text, strict=False)
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise FileRejected("empty", "no header and no rows") from None
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
            values: list[list[str]] = []
            add_line, add_values = lines.append, values.append
            for row in reader:
                add_line(reader.line_num)
                add_values(row)
                if len(values) == CHUNK_ROWS:
                    break
            if not values:
                break
            if plain and set(map(len, values)) == {2}:  # the common case, no dict per row
                rows += len(values)
                yield Chunk(lines, columns=([v[text_at] for v in values], [v[label_at] for v in values]))
                continue
            kept_lines: list[int] = []
            records: list[object] = []
            for line, row in zip(lines, values):
                if not row:
                    continue  # a blank line
                rows += 1
                kept_lines.append(line)
                if len(row) != width:
                    records.append(RowError(line, None, "field_count", f"{len(row)} fields, header has {width}: {row!r}"))
                else:
                    records.append(dict(zip(header, row)))
            if records:
                yield Chunk(kept_lines, records)
        if rows == 0:
            raise FileRejected("empty", "header only, no data rows")
    except UnicodeDecodeError as exc:
        raise FileRejected("unreadable", f"near line {reader.line_num + 1}: not valid UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise FileRejected("unreadable", f"line {reader.line_num}: malformed CSV: {exc}") from None


csv.field_size_limit(1 << 30)


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


def _read_parquet(path: Path, on_progress: Callable[[int], None] | None) -> Iterator[Chunk]:
    import pyarrow.parquet as pq  # only Parquet files pay for the import

    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise FileRejected("unreadable", f"not a readable Parquet file: {exc}") from None
    missing = [key for key in REQUIRED if key not in names]
    if missing:
        raise FileRejected("missing_columns", f"schema lacks required column(s) {', '.join(missing)}; it has {', '.join(names) or 'none'}")
    if parquet.metadata.num_rows == 0:
        raise FileRejected("empty", "no data rows")
    line = 0
    try:
        for index, batch in enumerate(parquet.iter_batches(batch_size=CHUNK_ROWS)):
            yield Chunk(range(line + 1, line + 1 + batch.num_rows), batch.to_pylist())
            line += batch.num_rows
            if on_progress:
                on_progress(int(path.stat().st_size * (index + 1) / max(parquet.num_row_groups, 1)))
    except (OSError, ValueError) as exc:
        raise FileRejected("unreadable", f"row {line + 1}: {exc}") from None
