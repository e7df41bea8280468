"""The bad rows of a file ingested with `inbox.on_bad_rows = "skip"`: streamed to a temp file while
the file is read, then given the name `quarantine/NAME.rejected.jsonl` without replacing anything."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from daemon.ingest.formats import RowError
from registry.fsutil import fsync_dir, remove


class RejectedRows:
    """Bad rows of a file ingested with on_bad_rows = "skip", streamed to a temp JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def write(self, line: int, errors: list[RowError], record: object) -> None:
        if self._handle is None:
            self._handle = open(self.path, "w", encoding="utf-8")
        row = record if isinstance(record, dict) and not any(e.reason == "too_deeply_nested" for e in errors) else None
        entry = {"line": line, "errors": [e.as_dict() for e in errors], "row": row}
        try:
            text = json.dumps(entry, ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError):
            text = json.dumps({**entry, "row": None}, ensure_ascii=False, default=str)
        self._handle.write(text + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        remove(self.path)


def publish_no_replace(tmp: Path, folder: Path, name: str, file_id: int) -> Path:
    """Give `tmp` the name `name` in `folder` without replacing anything there (a hard link, then
    the temp name removed); `~<file id>` is added when the name is taken by another file."""
    stem, dot, ext = name.partition(".")
    for candidate in (name, f"{stem}~{file_id}{dot}{ext}", f"{stem}~{file_id}~{os.getpid()}{dot}{ext}"):
        target = folder / candidate
        try:
            os.link(tmp, target)
        except FileExistsError:
            if os.path.samefile(tmp, target):  # linked before a crash
                break
            continue
        except OSError as exc:  # a file system without hard links: a rename, checked just before
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK) or os.path.lexists(target):
                raise
            os.rename(tmp, target)
            fsync_dir(folder)
            return target
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free name for the rejected rows", str(folder / name))
    tmp.unlink()
    fsync_dir(folder)
    return target
