"""The registry's interfaces, in one place: what a metadata backend and an artifact store must do.

A `Registry` (registry/registry.py) composes one of each: SQLite (registry/sqlite.py) or PostgreSQL
(registry/postgres.py) metadata, and local files (registry/local.py) or an S3-compatible object store
(registry/s3.py); registry/backends.py picks them from the config's URLs. Callers only ever see
`Registry`.

Versions are immutable: their files (covered by a sha256 manifest) and their record never change.
Everything that happens to a version afterwards, its gate decision, champion switches, pins and
rollbacks, is appended as an event; the champion is the target of the latest switch.
"""

from __future__ import annotations

import abc
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

CHAMPION_ACTIONS = ("promote", "manual_promote", "rollback")
PIN_ACTIONS = ("pin", "unpin")


@dataclass(frozen=True, kw_only=True)
class VersionRecord:
    version: str  # "v0001"
    parent: str | None
    created_at: str
    strategy: str
    kind: str  # "full": a complete model; "lora": an adapter over the parent's weights
    manifest_sha256: str
    info: dict[str, Any] = field(default_factory=dict)  # lineage: data, config, libraries, ...


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    at: str
    actor: str  # "daemon" | "cli"
    action: str  # promote | manual_promote | rollback | pin | unpin
    from_: str | None
    to: str | None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "actor": self.actor, "action": self.action, "from": self.from_, "to": self.to,
                "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class Decision:
    version: str
    decision: str  # promoted | rejected | failed | held
    at: str
    gate: dict[str, Any] = field(default_factory=dict)  # {"passed": bool, "reasons": [...]}
    metrics: dict[str, Any] = field(default_factory=dict)


class MetadataBackend(abc.ABC):
    """Version records and append-only events. Writers are serialised by `transaction()`; a backend
    opens, commits and rolls back its own kind of transaction (`_begin`, `_commit`, `_rollback`)."""

    _lock: threading.RLock  # set by each backend's __init__, with `_depth = 0`
    _depth: int

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """An exclusive write transaction; nested calls (on the thread holding it) join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            handle = self._begin()
            self._depth = 1
            try:
                yield
            except BaseException as exc:
                self._depth = 0
                self._rollback(handle, exc)
                raise
            else:
                self._depth = 0
                self._commit(handle)
            finally:
                self._depth = 0

    @abc.abstractmethod
    def _begin(self) -> Any:
        """Open the outermost write transaction; what `_commit`/`_rollback` need to end it."""

    @abc.abstractmethod
    def _commit(self, handle: Any) -> None: ...

    @abc.abstractmethod
    def _rollback(self, handle: Any, exc: BaseException) -> None: ...

    @abc.abstractmethod
    def next_version(self) -> str:
        """The id the next version will get (call inside a transaction)."""

    @abc.abstractmethod
    def add_version(self, record: VersionRecord) -> None: ...

    @abc.abstractmethod
    def get_version(self, version: str) -> VersionRecord | None: ...

    @abc.abstractmethod
    def list_versions(self) -> list[VersionRecord]:
        """Oldest first."""

    @abc.abstractmethod
    def add_decision(self, decision: Decision) -> None: ...

    @abc.abstractmethod
    def decision(self, version: str) -> Decision | None:
        """The latest decision recorded for the version."""

    @abc.abstractmethod
    def decisions(self) -> list[Decision]:
        """Every decision of every version, oldest first."""

    @abc.abstractmethod
    def append_audit(self, entry: AuditEntry) -> None: ...

    @abc.abstractmethod
    def audit(self) -> list[AuditEntry]:
        """Every event, oldest first."""

    @abc.abstractmethod
    def file_stamps(self, version: str) -> dict[str, tuple[int, int, int, int]]:
        """file -> (size, mtime_ns, ctime_ns, inode) as last fully verified."""

    @abc.abstractmethod
    def set_file_stamps(self, version: str, stamps: dict[str, tuple[int, int, int, int]]) -> None: ...

    @abc.abstractmethod
    def serving_manifest(self, version: str) -> str | None:
        """sha256 of the manifest of the version's materialised serving directory, if one exists."""

    @abc.abstractmethod
    def set_serving_manifest(self, version: str, manifest_sha256: str | None) -> None: ...

    @abc.abstractmethod
    def mark_pruned(self, version: str, at: str) -> None:
        """Record that the version's files are to go (retention); written before any file is touched."""

    @abc.abstractmethod
    def pruned(self) -> dict[str, str]:
        """version -> when its files were pruned, for every pruned version."""

    @abc.abstractmethod
    def close(self) -> None: ...


class ArtifactStore(abc.ABC):
    """Where version files live. Publishing is atomic: a version's files appear whole or not at all."""

    @abc.abstractmethod
    def publish(self, version: str, staging: Path) -> None:
        """Move a fully written staging directory into place as `version` (immutable from then on)."""

    @abc.abstractmethod
    def local_path(self, version: str) -> Path:
        """A local directory holding the version's files (a remote store returns its local cache)."""

    def fetch(self, version: str) -> Path:
        """`local_path`, after bringing the files there if they are not yet (a remote store downloads)."""
        return self.local_path(version)

    @abc.abstractmethod
    def exists(self, version: str) -> bool: ...

    @abc.abstractmethod
    def versions_present(self) -> set[str]: ...

    def has_files(self, version: str) -> bool:
        """Whether any file of the version is there, whole or not (unrecorded: a write's leftover)."""
        return version in self.versions_present()

    @abc.abstractmethod
    def discard(self, version: str) -> None:
        """Remove a version's files (only for versions the metadata never recorded: crash leftovers)."""

    @abc.abstractmethod
    def prune(self, version: str) -> None:
        """Remove a recorded version's files for good, once the metadata marks it pruned.

        Crash-safe and idempotent: the files leave the version's place at once (whole), and a crash
        while they are deleted leaves only a leftover that `clean_pruned` removes.
        """

    @abc.abstractmethod
    def clean_pruned(self) -> int:
        """Remove leftovers of interrupted prunes; returns how many."""

    @abc.abstractmethod
    def staging_dir(self) -> Path:
        """A fresh directory to write a new version into before `publish`."""

    @abc.abstractmethod
    def clean_staging(self) -> int:
        """Remove leftovers of interrupted writes; returns how many."""

    @abc.abstractmethod
    def size(self, version: str) -> int: ...
