"""Active or standby: which daemon of a group sharing one PostgreSQL registry ingests and trains.

The daemon holding the registry's lease (registry/lease.py) is active; the others are standbys: they
serve /metrics, /healthz and /readyz, answer `lifelong update` requests by naming the active one,
and try for the lease every `POLL` seconds, so one takes over within 30 s of the active dying (its
session, and the lock, end with it). The group shares the row store, archive and quarantine
(`failover.state`), so the new active finds every row the dead one took in: an undecided batch is
trained (again, from the start: the cut run left nothing decided) and files still in the inbox are
ingested. A daemon on a SQLite registry is alone and always active.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from daemon.home import Home
from daemon.ingest.store import Store
from registry.errors import MetadataUnavailable

log = logging.getLogger(__name__)
POLL = 2.0  # seconds between a standby's tries for the lease (with the lease's keepalives: < 30 s)
CHECK = 1.0  # seconds between the active's checks that the lease is still its own


def shared_metadata(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Role:
    def __init__(self, metadata_url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lease = None
        if shared_metadata(metadata_url):
            from registry.lease import Lease

            self.lease = Lease(metadata_url)
        self.active = self.lease is None
        self.holder: str | None = None  # "HOST pid PID" of the active daemon, as a standby last saw it
        self.error: str | None = None  # why a standby could not reach the database last time it tried
        self._next_try = self._next_check = float("-inf")

    @property
    def name(self) -> str:
        return "active" if self.active else "standby"

    def take(self) -> bool:
        """A standby's try for the lease, at most every POLL seconds; True once active."""
        if self.active or self.lease is None:
            self.active = True
            return True
        if self.clock() < self._next_try:
            return False
        self._next_try = self.clock() + POLL
        try:
            self.active = self.lease.try_acquire()
            self.holder = self.lease.me if self.active else self.lease.holder()
            self.error = None
        except MetadataUnavailable as exc:
            self.error = str(exc)
            log.warning("standby cannot reach the registry database for the lease: %s", exc)
        return self.active

    def kept(self) -> bool:
        """The active's check, at most every CHECK seconds, that the lease is still its own. A lease
        whose session broke is lost for good (another daemon may hold it now): the daemon steps down."""
        if self.lease is None or not self.active:
            return self.active
        if self.clock() < self._next_check:
            return True
        self._next_check = self.clock() + CHECK
        if not self.lease.held():
            self.active = False
            self._next_try = float("-inf")
        return self.active

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
        self.active = self.lease is None


def settle_decided(home: Home) -> None:
    """On taking over: a batch the dead active decided in the registry, but had not yet recorded in
    the row store (killed between the two), is recorded from the registry instead of trained twice;
    a promotion it decided but did not make is made."""
    from daemon.home import open_registry

    with Store(home.store_path) as store:
        batch = store.undecided_batch()
        if batch is None:
            return
        files = store.batch_files(batch)
        with open_registry(home, recover=False) as registry:
            for record in reversed(registry.versions()):
                data = record.info.get("data")
                if not isinstance(data, dict) or data.get("experience") != batch or data.get("files") != files:
                    continue
                decided = registry.decision_record(record.version)
                if decided is None:
                    continue  # registered but never judged: the batch is trained again
                if decided.decision == "promoted" and registry.champion() != record.version and not registry.audit(record.version):
                    registry.promote(record.version, actor="daemon", reason="; ".join(decided.gate.get("reasons", [])))
                store.record_update(batch_id=batch, started_at=decided.at, finished_at=decided.at, version=record.version,
                                    decision=decided.decision, reasons=list(decided.gate.get("reasons", [])),
                                    summary={"metrics": decided.metrics, "recovered": True})
                log.warning("batch %s was decided (%s, %s) by a daemon that died before recording it; recorded, "
                            "not trained again", batch, decided.decision, record.version)
                return
