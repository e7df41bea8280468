"""The PostgreSQL metadata backend (`registry.metadata = "postgresql://user@host/db"`, psycopg 3).

The same tables as the SQLite backend, with the rules kept by the database: keys, foreign keys and
checks, and writers serialised by a transaction-scoped advisory lock taken first in every write
transaction (the counterpart of SQLite's BEGIN IMMEDIATE), so two daemons or a daemon and the CLI on
different machines never hand out one version number twice. The password comes from the
environment (PGPASSWORD, PGPASSFILE, PGSERVICE: whatever libpq reads), never from the config.
A lost connection is opened again at the next call; the call that saw it fails with
MetadataUnavailable and its transaction is rolled back by the server.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from registry.abc import AuditEntry, Decision, MetadataBackend, VersionRecord
from registry.errors import MetadataUnavailable, MissingExtra

# pg_advisory_xact_lock key of the registry's write lock: "lifelong" in ASCII, as a bigint
WRITE_LOCK = 0x6C6966656C6F6E67
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lifelong_schema (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY CHECK (seq > 0),
    version TEXT NOT NULL UNIQUE CHECK (version ~ '^v[0-9]{4,}$'),
    parent TEXT REFERENCES versions (version),
    created_at TEXT NOT NULL,
    strategy TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'lora')),
    manifest_sha256 TEXT NOT NULL CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
    info JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version TEXT NOT NULL REFERENCES versions (version),
    decision TEXT NOT NULL,
    at TEXT NOT NULL,
    gate JSONB NOT NULL,
    metrics JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('promote', 'manual_promote', 'rollback', 'pin', 'unpin')),
    from_version TEXT REFERENCES versions (version),
    to_version TEXT REFERENCES versions (version),
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serving (
    version TEXT PRIMARY KEY REFERENCES versions (version),
    manifest_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS file_stamps (
    version TEXT NOT NULL,
    file TEXT NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    ctime_ns BIGINT NOT NULL,
    inode BIGINT NOT NULL,
    PRIMARY KEY (version, file)
);
CREATE TABLE IF NOT EXISTS pruned (
    version TEXT PRIMARY KEY REFERENCES versions (version),
    at TEXT NOT NULL
);
"""

_COLUMNS = "version, parent, created_at, strategy, kind, manifest_sha256, info"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise MissingExtra("remote", "registry.metadata = \"postgresql://...\" needs psycopg") from exc
    return psycopg


