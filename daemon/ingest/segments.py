"""Row segments: the rows of one ingested file as one Arrow IPC file, written before the catalog commit.

A segment is written under a temp name, fsynced and renamed to `<file id>.arrow` just before the
SQLite transaction that records the file commits; `Store.recover` removes any segment the catalog
does not know (a crash between the two). Readers memory-map segments; nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from registry.fsutil import fsync_dir

SCHEMA = pa.schema([
    ("split", pa.int8()),  # 0 train, 1 eval
    ("label", pa.string()),
    ("text", pa.string()),
    ("key", pa.string()),
    ("extra", pa.string()),
])


def path_of(folder: Path, file_id: int) -> Path:
    return folder / f"{file_id}.arrow"


class SegmentWriter:
    """Appends columns in record batches; `publish` makes the segment durable and visible."""

    def __init__(self, folder: Path, file_id: int, schema: pa.Schema = SCHEMA) -> None:
        self.final = path_of(folder, file_id)
        self.tmp = folder / f".{file_id}.arrow.tmp"
        self.schema = schema  # SCHEMA, or a task's own (daemon/ingest/tagged.py): split first, key and extra last
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self.rows = 0

    def write(self, splits: Sequence[int] | pa.Array, labels: Sequence[str] | pa.Array, texts: Sequence[str] | pa.Array,
              keys: Sequence[str | None] | None = None, extras: Sequence[str | None] | None = None) -> None:
        """Append rows given column by column (Python sequences or Arrow arrays), in the order of the
        schema's fields (with a task's schema, `labels` and `texts` are its two columns); None = all null."""
        size = len(splits)
        if not size:
            return
        columns = [_column(values, field.type, size) for values, field in zip((splits, labels, texts, keys, extras), self.schema)]
        self._writer.write_batch(pa.record_batch(columns, schema=self.schema))
        self.rows += size

    def publish(self) -> None:
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)

    def discard(self) -> None:
        if not self._sink.closed:
            self._writer.close()
            self._sink.close()
        self.tmp.unlink(missing_ok=True)


def _column(values: Sequence | pa.Array | None, kind: pa.DataType, size: int) -> pa.Array:
    if values is None:
        return pa.nulls(size, kind)
    if isinstance(values, pa.Array):
        return values if values.type == kind else values.cast(kind)
    return pa.array(values, kind)


def read(folder: Path, file_id: int, columns: list[str] | None = None) -> pa.Table:
    with pa.memory_map(str(path_of(folder, file_id)), "r") as source:
        return pa.ipc.open_file(source).read_all().select(columns) if columns else pa.ipc.open_file(source).read_all()


def ids_on_disk(folder: Path) -> Iterator[int]:
    for entry in os.scandir(folder):
        stem = entry.name.removesuffix(".arrow")
        if entry.name.endswith(".arrow") and stem.isdigit():
            yield int(stem)
