"""Manifests: the sha256 and size of every file of a version, and checks against them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from registry.errors import IntegrityError

MANIFEST = "manifest.json"
Stamp = tuple[int, int, int, int]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build(root: Path) -> dict[str, dict[str, object]]:
    """{relative path: {"sha256", "size"}} for every regular file under `root` except the manifest."""
    files: dict[str, dict[str, object]] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            if path.is_symlink() or not path.is_file():
                raise ValueError(f"{rel}: versions hold regular files only")
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def write(root: Path, version: str) -> str:
    """Write root/manifest.json; returns its own sha256 (recorded in the metadata)."""
    text = json.dumps({"version": version, "files": build(root)}, indent=2, sort_keys=True)
    (root / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(path: Path) -> Stamp:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def stamps(root: Path) -> dict[str, Stamp]:
    """The stamp of every file under `root` but the manifest, by relative path."""
    return {path.relative_to(root).as_posix(): stamp(path)
            for path in root.rglob("*") if path.is_file() and path.name != MANIFEST}


def verify(root: Path, version: str, manifest_sha256: str, known: dict[str, Stamp],
           full: bool = False, on_verified: Callable[[dict[str, Stamp]], None] | None = None) -> None:
    """Check every file of the version at `root` against its manifest; raise IntegrityError naming the file.

    A file whose (size, mtime, ctime, inode) equal those recorded at its last full check is not
    hashed again: any write to a file changes its ctime, which no user can set back. `full=True`
    hashes everything regardless.
    """
    manifest_path = root / MANIFEST
    try:
        text = manifest_path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(version, MANIFEST, "missing") from None
    if hashlib.sha256(text).hexdigest() != manifest_sha256:
        raise IntegrityError(version, MANIFEST, "does not match the registry's record")
    files = json.loads(text)["files"]
    fresh: dict[str, Stamp] = {}
    for rel, expected in sorted(files.items()):
        path = root / rel
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(version, rel, "missing")
        current = stamp(path)
        if current[0] != expected["size"]:
            raise IntegrityError(version, rel, f"size {current[0]} != {expected['size']} (truncated or altered)")
        if full or known.get(rel) != current:
            if sha256_file(path) != expected["sha256"]:
                raise IntegrityError(version, rel, "sha256 does not match the manifest (altered)")
            fresh[rel] = current
    extra = sorted(set(_all_files(root)) - set(files) - {MANIFEST})
    if extra:
        raise IntegrityError(version, extra[0], "not in the manifest (added after the version was written)")
    if fresh and on_verified:
        on_verified({**known, **fresh})


def _all_files(root: Path) -> list[str]:
    return [(Path(folder) / name).relative_to(root).as_posix() for folder, _, names in os.walk(root) for name in names]
