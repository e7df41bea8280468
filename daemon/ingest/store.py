"""The row store: a SQLite catalog of every inbox file, batch and label, plus one Arrow segment
of rows per accepted file (see `segments`), all under the home's state/ folder.

Files are the unit of ingestion and of batching: a file's segment is published just before the
transaction that records the file commits, and an update cycle closes every pending file into a
batch (an "experience").
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from daemon.ingest import names, segments
from daemon.ingest.segments import SegmentWriter
from registry.errors import StoreError
from registry.fsutil import remove

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    closed_at TEXT NOT NULL,
    rows_train INTEGER NOT NULL,
    rows_eval INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    received_at TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'quarantined')),
    reason TEXT,
    message TEXT,
    dest TEXT NOT NULL,
    duplicate_of INTEGER REFERENCES files (id),
    rows_train INTEGER NOT NULL DEFAULT 0,
    rows_eval INTEGER NOT NULL DEFAULT 0,
    rows_rejected INTEGER NOT NULL DEFAULT 0,
    batch_id INTEGER REFERENCES batches (id),
    error_doc TEXT,
    finalized INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_accepted_sha ON files (sha256) WHERE outcome = 'accepted';
CREATE INDEX IF NOT EXISTS files_unfinalized ON files (finalized) WHERE finalized = 0;
CREATE INDEX IF NOT EXISTS files_batch ON files (batch_id);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL REFERENCES batches (id),
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    version TEXT,
    decision TEXT NOT NULL CHECK (decision IN ('promoted', 'rejected', 'failed', 'held')),
    reasons TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL UNIQUE,
    first_file INTEGER REFERENCES files (id)
);
"""


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    id: int
    name: str
    sha256: str | None
    outcome: str
    reason: str | None
    dest: str
    error_doc: str | None
    rows_train: int
    rows_eval: int
    rows_rejected: int
    finalized: bool


def _record(r: tuple) -> FileRecord:  # type: ignore[type-arg]
    return FileRecord(id=r[0], name=names.from_db(r[1]), sha256=r[2], outcome=r[3], reason=r[4],
                      dest=names.from_db(r[5]), error_doc=r[6], rows_train=r[7], rows_eval=r[8],
                      rows_rejected=r[9], finalized=bool(r[10]))


