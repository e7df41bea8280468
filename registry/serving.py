"""Serving copies: the merged weights of LoRA versions, kept under the registry's `serving/`.

A LoRA version stores an adapter over its parent's weights; whatever serves it (the `champion`
link, `export`, evaluation) needs a complete model. The registry merges it once into
`serving/vNNNN/`, records that copy's manifest, verifies it like a version's files on every use and
keeps copies only of the versions likely to be served next (`evict`). A copy is a cache: damaged,
evicted or half-written by a crash, it is made again from the kept weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from registry import manifest
from registry.abc import MetadataBackend
from registry.errors import IntegrityError, UsageError
from registry.fsutil import fsync_dir, remove_tree, tree_bytes

log = logging.getLogger(__name__)

# (version dir, parent's model dir, output dir) -> writes a complete merged model into output dir
Materializer = Callable[[Path, Path, Path], None]


def no_materializer(version_dir: Path, parent_dir: Path, out: Path) -> None:
    """The default: the registry knows nothing of how an adapter is merged; whoever opens it to serve
    LoRA versions passes a materializer in (the daemon passes daemon.update.launcher.spawn_materializer)."""
    raise UsageError(f"{version_dir.name} stores a LoRA adapter and its merged weights must be materialised, but"
                     " this registry was opened without a materializer (Registry(..., materializer=...))")


class ServingCopies:
    def __init__(self, root: Path, meta: MetadataBackend, materializer: Materializer = no_materializer) -> None:
        self.root = root
        self.meta = meta
        self.materializer = materializer
        root.mkdir(exist_ok=True)

    def get(self, version: str, version_dir: Path, parent_dir: Callable[[], Path]) -> Path:
        """The verified merged copy of `version`, made (from its files and its parent's model
        directory) when missing or damaged."""
        target = self.root / version
        expected = self.meta.serving_manifest(version)
        if expected is not None and target.is_dir():
            try:
                manifest.verify(target, version, expected, self.meta.file_stamps(self._stamps_key(version)),
                                on_verified=lambda stamps: self.meta.set_file_stamps(self._stamps_key(version), stamps))
                return target
            except IntegrityError as exc:
                log.warning("serving copy of %s is damaged (%s); materialising it again", version, exc)
        tmp = self.root / f".{version}.tmp"
        remove_tree(tmp)
        tmp.mkdir()
        self.materializer(version_dir, parent_dir(), tmp)
        self.adopt(version, tmp)
        return target

    def adopt(self, version: str, source: Path) -> None:
        """Make `source` (merged weights, e.g. those the update evaluated) the copy of `version`: copied
        under a hidden name, its manifest written and recorded, then renamed into place."""
        target = self.root / version
        tmp = self.root / f".{version}.adopt"
        remove_tree(tmp)
        if source.resolve() != tmp.resolve():
            shutil.copytree(source, tmp)
        sha = manifest.write(tmp, version)
        remove_tree(target)
        os.rename(tmp, target)
        fsync_dir(self.root)
        self.meta.set_serving_manifest(version, sha)
        self.meta.set_file_stamps(self._stamps_key(version), manifest.stamps(target))
        if source.name.startswith(".") and source.exists():
            remove_tree(source)

    def drop(self, version: str) -> None:
        """Remove the copy of `version`: renamed out of sight whole first (`clean` removes what a crash
        leaves of it)."""
        if (self.root / version).exists():
            trash = self.root / f".{version}.pruned"
            remove_tree(trash)
            os.rename(self.root / version, trash)
            fsync_dir(self.root)
            remove_tree(trash)

    def evict(self, keep: set[str]) -> None:
        """Remove every copy but those of `keep`, and forget their manifests."""
        for entry in self.root.iterdir():
            if not entry.name.startswith(".") and entry.name not in keep:
                remove_tree(entry)
                self.meta.set_serving_manifest(entry.name, None)

    def clean(self) -> None:
        """Remove the leftovers of interrupted writes and drops (every hidden entry)."""
        for leftover in self.root.glob(".*"):
            remove_tree(leftover)

    def present(self) -> set[str]:
        return {entry.name for entry in self.root.iterdir() if not entry.name.startswith(".")}

    def bytes(self, version: str) -> int:
        return tree_bytes(self.root / version)

    @staticmethod
    def _stamps_key(version: str) -> str:
        return f"{version}/serving"
