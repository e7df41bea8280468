"""The file `lifelong eval` scores: every valid row, checked as the inbox checks it, and the first
errors of the rows that failed (counted, not scored). Each task's reader (daemon/update/inference.py,
tagging.py, answers.py) gives its validator and what to keep of a valid row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from daemon.ingest import formats
from daemon.ingest.names import display
from registry.errors import FileRejected, UsageError

if TYPE_CHECKING:
    from daemon.home import Home

MAX_ERRORS = 100  # errors of invalid rows listed in `eval --json` (every invalid row is counted)


@dataclass(frozen=True, kw_only=True)
class Labeled:
    rows: list[tuple[Any, ...]]
    invalid: int  # rows that failed validation (not scored)
    errors: list[dict[str, Any]]  # the first MAX_ERRORS of their errors


def read_valid(home: "Home", path: Path, validate: Callable[[int, dict], Any], keep: Callable[[tuple], tuple],
               on_progress: Callable[[int], None] | None, *, required: tuple[str, ...] = formats.REQUIRED,
               fast: Callable[[formats.Chunk], list[tuple] | None] | None = None) -> Labeled:
    """`validate(line, record)` returns a valid row's tuple or a list of RowErrors; `keep` makes the
    row to score of the tuple; `fast(chunk)`, when given, may take a whole chunk at once (None: it
    cannot, the rows are checked one by one). A file the inbox would quarantine is a UsageError."""
    inbox = home.config.inbox
    rows: list[tuple[Any, ...]] = []
    invalid, errors = 0, []
    try:
        for chunk in formats.read(path, formats.Limits(inbox.max_file_bytes, inbox.max_row_bytes), on_progress,
                                  required=required):
            taken = fast(chunk) if fast is not None else None
            if taken is not None:
                rows += taken
                continue
            for line, record in zip(chunk.lines, chunk.records):
                found = validate(line, record) if isinstance(record, dict) else [record]  # a RowError
                if isinstance(found, list):
                    invalid += 1
                    errors += [error.as_dict() for error in found][: MAX_ERRORS - len(errors)]
                else:
                    rows.append(keep(found))
    except FileRejected as exc:
        raise UsageError(f"{display(str(path))}: {exc}") from None
    return Labeled(rows=rows, invalid=invalid, errors=errors)
