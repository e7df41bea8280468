"""Parquet inbox files, read in batches sized from the file's metadata, every value counted before
it is materialised (dictionary and run-length encodings make a few bytes stand for millions)."""

from __future__ import annotations

from typing import BinaryIO, Callable, Iterator

from daemon.ingest.formats import CHUNK_ROWS, REQUIRED, Chunk, Limits, too_large
from registry.errors import FileRejected

# rows are materialised in batches of about this many bytes (by the file's own metadata)
PARQUET_BATCH_BYTES = 8 << 20


def read_parquet(source: BinaryIO, limits: Limits, on_progress: Callable[[int], None] | None) -> Iterator[Chunk]:
    """Parquet in batches sized from the file's metadata. Its values are counted as they are
    materialised (dictionary and run-length encodings make a few bytes stand for millions), and
    string columns stay dictionary-encoded until each row's size has been checked."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq  # only Parquet files pay for the import

    try:
        parquet = pq.ParquetFile(source)
        schema = parquet.schema_arrow
        metadata = parquet.metadata
        declared = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise FileRejected("unreadable", f"not a readable Parquet file: {exc}") from None
    names = schema.names
    missing = [key for key in REQUIRED if key not in names]
    if missing:
        raise FileRejected("missing_columns", f"schema lacks required column(s) {', '.join(missing)}; it has {', '.join(names) or 'none'}")
    if metadata.num_rows == 0:
        raise FileRejected("empty", "no data rows")
    if declared > limits.max_file_bytes:
        raise FileRejected("too_large", f"its metadata declares {declared} bytes of values > inbox.max_file_bytes = {limits.max_file_bytes}")
    nested = [field.name for field in schema if pa.types.is_nested(field.type)
              or (pa.types.is_dictionary(field.type) and pa.types.is_nested(field.type.value_type))]
    if nested:
        # nested values are decoded before they can be counted (a list of one dictionary-encoded
        # string repeated turns a few bytes into gigabytes): inbox Parquet files hold flat columns
        raise FileRejected("unreadable", f"column(s) {', '.join(nested)[:200]} hold lists, structs or maps; "
                                         "inbox Parquet files take flat columns (use JSONL for nested extra fields)")
    strings = [field.name for field in schema if _is_text(field.type, pa)]
    per_row = max(declared // max(metadata.num_rows, 1), 1)
    batch_rows = int(min(CHUNK_ROWS, max(1, PARQUET_BATCH_BYTES // per_row)))
    try:
        parquet = pq.ParquetFile(source, read_dictionary=strings)
        line = total = 0
        for index, batch in enumerate(parquet.iter_batches(batch_size=batch_rows)):
            sizes = _row_bytes(batch, pa, pc)
            total += int(pc.sum(sizes).as_py() or 0)
            if total > limits.max_file_bytes:
                raise FileRejected("too_large", f"its values exceed inbox.max_file_bytes = {limits.max_file_bytes} once decoded (row {line + 1})")
            big = pc.greater(sizes, limits.max_row_bytes)
            lines = range(line + 1, line + 1 + batch.num_rows)
            if pc.any(big).as_py():
                fits = iter(batch.filter(pc.invert(big)).to_pylist())
                records: list[object] = [too_large(n, size, limits.max_row_bytes) if size > limits.max_row_bytes
                                         else next(fits) for n, size in zip(lines, sizes.to_pylist())]
            else:
                records = batch.to_pylist()
            yield Chunk(lines, records)
            line += batch.num_rows
            if on_progress:
                on_progress(int(metadata.serialized_size + declared * line / max(metadata.num_rows, 1)))
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, FileRejected):
            raise
        raise FileRejected("unreadable", f"row {line + 1}: {exc}") from None


def _row_bytes(batch, pa, pc):  # type: ignore[no-untyped-def]
    """Bytes each row takes once materialised: its strings' lengths (dictionary values counted per
    use), plus a fixed width for other columns."""
    sizes = pa.array([0] * batch.num_rows, pa.int64())
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type, pa):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
        elif _is_text(column.type, pa):
            lengths = pc.binary_length(column)
        else:
            lengths = pa.array([column.nbytes // max(len(column), 1)] * len(column), pa.int64())
        sizes = pc.add(sizes, pc.fill_null(pc.cast(lengths, pa.int64()), 0))
    return sizes


def _is_text(kind, pa) -> bool:  # type: ignore[no-untyped-def]
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind))
