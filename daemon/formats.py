"""Streaming readers for inbox files: JSONL/NDJSON, CSV (optionally gzipped) and Parquet.

Each reader yields `(line, record)` where record is a dict of the row's fields, or a `RowError`
for a row that cannot become a dict. Whole-file problems raise `FileRejected`. Nothing reads a
file whole into memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from registry.errors import FileRejected

REQUIRED = ("text", "label")
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


Record = "dict[str, object] | RowError"


def format_of(name: str) -> tuple[str, bool] | None:
    """(kind, gzipped) for a supported file name, else None."""
    lower = name.lower()
    for suffix, kind in sorted(_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind, suffix.endswith(".gz")
    return None


def read(path: Path, max_bytes: int, on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, object]]:
    """Yield (line, dict | RowError) for every data row of the file at `path`."""
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
            stream = _Limited(gzip.GzipFile(fileobj=raw, mode="rb"), max_bytes * GZIP_EXPANSION_LIMIT)
        reader = _read_jsonl(stream) if kind == "jsonl" else _read_csv(stream)
        tick = _progress(raw, on_progress)
        try:
            for count, item in enumerate(reader):
                if tick and count % 8192 == 0:
                    tick()
                yield item
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise FileRejected("unreadable", f"corrupt or truncated gzip data: {exc}") from None
        if tick:
            tick()


def _progress(raw: BinaryIO, on_progress: Callable[[int], None] | None) -> Callable[[], None] | None:
    if on_progress is None:
        return None
    return lambda: on_progress(raw.tell())


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


def _decode(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRejected("unreadable", f"line {line}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None


def _read_jsonl(stream: BinaryIO) -> Iterator[tuple[int, object]]:
    buffered = io.BufferedReader(stream, 1 << 20) if not isinstance(stream, io.BufferedReader) else stream
    loads = json.loads
    parsed = rows = objects = 0
    seen: set[str] = set()
    first_error: str | None = None
    for line, raw in enumerate(buffered, 1):
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        text = _decode(raw, line)
        if not text.strip():
            continue
        rows += 1
        try:
            record = loads(text)
        except ValueError as exc:
            first_error = first_error or f"line {line}: {exc}"
            yield line, RowError(line, None, "invalid_json", text.strip())
            continue
        parsed += 1
        if not isinstance(record, dict):
            yield line, RowError(line, None, "not_object", record)
            continue
        objects += 1
        if len(seen) < len(REQUIRED):
            seen.update(key for key in REQUIRED if key in record)
        yield line, record
    if rows == 0:
        raise FileRejected("empty", "no data rows")
    if parsed == 0:
        raise FileRejected("unreadable", f"no line is valid JSON ({first_error})")
    missing = [key for key in REQUIRED if key not in seen]
    if missing and objects:
        raise FileRejected("missing_columns", f"no row has the required field(s) {', '.join(missing)}")


def _read_csv(stream: BinaryIO) -> Iterator[tuple[int, object]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.reader(text, strict=True)
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
        rows = 0
        for values in reader:
            if not values:
                continue  # a blank line
            rows += 1
            line = reader.line_num
            if len(values) != width:
                yield line, RowError(line, None, "field_count", f"{len(values)} fields, header has {width}")
                continue
            yield line, dict(zip(header, values))
        if rows == 0:
            raise FileRejected("empty", "header only, no data rows")
    except UnicodeDecodeError as exc:
        raise FileRejected("unreadable", f"near line {reader.line_num + 1}: not valid UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise FileRejected("unreadable", f"line {reader.line_num}: malformed CSV: {exc}") from None


csv.field_size_limit(1 << 30)


def _read_parquet(path: Path, on_progress: Callable[[int], None] | None) -> Iterator[tuple[int, object]]:
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
        for index, batch in enumerate(parquet.iter_batches(batch_size=8192)):
            for record in batch.to_pylist():
                line += 1
                yield line, record
            if on_progress:
                on_progress(int(path.stat().st_size * (index + 1) / max(parquet.num_row_groups, 1)))
    except (OSError, ValueError) as exc:
        raise FileRejected("unreadable", f"row {line + 1}: {exc}") from None
