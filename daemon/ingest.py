"""Ingest one inbox file exactly once: validate, store its rows, then archive or quarantine it.

The order makes it crash-safe: (1) the file's rows are written to a segment that is published
(fsync + rename) and its record, outcome and destination committed in one SQLite transaction;
(2) only then is the file moved out of the inbox (and NAME.error.json written); (3) the record is
marked finalized. A crash before the commit leaves the file in the inbox to be taken again (and at
most an orphan segment, removed by `recover()`); a crash after it is finished by `recover()` at the
next start, so every file ends in exactly one of archive/ or quarantine/ and no row is stored twice.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from daemon import formats
from daemon.config import InboxConfig
from daemon.formats import RowError
from registry.fsutil import atomic_write, fsync_dir, move, remove
from daemon.rows import LabelSet, Validator
from daemon.segments import SegmentWriter
from daemon.store import FileRecord, Store
from registry.errors import FileRejected
from registry.manifest import sha256_file

log = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 100
_CHUNK = 4096


@dataclass(frozen=True, kw_only=True)
class Outcome:
    name: str
    outcome: str  # accepted | duplicate | quarantined
    reason: str | None
    rows_train: int
    rows_eval: int
    rows_rejected: int
    dest: Path


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Ingestor:
    """Takes files out of one inbox into one store. The caller holds the home's ingest lock."""

    def __init__(self, *, store: Store, inbox: Path, archive: Path, quarantine: Path, config: InboxConfig,
                 clock: Callable[[], str] = utcnow) -> None:
        self.store = store
        self.inbox = inbox
        self.archive = archive
        self.quarantine = quarantine
        self.config = config
        self.clock = clock

    # -- one file ---------------------------------------------------------------------------------
    def ingest(self, path: Path, on_progress: Callable[[int], None] | None = None) -> Outcome | None:
        """Ingest the inbox entry at `path`; None when it vanished or changed while being read."""
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return None
        received_at = self.clock()
        sha = None
        problem: FileRejected | None = None
        if not stat.S_ISREG(before.st_mode):
            kind = _kind(before.st_mode)
            problem = FileRejected("not_regular_file", f"{path.name} is a {kind}, not a regular file; it was not opened")
        elif before.st_size > self.config.max_file_bytes:
            problem = FileRejected("too_large", f"{before.st_size} bytes > inbox.max_file_bytes = {self.config.max_file_bytes}")
        else:
            try:
                sha = sha256_file(path)
            except PermissionError as exc:
                problem = FileRejected("unreadable", f"cannot open {path.name}: {exc.strerror}")
        if problem is None and sha is not None:
            if formats.format_of(path.name) is None:
                problem = FileRejected("unsupported_format", f"{path.name}: supported are .jsonl, .ndjson, .csv (each also .gz) and .parquet")

        self.store.begin()
        try:
            file_id = self.store.add_file(name=path.name, sha256=sha, size=before.st_size, received_at=received_at)
            duplicate_of = self.store.accepted_with_sha(sha) if sha and problem is None else None
            if problem is not None:
                self._finish_rejected(file_id, path.name, sha, received_at, problem, [])
            elif duplicate_of is not None:
                dest = self._free_name(self.archive, path.name, file_id)
                self.store.finish_file(file_id, outcome="duplicate", dest=dest, duplicate_of=duplicate_of,
                                       message=f"same bytes as file #{duplicate_of}")
            else:
                self._read_rows(file_id, path, sha, received_at, on_progress)
            if not _unchanged(path, before):
                self.store.rollback()
                log.info("inbox file changed while read; will retry", extra={"file": path.name})
                return None
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        record = next(r for r in self.store.unfinalized() if r.id == file_id)
        dest = self.finalize(record)
        return Outcome(name=path.name, outcome=record.outcome, reason=record.reason, rows_train=record.rows_train,
                       rows_eval=record.rows_eval, rows_rejected=record.rows_rejected, dest=dest)

    def _read_rows(self, file_id: int, path: Path, sha: str | None, received_at: str,
                   on_progress: Callable[[int], None] | None) -> None:
        """Parse and validate; rows stream into a segment that is published only if the file is accepted."""
        try:
            try:
                scan = self._scan(file_id, path, on_progress, fast=True)
            except formats.NotFast:
                scan = self._scan(file_id, path, on_progress, fast=False)
        except FileRejected as problem:
            self._finish_rejected(file_id, path.name, sha, received_at, problem, [])
            return
        skip = self.config.on_bad_rows == "skip"
        good_rows = scan.counts[0] + scan.counts[1]
        if scan.bad and (not skip or good_rows == 0):
            scan.discard()
            first = scan.listed[0]
            message = (f"{scan.bad} of {scan.total} rows are invalid (first: line {first['line']}, field "
                       f"{first['field']}: {first['reason']}); inbox.on_bad_rows = {self.config.on_bad_rows!r}")
            self._finish_rejected(file_id, path.name, sha, received_at, FileRejected("invalid_rows", message),
                                  scan.listed, rows_rejected=scan.bad)
            return
        scan.publish()
        self.store.add_labels(file_id, scan.labels.added)
        self.store.finish_file(
            file_id, outcome="accepted", dest=self._free_name(self.archive, path.name, file_id),
            message=f"{good_rows} rows ingested, {scan.bad} skipped" if scan.bad else f"{good_rows} rows ingested",
            rows_train=scan.counts[0], rows_eval=scan.counts[1], rows_rejected=scan.bad,
        )

    def _scan(self, file_id: int, path: Path, on_progress: Callable[[int], None] | None, *, fast: bool) -> "_Scan":
        """One read of the file; raises NotFast (having cleaned up) when the fast reader must give way."""
        skip = self.config.on_bad_rows == "skip"
        labels = LabelSet.of(self.store.labels(), self.config.labels)
        validate = Validator(labels, self.config.eval_fraction)
        rejected = _RejectedRows(self.quarantine / f".tmp-{file_id}.rejected.jsonl") if skip else None
        scan = _Scan(labels=labels, writer=self.store.segment_writer(file_id), rejected=rejected)
        try:
            for chunk in formats.read(path, self.config.max_file_bytes, on_progress, fast=fast):
                scan.total += len(chunk)
                if not scan.bad or skip:
                    plain = validate.fast_chunk(chunk)
                    if plain is not None:
                        scan.add(*plain)
                        continue
                if not chunk.exact:
                    raise formats.NotFast("a chunk needs the row-by-row check")
                good: list[tuple] = []
                for line, record in zip(chunk.lines, chunk.records):
                    row = validate(line, record) if type(record) is dict else [record]
                    if type(row) is tuple:
                        good.append(row)
                        continue
                    scan.bad += 1
                    for error in row:
                        if len(scan.listed) < MAX_LISTED_ERRORS:
                            scan.listed.append(error.as_dict())
                    if rejected is not None:
                        rejected.write(line, row, record)
                if good and (skip or not scan.bad):  # a file to be rejected stores nothing
                    scan.add(*zip(*good))
        except BaseException:
            scan.discard()
            raise
        return scan

    def _finish_rejected(self, file_id: int, name: str, sha: str | None, received_at: str, problem: FileRejected,
                         errors: list[dict[str, object]], rows_rejected: int = 0) -> None:
        dest = self._free_name(self.quarantine, name, file_id)
        doc = {"file": name, "sha256": sha, "received_at": received_at, "reason": problem.reason,
               "message": problem.message, "errors": errors}
        self.store.finish_file(file_id, outcome="quarantined", dest=dest, reason=problem.reason, message=problem.message,
                               error_doc=json.dumps(doc, ensure_ascii=False, indent=2), rows_rejected=rows_rejected)

    def _free_name(self, folder: Path, name: str, file_id: int) -> str:
        """`name`, or `name` with `~<file id>` before its extension when that name is taken."""
        taken = lambda candidate: os.path.lexists(folder / candidate) or os.path.lexists(folder / f"{candidate}.error.json")
        if not taken(name):
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}~{file_id}{dot}{ext}"

    # -- finishing and recovery -------------------------------------------------------------------
    def finalize(self, record: FileRecord) -> Path:
        """Move a committed file to its destination and write its sidecars; idempotent."""
        src = self.inbox / record.name
        folder = self.quarantine if record.outcome == "quarantined" else self.archive
        dest = folder / record.dest
        if record.error_doc is not None:
            atomic_write(self.quarantine / f"{record.dest}.error.json", record.error_doc)
        rejected_tmp = self.quarantine / f".tmp-{record.id}.rejected.jsonl"
        if rejected_tmp.exists():
            os.replace(rejected_tmp, self.quarantine / f"{record.dest}.rejected.jsonl")
            fsync_dir(self.quarantine)
        if os.path.lexists(src):
            same = record.sha256 is None or _sha_or_none(src) == record.sha256
            if same and not os.path.lexists(dest):
                move(src, dest)
            elif same:
                remove(src)  # a cross-file-system move had copied it before the crash
                fsync_dir(src.parent)
        self.store.mark_finalized(record.id)
        return dest

    def recover(self) -> int:
        """Finish what a crashed run left half-done; remove its temp files. Returns files finished."""
        self.store.remove_orphan_segments()
        records = self.store.unfinalized()
        for record in records:
            log.info("finishing interrupted ingest", extra={"file": record.name, "outcome": record.outcome})
            self.finalize(record)
        for folder in (self.quarantine, self.archive):
            for entry in os.scandir(folder):
                if (entry.name.startswith(".") and entry.name.endswith(".tmp")) or entry.name.startswith(".tmp-"):
                    remove(Path(entry.path))
        return len(records)


