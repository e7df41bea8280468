"""The active/standby lease of several daemons on one PostgreSQL registry: a session-level advisory
lock held on a connection of its own.

Whoever holds the lock is active; the others poll `try_acquire` and stay standby. The lock goes with
its session: when the active process dies its connection closes and the server releases the lock at
once; when its host or network dies, the server's TCP keepalives on the lease connection (set here to
10 s idle, 5 s between probes, 3 probes) end the session within about 25 s, so a standby polling
every 2 s takes over within 30 s. The active must check `held()`
before each step that writes: a lease whose connection broke is lost, whoever holds it now.
The lease connection's application_name names its holder (host and pid), so `holder()` can say who
is active.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Any

from registry.errors import MetadataUnavailable, MissingExtra

KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}
_PREFIX = "lifelong active "


def lease_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lease name."""
    return int.from_bytes(hashlib.sha256(f"lifelong-lease:{name}".encode()).digest()[:8], "big", signed=True)


class Lease:
    def __init__(self, url: str, *, name: str = "active", connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise MissingExtra("remote", "an active/standby lease on PostgreSQL needs psycopg") from exc
        self._psycopg = psycopg
        self.url = url
        self.name = name
        self.key = lease_key(name)
        self.connect_timeout = connect_timeout
        self.me = f"{socket.gethostname()} pid {os.getpid()}"
        self._db: Any = None
        self._held = False
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        if self._db is None or self._db.closed or self._db.broken:
            self._held = False  # a lock never outlives its session
            try:
                self._db = self._psycopg.connect(self.url, autocommit=True, application_name=_PREFIX + self.me,
                                                 connect_timeout=max(1, int(self.connect_timeout)))
                for setting, value in KEEPALIVE.items():  # the server's side: a dead host's session ends
                    self._db.execute(f"SET {setting} = {int(value)}")
            except self._psycopg.OperationalError as exc:
                raise MetadataUnavailable(self.url, f"lease connection: {exc}") from exc
        return self._db

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours); never waits."""
        with self._lock:
            if self.held_unlocked():
                return True
            for attempt in (1, 2):  # a session found dead is replaced once
                try:
                    self._held = bool(self._connect().execute("SELECT pg_try_advisory_lock(%s)",
                                                              (self.key,)).fetchone()[0])
                    return self._held
                except self._psycopg.OperationalError as exc:
                    self._drop()
                    if attempt == 2:
                        raise MetadataUnavailable(self.url, f"lease: {exc}") from exc
            return False

    def held(self) -> bool:
        """Whether this process still holds the lease (its session alive and the lock in it)."""
        with self._lock:
            return self.held_unlocked()

    def held_unlocked(self) -> bool:
        if not self._held or self._db is None or self._db.closed or self._db.broken:
            self._held = False
            return False
        try:
            self._held = bool(self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s)", (self.key,)).fetchone()[0])
        except self._psycopg.OperationalError:
            self._drop()
        return self._held

    def _drop(self) -> None:
        """Forget a dead session (the next call opens a new one); its lock died with it."""
        self._held = False
        if self._db is not None:
            self._db.close()
        self._db = None

    def holder(self) -> str | None:
        """"HOST pid PID" of the active daemon, or None when nobody holds the lease."""
        with self._lock:
            try:
                row = self._connect().execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                    (self.key,)).fetchone()
            except self._psycopg.OperationalError as exc:
                raise MetadataUnavailable(self.url, f"lease: {exc}") from exc
        if row is None:
            return None
        return str(row[0]).removeprefix(_PREFIX)

    def release(self) -> None:
        with self._lock:
            if self._db is not None and not self._db.closed:
                self._db.close()  # the session ends and the lock with it
            self._held = False

    close = release
