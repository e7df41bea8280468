"""The SQLite metadata backend: version records and append-only events in one file."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from registry.abc import AuditEntry, Decision, MetadataBackend, VersionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY,
    version TEXT NOT NULL UNIQUE,
    parent TEXT,
    created_at TEXT NOT NULL,
    strategy TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'lora')),
    manifest_sha256 TEXT NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL REFERENCES versions (version),
    decision TEXT NOT NULL,
    at TEXT NOT NULL,
    gate TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    from_version TEXT,
    to_version TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serving (
    version TEXT PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS file_stamps (
    version TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    PRIMARY KEY (version, file)
);
-- added with retention; registries made before it gain the table when opened
CREATE TABLE IF NOT EXISTS pruned (
    version TEXT PRIMARY KEY REFERENCES versions (version),
    at TEXT NOT NULL
);
"""


class SqliteMetadata(MetadataBackend):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self._depth = 0
        self._lock = threading.RLock()

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _commit(self, handle: None) -> None:
        self._db.execute("COMMIT")

    def _rollback(self, handle: None, exc: BaseException) -> None:
        self._db.execute("ROLLBACK")

    def next_version(self) -> str:
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions").fetchone()[0]
        return f"v{seq:04d}"

    def add_version(self, record: VersionRecord) -> None:
        self._db.execute(
            "INSERT INTO versions (seq, version, parent, created_at, strategy, kind, manifest_sha256, info)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (int(record.version[1:]), record.version, record.parent, record.created_at, record.strategy, record.kind,
             record.manifest_sha256, json.dumps(record.info, sort_keys=True)),
        )

    def _record(self, row: tuple) -> VersionRecord:  # type: ignore[type-arg]
        return VersionRecord(version=row[0], parent=row[1], created_at=row[2], strategy=row[3], kind=row[4],
                             manifest_sha256=row[5], info=json.loads(row[6]))

    def get_version(self, version: str) -> VersionRecord | None:
        row = self._db.execute(
            "SELECT version, parent, created_at, strategy, kind, manifest_sha256, info FROM versions WHERE version = ?",
            (version,),
        ).fetchone()
        return None if row is None else self._record(row)

    def list_versions(self) -> list[VersionRecord]:
        cursor = self._db.execute(
            "SELECT version, parent, created_at, strategy, kind, manifest_sha256, info FROM versions ORDER BY seq")
        return [self._record(row) for row in cursor]

    def add_decision(self, decision: Decision) -> None:
        self._db.execute(
            "INSERT INTO decisions (version, decision, at, gate, metrics) VALUES (?, ?, ?, ?, ?)",
            (decision.version, decision.decision, decision.at, json.dumps(decision.gate), json.dumps(decision.metrics)),
        )

    def decision(self, version: str) -> Decision | None:
        row = self._db.execute(
            "SELECT version, decision, at, gate, metrics FROM decisions WHERE version = ? ORDER BY id DESC LIMIT 1",
            (version,),
        ).fetchone()
        if row is None:
            return None
        return Decision(version=row[0], decision=row[1], at=row[2], gate=json.loads(row[3]), metrics=json.loads(row[4]))

    def decisions(self) -> list[Decision]:
        cursor = self._db.execute("SELECT version, decision, at, gate, metrics FROM decisions ORDER BY id")
        return [Decision(version=r[0], decision=r[1], at=r[2], gate=json.loads(r[3]), metrics=json.loads(r[4]))
                for r in cursor]

    def append_audit(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (at, actor, action, from_version, to_version, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.at, entry.actor, entry.action, entry.from_, entry.to, entry.reason),
        )

    def audit(self) -> list[AuditEntry]:
        cursor = self._db.execute("SELECT at, actor, action, from_version, to_version, reason FROM audit ORDER BY id")
        return [AuditEntry(at=r[0], actor=r[1], action=r[2], from_=r[3], to=r[4], reason=r[5]) for r in cursor]

    def file_stamps(self, version: str) -> dict[str, tuple[int, int, int, int]]:
        cursor = self._db.execute(
            "SELECT file, size, mtime_ns, ctime_ns, inode FROM file_stamps WHERE version = ?", (version,))
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in cursor}

    def set_file_stamps(self, version: str, stamps: dict[str, tuple[int, int, int, int]]) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM file_stamps WHERE version = ?", (version,))
            self._db.executemany(
                "INSERT INTO file_stamps VALUES (?, ?, ?, ?, ?, ?)",
                ((version, name, *values) for name, values in stamps.items()),
            )

    def serving_manifest(self, version: str) -> str | None:
        row = self._db.execute("SELECT manifest_sha256 FROM serving WHERE version = ?", (version,)).fetchone()
        return None if row is None else row[0]

    def set_serving_manifest(self, version: str, manifest_sha256: str | None) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM serving WHERE version = ?", (version,))
            self._db.execute("DELETE FROM file_stamps WHERE version = ?", (f"{version}/serving",))
            if manifest_sha256 is not None:
                self._db.execute("INSERT INTO serving VALUES (?, ?)", (version, manifest_sha256))

    def mark_pruned(self, version: str, at: str) -> None:
        with self.transaction():
            self._db.execute("INSERT OR IGNORE INTO pruned VALUES (?, ?)", (version, at))
            self._db.execute("DELETE FROM file_stamps WHERE version IN (?, ?)", (version, f"{version}/serving"))
            self._db.execute("DELETE FROM serving WHERE version = ?", (version,))

    def pruned(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT version, at FROM pruned ORDER BY version"))

    def close(self) -> None:
        self._db.close()
