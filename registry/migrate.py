"""Copy a registry to other backends (`lifelong migrate-registry`): every version with its files,
every decision, every audit entry and every retention mark, each checked, and resumable.

Run it again after an interruption and it goes on where it stopped: a version whose record is at the
destination is done (its manifest must be the same one), files are written before their record as
an update writes them (an object already there with the same bytes counts as written), and
decisions and audit entries already copied must be the source's first ones, in order, before the
rest is appended. A destination that holds anything else is refused (Conflict) and left untouched.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from registry.abc import ArtifactStore, MetadataBackend
from registry.errors import Conflict, IntegrityError
from registry.fsutil import make_writable
from registry.manifest import MANIFEST
from registry.registry import Registry

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Migration:
    """What a run copied (on a resumed run, only what was left)."""

    versions: list[str] = field(default_factory=list)  # records written
    files: list[str] = field(default_factory=list)  # versions whose files were written
    decisions: int = 0
    audit: int = 0
    pruned: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)  # versions whose files were checked at the destination


def migrate(source: Registry, meta: MetadataBackend, artifacts: ArtifactStore | None, *,
            check: tuple[Path, ArtifactStore] | None = None,
            on_version: Callable[[str], None] | None = None) -> Migration:
    """Copy `source` into `meta` and `artifacts` (None: the files stay where the source keeps them).
    `check`: a folder and the destination store opened on it, empty, to download every copied version
    into and check it there (not the copies the upload left behind)."""
    done = Migration()
    pruned = source.pruned()
    with source.lock.acquire(timeout=0):  # nothing changes the source meanwhile
        for record in source.versions():
            at_destination = meta.get_version(record.version)
            if at_destination is not None:
                if at_destination.manifest_sha256 != record.manifest_sha256:
                    raise Conflict(f"the destination already holds a different {record.version}"
                                   " (another manifest); migrate into an empty registry")
                continue
            if artifacts is not None and record.version not in pruned:
                _copy_files(source, artifacts, record.version)
                done.files.append(record.version)
            with meta.transaction():
                meta.add_version(record)
            done.versions.append(record.version)
            if on_version is not None:
                on_version(record.version)
        done.decisions = _append_missing(meta, "decisions", source.meta.decisions(), meta.decisions(),
                                         meta.add_decision)
        done.audit = _append_missing(meta, "audit", source.meta.audit(), meta.audit(), meta.append_audit)
        already = meta.pruned()
        for version, at in pruned.items():
            if version not in already:
                with meta.transaction():
                    meta.mark_pruned(version, at)
                done.pruned.append(version)
    if check is not None:
        folder, store = check
        destination = Registry(folder, metadata=meta, artifacts=store, recover=False)  # meta stays the caller's
        for record in source.versions():
            if record.version not in pruned:  # fetched back and checked against the copied record
                destination.verify(record.version, full=True)
                done.verified.append(record.version)
    return done


def _copy_files(source: Registry, artifacts: ArtifactStore, version: str) -> None:
    path = source.verify(version, full=True)  # never copy damaged files
    staging = artifacts.staging_dir()
    shutil.copytree(path, staging, dirs_exist_ok=True)
    make_writable(staging)
    for file in staging.rglob("*"):
        if file.is_file():
            file.chmod(0o644)
    if not (staging / MANIFEST).is_file():
        raise IntegrityError(version, MANIFEST, "missing")
    artifacts.publish(version, staging)
    log.info("copied the files of %s", version, extra={"version": version})


def _append_missing(meta: MetadataBackend, what: str, source: list, destination: list,  # type: ignore[type-arg]
                    append: Callable) -> int:  # type: ignore[type-arg]
    if source[:len(destination)] != destination:
        raise Conflict(f"the destination's {what} are not the source's first {len(destination)}; "
                       "migrate into an empty registry")
    missing = source[len(destination):]
    with meta.transaction():
        for item in missing:
            append(item)
    return len(missing)
