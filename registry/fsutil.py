"""Crash-safe file operations: atomic writes and moves that survive kill -9 and power loss.

In `registry`, the bottom floor, so that every package can use them."""

from __future__ import annotations

import errno
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


def move(src: Path, dst: Path) -> None:
    """Move `src` (any file type, not followed) to `dst`, durably; across file systems too.

    Within one file system this is a rename. Across file systems the copy is made under a temp name,
    fsynced and renamed into place before `src` is removed, so a crash leaves `src`, or both.
    """
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, dst)
        _remove(src)
        fsync_dir(src.parent)
    fsync_dir(dst.parent)


def _copy_across(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.xdev.tmp")
    _remove(tmp)
    mode = os.lstat(src).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), tmp)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(tmp)
    elif stat.S_ISDIR(mode):
        shutil.copytree(src, tmp, symlinks=True)
    else:
        with open(src, "rb") as reader, open(tmp, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
        shutil.copystat(src, tmp)
    os.rename(tmp, dst)


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