class PostgresMetadata(MetadataBackend):
    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._psycopg = _psycopg()
        self._lock = threading.RLock()
        self._depth = 0
        self._db: Any = None
        with self._errors("open"):
            self._connect()
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))  # one schema creator at a time
                self._db.execute(_SCHEMA)
                self._db.execute("INSERT INTO lifelong_schema (version) VALUES (%s) ON CONFLICT DO NOTHING",
                                 (SCHEMA_VERSION,))

    def _connect(self) -> None:
        self._db = self._psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                         application_name="lifelong")

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._psycopg.OperationalError as exc:
            raise MetadataUnavailable(_redact(self.url), f"{doing}: {exc}".strip()) from exc

    def _conn(self) -> Any:
        if self._db is None or self._db.closed or self._db.broken:
            if self._depth:  # the transaction died with the connection: nothing of it was committed
                raise MetadataUnavailable(_redact(self.url), "the connection was lost inside a transaction")
            with self._errors("reconnect"):
                self._connect()
        return self._db

    def _stale(self) -> bool:
        return self._db is None or self._db.closed or self._db.broken

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            try:
                return self._conn().execute(sql, params)
            except self._psycopg.OperationalError as exc:
                # a read outside a transaction on a connection the server dropped since the last call
                # (a restart, a failover) is sent once more on a new one; a write never is
                if self._depth or not self._stale() or not sql.lstrip().upper().startswith("SELECT"):
                    raise MetadataUnavailable(_redact(self.url), f"query: {exc}".strip()) from exc
            with self._errors("query"):
                return self._conn().execute(sql, params)

    def _begin(self) -> Any:
        """A transaction holding the write lock; a connection found dead at this point (nothing sent
        in the transaction yet) is replaced once."""
        for attempt in (1, 2):
            tx = None
            try:
                tx = self._conn().transaction()
                tx.__enter__()
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                return tx
            except self._psycopg.OperationalError as exc:
                if tx is not None and not self._stale():
                    tx.__exit__(type(exc), exc, exc.__traceback__)
                if attempt == 2 or not self._stale():
                    raise MetadataUnavailable(_redact(self.url), f"begin: {exc}".strip()) from exc
        raise MetadataUnavailable(_redact(self.url), "begin")  # pragma: no cover (the loop returns or raises)

    def _commit(self, handle: Any) -> None:
        with self._errors("commit"):
            handle.__exit__(None, None, None)

    def _rollback(self, handle: Any, exc: BaseException) -> None:
        try:
            handle.__exit__(type(exc), exc, exc.__traceback__)
        except self._psycopg.OperationalError:
            pass  # the connection is gone; the server rolled the transaction back

    def next_version(self) -> str:
        seq = self._execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions").fetchone()[0]
        return f"v{seq:04d}"

    def add_version(self, record: VersionRecord) -> None:
        self._execute(
            f"INSERT INTO versions (seq, {_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (int(record.version[1:]), record.version, record.parent, record.created_at, record.strategy, record.kind,
             record.manifest_sha256, json.dumps(record.info, sort_keys=True, default=str)),
        )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> VersionRecord:
        return VersionRecord(version=row[0], parent=row[1], created_at=row[2], strategy=row[3], kind=row[4],
                             manifest_sha256=row[5], info=row[6])

    def get_version(self, version: str) -> VersionRecord | None:
        row = self._execute(f"SELECT {_COLUMNS} FROM versions WHERE version = %s", (version,)).fetchone()
        return None if row is None else self._record(row)

    def list_versions(self) -> list[VersionRecord]:
        return [self._record(row) for row in self._execute(f"SELECT {_COLUMNS} FROM versions ORDER BY seq").fetchall()]

    def add_decision(self, decision: Decision) -> None:
        self._execute("INSERT INTO decisions (version, decision, at, gate, metrics) VALUES (%s, %s, %s, %s, %s)",
                      (decision.version, decision.decision, decision.at, json.dumps(decision.gate, default=str),
                       json.dumps(decision.metrics, default=str)))

    def decision(self, version: str) -> Decision | None:
        row = self._execute("SELECT version, decision, at, gate, metrics FROM decisions WHERE version = %s"
                            " ORDER BY id DESC LIMIT 1", (version,)).fetchone()
        if row is None:
            return None
        return Decision(version=row[0], decision=row[1], at=row[2], gate=row[3], metrics=row[4])

    def decisions(self) -> list[Decision]:
        rows = self._execute("SELECT version, decision, at, gate, metrics FROM decisions ORDER BY id").fetchall()
        return [Decision(version=r[0], decision=r[1], at=r[2], gate=r[3], metrics=r[4]) for r in rows]

    def append_audit(self, entry: AuditEntry) -> None:
        self._execute("INSERT INTO audit (at, actor, action, from_version, to_version, reason)"
                      " VALUES (%s, %s, %s, %s, %s, %s)",
                      (entry.at, entry.actor, entry.action, entry.from_, entry.to, entry.reason))

    def audit(self) -> list[AuditEntry]:
        rows = self._execute("SELECT at, actor, action, from_version, to_version, reason FROM audit ORDER BY id")
        return [AuditEntry(at=r[0], actor=r[1], action=r[2], from_=r[3], to=r[4], reason=r[5]) for r in rows.fetchall()]

    def file_stamps(self, version: str) -> dict[str, tuple[int, int, int, int]]:
        rows = self._execute("SELECT file, size, mtime_ns, ctime_ns, inode FROM file_stamps WHERE version = %s",
                             (version,))
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows.fetchall()}

    def set_file_stamps(self, version: str, stamps: dict[str, tuple[int, int, int, int]]) -> None:
        with self.transaction():
            self._execute("DELETE FROM file_stamps WHERE version = %s", (version,))
            with self._lock, self._errors("query"), self._conn().cursor() as cursor:
                cursor.executemany("INSERT INTO file_stamps VALUES (%s, %s, %s, %s, %s, %s)",
                                   [(version, name, *values) for name, values in stamps.items()])

    def serving_manifest(self, version: str) -> str | None:
        row = self._execute("SELECT manifest_sha256 FROM serving WHERE version = %s", (version,)).fetchone()
        return None if row is None else row[0]

    def set_serving_manifest(self, version: str, manifest_sha256: str | None) -> None:
        with self.transaction():
            self._execute("DELETE FROM serving WHERE version = %s", (version,))
            self._execute("DELETE FROM file_stamps WHERE version = %s", (f"{version}/serving",))
            if manifest_sha256 is not None:
                self._execute("INSERT INTO serving VALUES (%s, %s)", (version, manifest_sha256))

    def mark_pruned(self, version: str, at: str) -> None:
        with self.transaction():
            self._execute("INSERT INTO pruned VALUES (%s, %s) ON CONFLICT (version) DO NOTHING", (version, at))
            self._execute("DELETE FROM file_stamps WHERE version IN (%s, %s)", (version, f"{version}/serving"))
            self._execute("DELETE FROM serving WHERE version = %s", (version,))

    def pruned(self) -> dict[str, str]:
        return dict(self._execute("SELECT version, at FROM pruned ORDER BY version").fetchall())

    def close(self) -> None:
        if self._db is not None and not self._db.closed:
            self._db.close()


def _redact(url: str) -> str:
    """The URL without a password, should one have slipped in (the config refuses one)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))
