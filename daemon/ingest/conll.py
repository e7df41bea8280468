"""The CoNLL reader for token classification inbox files (`*.conll`, `*.conll.gz`).

One `token TAG` per line (columns split on white space: the first is the token, the last the tag,
so CoNLL-2003's `token POS chunk TAG` reads too), a blank line between sentences; `-DOCSTART-`
lines and lines starting with `#` are skipped. Each sentence becomes one record
`{"tokens", "tags"}`, numbered by its first line. A sentence over `max_row_bytes` is a
`row_too_large` error, counted but never held whole; a line without a tag is a `missing_tag` error
of its sentence. Linear in the input, as every reader of `formats`.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from daemon.ingest.formats import CHUNK_ROWS, Chunk, Oversize, RowError, _line_blocks, _utf8_error, too_large
from registry.errors import FileRejected


def read_conll(stream: BinaryIO, max_row_bytes: int) -> Iterator[Chunk]:
    lines: list[int] = []
    records: list[object] = []
    sentences = 0
    # the sentence being read: its first line, tokens, tags, bytes, and its first error
    first, tokens, tags, size, error = 0, [], [], 0, None  # type: ignore[var-annotated]

    def close() -> None:
        nonlocal first, tokens, tags, size, error, sentences
        if first:
            sentences += 1
            lines.append(first)
            if error is None and size > max_row_bytes:
                error = too_large(first, size, max_row_bytes)
            records.append(error if error is not None else {"tokens": tokens, "tags": tags})
        first, tokens, tags, size, error = 0, [], [], 0, None

    for start, block in _line_blocks(stream, max_row_bytes):
        if start == 1 and isinstance(block[0], bytes) and block[0].startswith(b"\xef\xbb\xbf"):
            block[0] = block[0][3:]
        for number, raw in enumerate(block, start):
            if type(raw) is Oversize:
                first = first or number
                size += raw.size
                error = error or too_large(number, raw.size, max_row_bytes)
                continue
            problem = _utf8_error(raw, number)
            if problem:
                raise problem
            text = raw.decode("utf-8").strip()
            if not text:
                close()
                if len(records) >= CHUNK_ROWS:
                    yield Chunk(lines[:], records[:])
                    lines.clear()
                    records.clear()
                continue
            if text.startswith("-DOCSTART-") or text.startswith("#"):
                continue
            first = first or number
            size += len(raw) + 1
            if error is not None or size > max_row_bytes:
                continue  # the sentence is refused; its lines are only counted
            fields = text.split()
            if len(fields) < 2:
                error = RowError(number, "tags", "missing_tag", text[:200])
                continue
            tokens.append(fields[0])
            tags.append(fields[-1])
    close()
    if records:
        yield Chunk(lines, records)
    if sentences == 0:
        raise FileRejected("empty", "no sentences")
