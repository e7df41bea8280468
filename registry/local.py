"""The local-files artifact store: each version a read-only directory under versions/."""

from __future__ import annotations

import os
import re
import stat
import uuid
from pathlib import Path

from registry.abc import ArtifactStore
from registry.fsutil import fsync_dir, remove_tree

_VERSION = re.compile(r"^v\d{4,}$")


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _read_only(root: Path) -> None:
    """Make a published version read-only, so a slip of the hand cannot alter it."""
    for folder, dirs, names in os.walk(root):
        for name in names:
            os.chmod(Path(folder) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for folder, dirs, _ in os.walk(root, topdown=False):
        for name in dirs:
            os.chmod(Path(folder) / name, 0o555)
    os.chmod(root, 0o555)


class LocalArtifacts(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"
        self.staging = root / ".staging"
        self.versions.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def staging_dir(self) -> Path:
        path = self.staging / uuid.uuid4().hex
        path.mkdir()
        return path

    def publish(self, version: str, staging: Path) -> None:
        _fsync_tree(staging)
        _read_only(staging)
        os.chmod(staging, 0o755)  # the rename needs the directory itself writable on some file systems
        os.rename(staging, self.versions / version)
        os.chmod(self.versions / version, 0o555)
        fsync_dir(self.versions)
        fsync_dir(self.staging)

    def local_path(self, version: str) -> Path:
        return self.versions / version

    def exists(self, version: str) -> bool:
        return (self.versions / version).is_dir()

    def versions_present(self) -> set[str]:
        return {entry.name for entry in os.scandir(self.versions) if _VERSION.match(entry.name)}

    def has_files(self, version: str) -> bool:
        return os.path.lexists(self.versions / version)

    def discard(self, version: str) -> None:
        self._remove(self.versions / version)

    def prune(self, version: str) -> None:
        path, trash = self.versions / version, self.versions / f".pruned-{version}"
        if path.exists():
            self._remove(trash)
            os.rename(path, trash)  # atomic: the version is whole or out of sight, never half-deleted
            fsync_dir(self.versions)
        self._remove(trash)

    def _remove(self, path: Path) -> None:
        if path.exists():
            remove_tree(path)
            fsync_dir(self.versions)

    def clean_pruned(self) -> int:
        leftovers = [entry for entry in self.versions.iterdir() if entry.name.startswith(".pruned-")]
        for entry in leftovers:
            self.prune(entry.name.removeprefix(".pruned-"))
        return len(leftovers)

    def clean_staging(self) -> int:
        removed = 0
        for entry in list(self.staging.iterdir()):
            remove_tree(entry)
            removed += 1
        return removed

    def size(self, version: str) -> int:
        return sum(p.stat().st_size for p in (self.versions / version).rglob("*") if p.is_file())