@dataclass
class _Scan:
    """What one read of a file found, and where its rows went."""

    labels: LabelSet
    writer: SegmentWriter
    rejected: "_RejectedRows | None"
    counts: list[int] = field(default_factory=lambda: [0, 0])  # train, eval
    bad: int = 0
    total: int = 0
    listed: list[dict[str, object]] = field(default_factory=list)

    def add(self, splits, labels, texts, keys=None, extras=None) -> None:  # type: ignore[no-untyped-def]
        eval_rows = int(pc.sum(splits).as_py() or 0) if isinstance(splits, pa.Array) else sum(splits)
        self.counts[1] += eval_rows
        self.counts[0] += len(splits) - eval_rows
        self.writer.write(splits, labels, texts, keys, extras)

    def publish(self) -> None:
        if self.rejected is not None:
            self.rejected.close()
        self.writer.publish()

    def discard(self) -> None:
        self.writer.discard()
        if self.rejected is not None:
            self.rejected.discard()


class _RejectedRows:
    """Bad rows of a file ingested with on_bad_rows = "skip", streamed to a temp JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def write(self, line: int, errors: list[RowError], record: object) -> None:
        if self._handle is None:
            self._handle = open(self.path, "w", encoding="utf-8")
        entry = {"line": line, "errors": [e.as_dict() for e in errors], "row": record if isinstance(record, dict) else None}
        self._handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

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


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device or special file"


def _unchanged(path: Path, before: os.stat_result) -> bool:
    try:
        after = os.lstat(path)
    except FileNotFoundError:
        return False
    return (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path) if stat.S_ISREG(os.lstat(path).st_mode) else None
    except OSError:
        return None
