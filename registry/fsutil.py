"""Crash-safe file operations: atomic writes and removals that survive kill -9 and power loss.

In `registry`, the bottom floor, so that every package can use them."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp name in the same directory, fsync, rename over `path`, fsync the directory."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _remove(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    _remove(path)


def make_writable(root: Path) -> None:
    """Give every folder under `root` back its write bit (versions are stored read-only)."""
    for folder, _, _ in os.walk(root):
        os.chmod(folder, 0o755)


def remove_tree(path: Path) -> None:
    """Remove a file, link or directory tree if it exists, read-only folders included."""
    if path.is_dir() and not path.is_symlink():
        make_writable(path)
    _remove(path)


def tree_bytes(path: Path) -> int:
    """The bytes of the regular files under `path` (0 where it is not a directory)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else 0
