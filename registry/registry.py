"""The registry: immutable versions, the champion alias with its audit history, integrity checks.

Layout under the registry root (HOME/registry):
    registry.sqlite        version records and append-only events (decisions, switches, pins)
    versions/vNNNN/        each version's files, read-only, with manifest.json
    serving/vNNNN/         merged weights materialised for a LoRA version (a cache, re-creatable)
    versions/.pruned-vNNNN a version's files on their way out (retention; removed at the next open)
    champion               symlink -> a complete Hugging Face model directory of the champion

A version directory holds `model/` (a complete model: a "full" version) or `adapter/` plus
`model-config/` (a peft adapter over the parent's weights, with the grown head: a "lora" version),
and optionally `state/` (what the strategy needs next time) and `version.json` (lineage).

Every change of champion is serialised by a lock, written to the audit log (the source of truth)
and only then applied to the `champion` symlink by an atomic rename; `open` repairs a symlink left
behind by a crash between the two. Retention (`gc`) likewise records a version as pruned before its
files are renamed out of sight and deleted; `open` finishes a prune a crash interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from registry import manifest, retention
from registry.abc import (CHAMPION_ACTIONS, ArtifactStore, AuditEntry, Decision, MetadataBackend, VersionRecord)
from registry.backends import REMOTE_MARKER, mark_remote
from registry.errors import Conflict, IntegrityError, UsageError, VersionNotFound, VersionPruned
from registry.fsutil import fsync_dir, remove_tree
from registry.local import LocalArtifacts
from registry.lock import PidLock
from registry.serving import Materializer, ServingCopies, no_materializer
from registry.sqlite import SqliteMetadata

log = logging.getLogger(__name__)

# (version, model dir) -> called after every change of champion
OnSwitch = Callable[[str, Path], None]
LOCK_TIMEOUT = 120.0


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Registry:
    def __init__(self, root: Path, *, metadata: MetadataBackend | None = None, artifacts: ArtifactStore | None = None,
                 materializer: Materializer = no_materializer, on_switch: OnSwitch | None = None,
                 clock: Callable[[], str] = utcnow, recover: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        marker = root / REMOTE_MARKER
        if metadata is None and artifacts is None and marker.exists():
            # opened on the defaults where the config names remote backends: a local registry.sqlite
            # made here would fork the registry silently
            raise UsageError(f"{root} is a registry whose metadata or files live remotely ({marker.read_text().strip()});"
                             " open it with the home's backends (daemon.home.open_registry), or delete"
                             f" {marker} if this home went back to the local registry")
        self.meta = metadata or SqliteMetadata(root / "registry.sqlite")
        self.artifacts = artifacts or LocalArtifacts(root)
        mark_remote(root, metadata=getattr(metadata, "url", ""), artifacts=getattr(artifacts, "url", ""))
        self.on_switch = on_switch
        self.clock = clock
        self.lock = PidLock(root / ".lock", "a registry change")
        self.link = root / "champion"
        self.serving = ServingCopies(root / "serving", self.meta, materializer)
        if recover:
            self.recover()

    def close(self) -> None:
        self.meta.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self) -> None:
        """Remove leftovers of interrupted writes and make the champion link match the audit log."""
        with self.lock.acquire(timeout=LOCK_TIMEOUT):
            self.artifacts.clean_staging()
            self._finish_prunes()
            # in a write transaction: a writer elsewhere (a shared PostgreSQL registry) holds it from
            # the first byte of a version to its record, so nothing in flight is taken for a leftover
            with self.meta.transaction():
                known = {record.version for record in self.meta.list_versions()}
                for orphan in self.artifacts.versions_present() - known:
                    log.warning("removing %s: its files were written but never recorded (interrupted)", orphan)
                    self.artifacts.discard(orphan)
            for leftover in self.root.glob(".champion.*"):
                leftover.unlink()
            self.serving.clean()
            champion = self.champion()
            if champion is not None and self._link_target() != self.model_dir(champion).resolve():
                log.warning("champion link repaired to %s", champion)
                self._point_link(self.model_dir(champion))
            elif champion is None and os.path.lexists(self.link):
                self.link.unlink()

    # -- versions ---------------------------------------------------------------------------------
    def new_staging(self) -> Path:
        return self.artifacts.staging_dir()

    def create_version(self, staging: Path, *, parent: str | None, strategy: str, info: dict[str, Any] | None = None,
                       serving: Path | None = None) -> VersionRecord:
        """Publish a fully written staging directory as the next version; returns its record.

        `serving` may hand over the merged weights of a LoRA version, already made for evaluation.
        """
        kind = _kind_of(staging)
        if parent is not None and self.meta.get_version(parent) is None:
            raise VersionNotFound(parent)
        if kind == "lora" and parent is None:
            raise UsageError("a LoRA version needs a parent whose weights it adapts")
        with self.lock.acquire(timeout=LOCK_TIMEOUT):
            with self.meta.transaction():
                version = self.meta.next_version()
                if self.artifacts.has_files(version):
                    # the write lock is held and the number is unrecorded: these files are what a write
                    # cut short left (its record never committed: the database restarted, say)
                    log.warning("removing %s: its files were written but never recorded (interrupted)", version)
                    self.artifacts.discard(version)
                record_info = {"libraries": library_versions(), **(info or {})}
                (staging / "version.json").write_text(json.dumps(
                    {"version": version, "parent": parent, "strategy": strategy, "kind": kind, **record_info},
                    indent=2, sort_keys=True, default=str))
                manifest_sha = manifest.write(staging, version)
                record = VersionRecord(version=version, parent=parent, created_at=self.clock(), strategy=strategy,
                                       kind=kind, manifest_sha256=manifest_sha, info=record_info)
                self.artifacts.publish(version, staging)
                self.meta.add_version(record)
                # the manifest was hashed from these very files a moment ago: remember their stamps
                # so the first switch to this version needs no second full hash
                self.meta.set_file_stamps(version, manifest.stamps(self.artifacts.local_path(version)))
        if serving is not None and kind == "lora":
            self.serving.adopt(version, serving)
        return record

    def get(self, version: str) -> VersionRecord:
        record = self.meta.get_version(version)
        if record is None:
            raise VersionNotFound(version)
        return record

    def versions(self) -> list[VersionRecord]:
        return self.meta.list_versions()

    def verify(self, version: str, *, full: bool = False) -> Path:
        """Check every file of the version against its manifest; its directory. Raises IntegrityError,
        or VersionPruned when retention dropped its files."""
        record = self.get(version)
        self.require_weights(version)
        path = self.artifacts.fetch(version)
        if not path.is_dir():
            raise IntegrityError(version, ".", "the version's directory is missing")
        manifest.verify(path, version, record.manifest_sha256, self.meta.file_stamps(version), full=full,
                        on_verified=lambda stamps: self.meta.set_file_stamps(version, stamps))
        return path

    def model_dir(self, version: str) -> Path:
        """A verified, complete Hugging Face model directory for the version (materialised for LoRA)."""
        record = self.get(version)
        path = self.verify(version)
        if record.kind == "full":
            return path / "model"
        return self.serving.get(version, path, lambda: self.model_dir(record.parent))  # type: ignore[arg-type]

    def size(self, version: str) -> int:
        return self.artifacts.size(version)

    def disk_bytes(self, version: str) -> int:
        """What the version takes on disk: its files and its merged serving copy, if any."""
        return self.artifacts.size(version) + self.serving.bytes(version)

    # -- retention --------------------------------------------------------------------------------
    def pruned(self) -> dict[str, str]:
        """version -> when retention dropped its files."""
        return self.meta.pruned()

    def require_weights(self, version: str) -> None:
        """Raise VersionPruned when retention dropped the version's files."""
        at = self.meta.pruned().get(version)
        if at is not None:
            raise VersionPruned(version, at)

    def gc(self, keep_versions: int, *, dry_run: bool = False,
           lock_timeout: float | None = LOCK_TIMEOUT) -> retention.Retention:
        """Apply `registry.keep_versions` now: drop the files of every version retention does not keep."""
        with self.lock.acquire(timeout=lock_timeout):
            if not dry_run:
                self._finish_prunes()
            records = self.meta.list_versions()
            before = self.meta.pruned()
            keep = retention.to_keep(records, self.meta.audit(), set(before), keep_versions)
            doomed = [r.version for r in records if r.version not in keep and r.version not in before]
            sizes = {version: self.disk_bytes(version) for version in doomed}
            if not dry_run:
                for version in doomed:
                    self._prune(version)
        if doomed and not dry_run:
            log.info("retention pruned the weights of %s (%d bytes)", ", ".join(doomed), sum(sizes.values()),
                     extra={"pruned": doomed, "keep_versions": keep_versions})
        return retention.Retention(keep_versions=keep_versions, dry_run=dry_run,
                                   kept=[r.version for r in records if r.version in keep and r.version not in before],
                                   pruned=doomed, bytes_freed=sizes, pruned_before=sorted(before))

    def _prune(self, version: str) -> None:
        # recorded first: from this commit on the version counts as pruned whatever happens to its files
        self.meta.mark_pruned(version, self.clock())
        self.serving.drop(version)
        self.artifacts.prune(version)

    def _finish_prunes(self) -> None:
        """Complete prunes a crash interrupted: files of versions recorded as pruned, and half-deleted leftovers."""
        pruned = set(self.meta.pruned())
        for version in sorted(pruned & self.artifacts.versions_present()):
            log.warning("finishing the prune of %s (interrupted)", version)
            self.serving.drop(version)
            self.artifacts.prune(version)
        for version in sorted(pruned & self.serving.present()):
            self.serving.drop(version)
        self.artifacts.clean_pruned()

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())

    # -- decisions --------------------------------------------------------------------------------
    def record_decision(self, version: str, decision: str, *, gate: dict[str, Any] | None = None,
                        metrics: dict[str, Any] | None = None) -> None:
        self.get(version)
        with self.meta.transaction():
            self.meta.add_decision(self._decision(version, decision, gate, metrics))

    def _decision(self, version: str, decision: str, gate: dict[str, Any] | None,
                  metrics: dict[str, Any] | None) -> Decision:
        return Decision(version=version, decision=decision, at=self.clock(), gate=gate or {}, metrics=metrics or {})

    def decision(self, version: str) -> str | None:
        """promoted | rejected | failed | held | rolled_back (a rollback away from it overrides)."""
        if version in self.rolled_back():
            return "rolled_back"
        recorded = self.meta.decision(version)
        return recorded.decision if recorded else None

    def decision_record(self, version: str) -> Decision | None:
        return self.meta.decision(version)

    # -- the champion alias -----------------------------------------------------------------------
    def champion(self) -> str | None:
        for entry in reversed(self.meta.audit()):
            if entry.action in CHAMPION_ACTIONS:
                return entry.to
        return None

    def pinned(self) -> bool:
        for entry in reversed(self.meta.audit()):
            if entry.action in ("pin", "unpin"):
                return entry.action == "pin"
        return False

    def rolled_back(self) -> set[str]:
        return {e.from_ for e in self.meta.audit() if e.action == "rollback" and e.from_}  # type: ignore[misc]

    def audit(self, version: str | None = None) -> list[AuditEntry]:
        """Newest first; only entries naming `version` when given."""
        entries = self.meta.audit()
        if version is not None:
            entries = [e for e in entries if version in (e.from_, e.to)]
        return list(reversed(entries))

    def promote(self, version: str, *, actor: str, reason: str = "", manual: bool = False,
                decided: tuple[dict[str, Any], dict[str, Any]] | None = None) -> AuditEntry:
        """Make `version` champion. Automatic promotion (not manual) refuses rolled-back versions.
        `decided` = (gate, metrics) records the `promoted` decision in the switch's own transaction:
        both are committed or neither (a database lost in between leaves no promotion unmade)."""
        def check(current: str | None) -> None:
            if current == version:
                raise Conflict(f"{version} is already the champion")
            if not manual and version in self.rolled_back():
                raise Conflict(f"{version} was rolled back; it is never promoted automatically")
        decision = None if decided is None else self._decision(version, "promoted", *decided)
        return self._switch(version, "manual_promote" if manual else "promote", actor, reason, check, decision)

    def rollback(self, *, to: str | None = None, actor: str, reason: str = "", pin: bool = False) -> AuditEntry:
        """Champion back to the previous champion (or `to`); the version left is marked rolled back."""
        target: list[str] = []

        def check(current: str | None) -> None:
            if current is None:
                raise Conflict("there is no champion to roll back")
            choice = to or self._previous_champion(current)
            if choice is None:
                earlier = retention.rollback_order(self.meta.audit(), current)
                if earlier:  # every earlier champion's weights are gone
                    raise VersionPruned(earlier[0], self.meta.pruned().get(earlier[0]))
                raise Conflict(f"{current} is the first champion; there is nothing earlier to roll back to")
            if choice == current:
                raise Conflict(f"{choice} is already the champion")
            target.append(choice)
        entry = self._switch(lambda: target[0], "rollback", actor, reason, check)
        if pin:
            self.pin(actor=actor, reason=reason or "paused by rollback --pin")
        return entry

    def _previous_champion(self, current: str) -> str | None:
        """The newest former champion not rolled back and with its weights (retention keeps the
        first `keep_versions` of this order, so only champions beyond the bound are ever skipped)."""
        pruned = self.meta.pruned()
        return next((v for v in retention.rollback_order(self.meta.audit(), current) if v not in pruned), None)

    def pin(self, *, actor: str, reason: str = "") -> None:
        with self.lock.acquire(timeout=LOCK_TIMEOUT), self.meta.transaction():
            self.meta.append_audit(AuditEntry(at=self.clock(), actor=actor, action="pin", from_=None, to=None,
                                              reason=reason))

    def unpin(self, *, actor: str, reason: str = "") -> None:
        with self.lock.acquire(timeout=LOCK_TIMEOUT), self.meta.transaction():
            self.meta.append_audit(AuditEntry(at=self.clock(), actor=actor, action="unpin", from_=None, to=None,
                                              reason=reason))

    def _switch(self, version: str | Callable[[], str], action: str, actor: str, reason: str,
                check: Callable[[str | None], None], decision: Decision | None = None) -> AuditEntry:
        with self.lock.acquire(timeout=LOCK_TIMEOUT):
            current = self.champion()
            check(current)
            target_version = version() if callable(version) else version
            model_dir = self.model_dir(target_version)  # verified (and materialised) before anything moves
            entry = AuditEntry(at=self.clock(), actor=actor, action=action, from_=current, to=target_version,
                               reason=reason)
            with self.meta.transaction():
                if self.champion() != current:  # another host switched meanwhile (a shared registry)
                    raise Conflict(f"the champion changed to {self.champion()} during this switch; try again")
                if decision is not None:
                    self.meta.add_decision(decision)
                self.meta.append_audit(entry)
            self._point_link(model_dir)
            self._evict_serving()
        log.info("champion %s -> %s (%s by %s)", current, target_version, action, actor,
                 extra={"version": target_version, "from": current, "action": action, "actor": actor})
        if self.on_switch is not None:
            try:
                self.on_switch(target_version, self.link)
            except Exception:  # a hook never undoes a switch
                log.exception("on_champion_change hook failed", extra={"version": target_version})
        return entry

    def sync_champion(self) -> str | None:
        """Point `champion` at the champion the audit names, its files fetched and verified first: what a
        serving host that only reads a shared registry runs (`lifelong sync-champion`). Returns it."""
        with self.lock.acquire(timeout=LOCK_TIMEOUT):
            champion = self.champion()
            if champion is None:
                if os.path.lexists(self.link):
                    self.link.unlink()
                return None
            model_dir = self.model_dir(champion)
            if self._link_target() != model_dir.resolve():
                self._point_link(model_dir)
                log.info("champion link now on %s", champion, extra={"version": champion})
            return champion

    def _link_target(self) -> Path | None:
        try:
            return (self.root / os.readlink(self.link)).resolve()
        except OSError:
            return None

    def _point_link(self, model_dir: Path) -> None:
        tmp = self.root / f".champion.{os.getpid()}"
        if os.path.lexists(tmp):
            tmp.unlink()
        os.symlink(os.path.relpath(model_dir, self.root), tmp)
        os.replace(tmp, self.link)  # atomic: readers see the old or the new target, never neither
        fsync_dir(self.root)

    def _evict_serving(self) -> None:
        """Keep merged copies only for the champion, the rollback target and the newest version."""
        keep: set[str] = set()
        champion = self.champion()
        if champion:
            keep.add(champion)
            previous = self._previous_champion(champion)
            if previous:
                keep.add(previous)
        versions = self.meta.list_versions()
        if versions:
            keep.add(versions[-1].version)
        self.serving.evict(keep)

    # -- export -----------------------------------------------------------------------------------
    def export(self, version: str, dest: Path) -> Path:
        """Write a self-contained Hugging Face model directory of `version` to `dest`."""
        if dest.exists() and any(dest.iterdir()):
            raise UsageError(f"{dest} exists and is not empty")
        source = self.model_dir(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.export-tmp"
        remove_tree(tmp)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(manifest.MANIFEST))
        for folder, dirs, names in os.walk(tmp):
            os.chmod(folder, 0o755)
            for name in names:
                os.chmod(Path(folder) / name, 0o644)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
        return dest


def library_versions() -> dict[str, str]:
    """Versions of what made a model, read from package metadata (nothing is imported)."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("lifelong", "torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _kind_of(staging: Path) -> str:
    if (staging / "model" / "config.json").is_file():
        return "full"
    if (staging / "adapter").is_dir() and (staging / "model-config" / "config.json").is_file():
        return "lora"
    raise UsageError(f"{staging} holds neither model/ (a full version) nor adapter/ + model-config/ (a LoRA version)")
