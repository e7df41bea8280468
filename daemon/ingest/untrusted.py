"""Opening an untrusted inbox entry once and reading only what was checked.

An entry is opened with `O_NOFOLLOW | O_NONBLOCK` and the descriptor compared with the `lstat`
that chose it; every later step reads that descriptor (each at an offset of its own) and moves the
name only while it still names that file, so a swap between check and use can neither make us read
a symlink's target nor block on a FIFO.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import signal
import stat
import threading
from pathlib import Path
from typing import BinaryIO

BLOCK = 1 << 20


class PositionalReader(io.RawIOBase):
    """One read of a checked descriptor from an offset of its own (pread): the passes over a file
    (hash, a fast parse that gives way, the exact parse, a copy) never share a file position, so a
    reader that reads ahead in a thread of its own (Arrow's) cannot move another's."""

    def __init__(self, handle: BinaryIO) -> None:
        self._fd = handle.fileno()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = os.pread(self._fd, len(buffer), self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: os.fstat(self._fd).st_size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos


def open_checked(path: Path, chosen: os.stat_result) -> BinaryIO | None:
    """Open `path` without following a link or blocking on a FIFO; None unless the descriptor is
    the regular file that `chosen` (its lstat) described."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EWOULDBLOCK):
            return None  # gone, or swapped for a link or a special file since it was chosen
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (chosen.st_dev, chosen.st_ino):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb", buffering=0)


_lease_checks = threading.Lock()
_leases_usable: bool | None = None


def open_for_writing(fd: int) -> bool:
    """Whether another process has the file open for writing, by asking for a read lease (refused
    with EAGAIN exactly then) and giving it back at once. Where leases are not available (a file of
    another owner without CAP_LEASE, NFS) it says False and the settle rule alone applies."""
    global _leases_usable
    with _lease_checks:
        if _leases_usable is None:
            # breaking a lease sends SIGIO, whose default action ends the process; leases are
            # taken only where it can be ignored (the main thread sets that once)
            try:
                signal.signal(signal.SIGIO, signal.SIG_IGN)
                _leases_usable = True
            except ValueError:  # not the main thread
                _leases_usable = signal.getsignal(signal.SIGIO) == signal.SIG_IGN
        if not _leases_usable:
            return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def sha256_of(path: Path) -> str | None:
    try:
        handle = open_checked(path, os.lstat(path))
    except OSError:
        return None
    if handle is None:
        return None
    with handle:
        digest = hashlib.sha256()
        while block := handle.read(BLOCK):
            digest.update(block)
        return digest.hexdigest()


def still_names(path: Path, handle: BinaryIO) -> bool:
    """Whether `path` still names the file open as `handle`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(handle.fileno())
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def unlink_if_same(src: Path, handle: BinaryIO) -> None:
    """Remove the inbox name only while it still names the file that was read."""
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return
    own = os.fstat(handle.fileno())
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
        os.unlink(src)


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device or special file"


def unchanged(path: Path, before: os.stat_result, handle: BinaryIO | None) -> bool:
    """The name still names the entry that was chosen, and (read through `handle`) it was not written to."""
    try:
        after = os.lstat(path)
    except FileNotFoundError:
        return False
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        return False
    if handle is None:
        return stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    read = os.fstat(handle.fileno())
    return (read.st_size, read.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