class Store:
    """SQLite row store. One writer at a time (the ingest lock); any number of readers."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.segments = path.parent / "segments"
        if not readonly:
            self.segments.mkdir(exist_ok=True)
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
            else:
                self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
                self._db.execute("PRAGMA journal_mode = WAL")
                # FULL: a commit is on disk before the ingested file is moved to archive/.
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.executescript(_SCHEMA)
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"row store {path} is unusable: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"row store {self.path} has schema {row[0]}, this lifelong reads {SCHEMA_VERSION}")

    # -- writing one file -------------------------------------------------------------------------
    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def add_file(self, *, name: str, sha256: str | None, size: int | None, received_at: str) -> int:
        """Insert a file record inside the open transaction (as quarantined until `finish_file`)."""
        cursor = self._db.execute(
            "INSERT INTO files (name, sha256, size, received_at, outcome, dest) VALUES (?, ?, ?, ?, 'quarantined', ?)",
            (names.to_db(name), sha256, size, received_at, names.to_db(name)),
        )
        return int(cursor.lastrowid)  # type: ignore[arg-type]

    def segment_writer(self, file_id: int, schema: pa.Schema = segments.SCHEMA) -> SegmentWriter:
        return SegmentWriter(self.segments, file_id, schema)

    def add_labels(self, file_id: int, names: Iterable[str]) -> None:
        start = self._db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM labels").fetchone()[0]
        self._db.executemany(
            "INSERT OR IGNORE INTO labels (name, position, first_file) VALUES (?, ?, ?)",
            ((name, start + i, file_id) for i, name in enumerate(names)),
        )

    def finish_file(self, file_id: int, *, outcome: str, dest: str, reason: str | None = None,
                    message: str | None = None, error_doc: str | None = None, duplicate_of: int | None = None,
                    rows_train: int = 0, rows_eval: int = 0, rows_rejected: int = 0) -> None:
        """Fill in the file record's outcome and row counts (still inside the transaction)."""
        self._db.execute(
            "UPDATE files SET outcome = ?, dest = ?, reason = ?, message = ?, error_doc = ?, duplicate_of = ?,"
            " rows_train = ?, rows_eval = ?, rows_rejected = ? WHERE id = ?",
            (outcome, names.to_db(dest), reason, message, error_doc, duplicate_of, rows_train, rows_eval, rows_rejected,
             file_id),
        )

    def mark_finalized(self, file_id: int) -> None:
        self._db.execute("UPDATE files SET finalized = 1 WHERE id = ?", (file_id,))

    # -- reading ----------------------------------------------------------------------------------
    def accepted_with_sha(self, sha256: str) -> int | None:
        row = self._db.execute(
            "SELECT id FROM files WHERE sha256 = ? AND outcome = 'accepted' ORDER BY id LIMIT 1", (sha256,)
        ).fetchone()
        return None if row is None else int(row[0])

    _RECORD = ("SELECT id, name, sha256, outcome, reason, dest, error_doc, rows_train, rows_eval, rows_rejected,"
               " finalized FROM files")

    def unfinalized(self) -> list[FileRecord]:
        return [_record(r) for r in self._db.execute(f"{self._RECORD} WHERE finalized = 0 ORDER BY id")]

    def file_records(self) -> list[FileRecord]:
        """Every inbox file ever recorded, in the order it was taken."""
        return [_record(r) for r in self._db.execute(f"{self._RECORD} ORDER BY id")]

    def file_record(self, file_id: int) -> FileRecord:
        return _record(self._db.execute(f"{self._RECORD} WHERE id = ?", (file_id,)).fetchone())

    def labels(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM labels ORDER BY position")]

    def counts(self, *, pending: bool) -> dict[str, int]:
        where = "outcome = 'accepted'" + (" AND batch_id IS NULL" if pending else "")
        train, evals = self._db.execute(
            f"SELECT COALESCE(SUM(rows_train), 0), COALESCE(SUM(rows_eval), 0) FROM files WHERE {where}"
        ).fetchone()
        return {"train": int(train), "eval": int(evals)}

    def file_outcomes(self) -> dict[str, int]:
        counts = {"accepted": 0, "duplicate": 0, "quarantined": 0}
        for outcome, number in self._db.execute("SELECT outcome, COUNT(*) FROM files GROUP BY outcome"):
            counts[outcome] = int(number)
        return counts

    def rejected_rows(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(rows_rejected), 0) FROM files").fetchone()[0])

    def oldest_pending(self) -> str | None:
        row = self._db.execute(
            "SELECT MIN(received_at) FROM files WHERE outcome = 'accepted' AND batch_id IS NULL"
            " AND rows_train + rows_eval > 0"
        ).fetchone()
        return row[0]

    # -- batches ----------------------------------------------------------------------------------
    def close_batch(self, closed_at: str) -> int | None:
        """Close every pending file into a new batch; its id, or None when nothing is pending."""
        self.begin()
        try:
            pending = self.counts(pending=True)
            if pending["train"] + pending["eval"] == 0:
                self.rollback()
                return None
            batch_id = int(self._db.execute(
                "INSERT INTO batches (closed_at, rows_train, rows_eval) VALUES (?, ?, ?)",
                (closed_at, pending["train"], pending["eval"]),
            ).lastrowid)  # type: ignore[arg-type]
            self._db.execute(
                "UPDATE files SET batch_id = ? WHERE outcome = 'accepted' AND batch_id IS NULL", (batch_id,)
            )
            self.commit()
            return batch_id
        except BaseException:
            self.rollback()
            raise

    def batches(self) -> list[dict[str, object]]:
        cursor = self._db.execute("SELECT id, closed_at, rows_train, rows_eval FROM batches ORDER BY id")
        return [{"batch": r[0], "closed_at": r[1], "train": r[2], "eval": r[3]} for r in cursor]

    def batch_files(self, batch_id: int) -> list[str]:
        """The archive names of a batch's files, shown safely (any byte may be in a name)."""
        return [names.display(names.from_db(row[0]))
                for row in self._db.execute("SELECT dest FROM files WHERE batch_id = ? ORDER BY id", (batch_id,))]

    def batch_file_ids(self, batch_id: int) -> list[int]:
        return [row[0] for row in self._db.execute(
            "SELECT id FROM files WHERE batch_id = ? AND rows_train + rows_eval > 0 ORDER BY id", (batch_id,))]

    def iter_rows(self, batch_id: int, split: str, columns: tuple[str, ...] = ("text", "label")) -> Iterator[tuple]:
        """(text, label), or the values of `columns` (a task's, strategies/tasks TASKS), of one split
        of one batch, in ingestion order."""
        flag = 1 if split == "eval" else 0
        for file_id in self.batch_file_ids(batch_id):
            table = segments.read(self.segments, file_id, ["split", *columns])
            table = table.filter(pc.equal(table["split"], flag))
            yield from zip(*(table[column].to_pylist() for column in columns))

    def undecided_batch(self) -> int | None:
        """The newest batch no update has decided yet (a failed or interrupted one is retried) and
        that was not given up after `schedule.max_attempts` failures."""
        row = self._db.execute(
            "SELECT MAX(id) FROM batches WHERE id NOT IN (SELECT batch_id FROM updates"
            " WHERE decision != 'failed' OR json_extract(summary, '$.gave_up'))").fetchone()
        return row[0]

    def failed_attempts(self, batch_id: int) -> int:
        """Failed updates of one batch. Attempts of one batch are always in a row: any other
        decision ends its retries; an interrupted run (SIGTERM) records nothing and is no attempt."""
        return int(self._db.execute(
            "SELECT COUNT(*) FROM updates WHERE batch_id = ? AND decision = 'failed'", (batch_id,)).fetchone()[0])

    def given_up(self) -> list[dict[str, Any]]:
        """Batches recorded `failed` for good, newest first: attempts, the last error, when."""
        cursor = self._db.execute(
            "SELECT batch_id, json_extract(summary, '$.attempt'), reasons, finished_at FROM updates"
            " WHERE decision = 'failed' AND json_extract(summary, '$.gave_up') ORDER BY id DESC")
        return [{"batch": r[0], "attempts": r[1], "last_error": "; ".join(json.loads(r[2])), "finished_at": r[3]}
                for r in cursor]

    def record_update(self, *, batch_id: int, started_at: str, finished_at: str, version: str | None, decision: str,
                      reasons: list[str], summary: dict) -> None:
        self._db.execute(
            "INSERT INTO updates (batch_id, started_at, finished_at, version, decision, reasons, summary)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (batch_id, started_at, finished_at, version, decision, json.dumps(reasons), json.dumps(summary)))

    def updates(self, limit: int | None = None) -> list[dict]:
        """Newest first."""
        cursor = self._db.execute(
            "SELECT id, batch_id, started_at, finished_at, version, decision, reasons, summary FROM updates ORDER BY id DESC"
            + (f" LIMIT {int(limit)}" if limit else ""))
        return [{"update": r[0], "batch": r[1], "started_at": r[2], "finished_at": r[3], "version": r[4],
                 "decision": r[5], "reasons": json.loads(r[6]), "summary": json.loads(r[7])} for r in cursor]

    def update_counts(self) -> dict[str, int]:
        counts = {"promoted": 0, "rejected": 0, "failed": 0, "held": 0}
        for decision, number in self._db.execute("SELECT decision, COUNT(*) FROM updates GROUP BY decision"):
            counts[decision] = int(number)
        return counts

    def consecutive_failures(self) -> int:
        count = 0
        for (decision,) in self._db.execute("SELECT decision FROM updates ORDER BY id DESC"):
            if decision != "failed":
                break
            count += 1
        return count

    def row_count(self) -> int:
        """Rows of every accepted file, as the catalog counts them."""
        return sum(self.counts(pending=False).values())

    def segment_rows(self) -> dict[int, int]:
        """file id -> rows actually stored in its segment (for audits and tests)."""
        result = {}
        for file_id in segments.ids_on_disk(self.segments):
            result[file_id] = segments.read(self.segments, file_id, ["split"]).num_rows
        return result

    def remove_orphan_segments(self) -> int:
        """Delete temp segments and segments no committed file owns (a crash before the commit)."""
        owned = {row[0] for row in self._db.execute(
            "SELECT id FROM files WHERE outcome = 'accepted' AND rows_train + rows_eval > 0")}
        removed = 0
        for entry in list(self.segments.iterdir()):
            stem = entry.name.removesuffix(".arrow")
            if entry.name.startswith(".") or not stem.isdigit() or int(stem) not in owned:
                remove(entry)  # whatever it is: a stray folder here must not stop every pass
                removed += 1
        return removed
