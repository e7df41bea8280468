"""Ingest one inbox file exactly once: validate, store its rows, then archive or quarantine it.

The order makes it crash-safe: (1) the file's rows are written to a segment that is published
(fsync + rename) and its record, outcome and destination committed in one SQLite transaction;
(2) only then is the file moved out of the inbox (and NAME.error.json written); (3) the record is
marked finalized. A crash before the commit leaves the file in the inbox to be taken again (and at
most an orphan segment, removed by `recover()`); a crash after it is finished by `recover()` at the
next start, so every file ends in exactly one of archive/ or quarantine/ and no row is stored twice.

Every entry is hostile: it is opened once (`O_NOFOLLOW | O_NONBLOCK`), the descriptor is checked
against the `lstat` that chose it, and hashing, parsing and a copy across file systems all read
that one descriptor, so a swap of the name between check and use can neither make us read a
symlink's target nor block on a FIFO. Entries that are not regular files are never opened or
copied: they are renamed aside within the inbox's own file system.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable

import pyarrow as pa
import pyarrow.compute as pc

from daemon.config import InboxConfig
from daemon.ingest import formats, names
from daemon.ingest import chat, tagged
from daemon.ingest.rows import LabelSet, Validator
from daemon.ingest.chat import ChatValidator
from daemon.ingest.tagged import TaggedValidator
from daemon.ingest.rejected import RejectedRows, publish_no_replace
from daemon.ingest.segments import SegmentWriter
from daemon.ingest.store import FileRecord, Store
from daemon.ingest.untrusted import (BLOCK, PositionalReader, kind_of, open_checked, open_for_writing, sha256_of,
                                     still_names, unchanged, unlink_if_same)
from registry.errors import FileRejected, Stopping
from registry.fsutil import atomic_write, fsync_dir, remove

log = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 100
# Where entries that are not regular files go when quarantine/ is on another file system than the
# inbox (a rename cannot cross it, and such entries are never copied). Hidden: never ingested.
HELD_ASIDE = ".lifelong-quarantine"


@dataclass(frozen=True, kw_only=True)
class FileOutcome:
    name: str
    outcome: str  # accepted | duplicate | quarantined
    reason: str | None
    rows_train: int
    rows_eval: int
    rows_rejected: int
    dest: Path


@dataclass(frozen=True)
class Waiting:
    """The file is not taken yet, and why (another hard link to it, a writer still has it open)."""

    name: str
    why: str


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _noop() -> None:
    pass


class Ingestor:
    """Takes files out of one inbox into one store. The caller holds the home's ingest lock.

    `tick` is called between blocks of every long step (hashing, parsing, copying): the daemon
    feeds its liveness checks there, and stops the work by raising `Stopping` from it.
    """

    def __init__(self, *, store: Store, inbox: Path, archive: Path, quarantine: Path, config: InboxConfig,
                 clock: Callable[[], str] = utcnow, tick: Callable[[], None] = _noop,
                 task: str = "sequence_classification") -> None:
        self.store = store
        self.tagged = task == "token_classification"  # rows of tokens and BIO tags (daemon/ingest/tagged.py)
        self.chat = task == "causal_lm"  # prompts and completions, or chats (daemon/ingest/chat.py)
        self.inbox = inbox
        self.archive = archive
        self.quarantine = quarantine
        self.config = config
        self.clock = clock
        self.tick = tick

    # -- one file ---------------------------------------------------------------------------------
    def ingest(self, path: Path, on_progress: Callable[[int], None] | None = None,
               chosen: os.stat_result | None = None) -> FileOutcome | Waiting | None:
        """Ingest the inbox entry at `path` (chosen by the `lstat` result `chosen`, taken now if not
        given); None when it vanished or changed while being read, `Waiting` when not alone yet."""
        try:
            before = chosen or os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(before.st_mode):
            problem = FileRejected("not_regular_file", f"a {kind_of(before.st_mode)}, not a regular file; it was not opened")
            return self._commit(path, before, None, lambda file_id, sha: self._finish_rejected(file_id, path.name, sha, problem))
        try:
            handle = open_checked(path, before)
        except PermissionError as exc:
            problem = FileRejected("unreadable", f"cannot open it: {exc.strerror}")
            return self._commit(path, before, None, lambda file_id, sha: self._finish_rejected(file_id, path.name, sha, problem))
        if handle is None:
            return None
        with handle:
            opened = os.fstat(handle.fileno())
            if opened.st_nlink > 1:
                return Waiting(path.name, f"it has {opened.st_nlink - 1} other hard link(s); taken once it is the only one")
            if open_for_writing(handle.fileno()):
                return Waiting(path.name, "another process has it open for writing; taken once it is closed")
            if opened.st_size > self.config.max_file_bytes:
                problem = FileRejected("too_large", f"{opened.st_size} bytes > inbox.max_file_bytes = {self.config.max_file_bytes}")
                return self._commit(path, opened, handle, lambda file_id, sha: self._finish_rejected(file_id, path.name, sha, problem))
            sha = self._hash(handle)

            def record(file_id: int, sha: str | None) -> None:
                duplicate_of = self.store.accepted_with_sha(sha) if sha else None
                if formats.format_of(path.name) is None:
                    self._finish_rejected(file_id, path.name, sha, FileRejected(
                        "unsupported_format", "supported are .jsonl, .ndjson, .csv (each also .gz) and .parquet"))
                elif duplicate_of is not None:
                    dest = self._free_name(self.archive, path.name, file_id)
                    self.store.finish_file(file_id, outcome="duplicate", dest=dest, duplicate_of=duplicate_of,
                                           message=f"same bytes as file #{duplicate_of}")
                else:
                    self._read_rows(file_id, path.name, handle, sha, on_progress)
            return self._commit(path, opened, handle, record, sha)

    def _commit(self, path: Path, before: os.stat_result, handle: BinaryIO | None,
                record: Callable[[int, str | None], None], sha: str | None = None) -> FileOutcome | None:
        """Record the file in one transaction (rolled back if the entry changed meanwhile), then move it."""
        received_at = self.clock()
        self.store.begin()
        try:
            file_id = self.store.add_file(name=path.name, sha256=sha, size=before.st_size, received_at=received_at)
            self._received_at = received_at
            record(file_id, sha)
            if not unchanged(path, before, handle):
                self.store.rollback()
                log.info("inbox file changed while read; will retry", extra={"file": names.display(path.name)})
                return None
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        committed = self.store.file_record(file_id)
        dest = self.finalize(committed, handle)
        return FileOutcome(name=path.name, outcome=committed.outcome, reason=committed.reason, rows_train=committed.rows_train,
                       rows_eval=committed.rows_eval, rows_rejected=committed.rows_rejected, dest=dest)

    def quarantine_internal(self, path: Path, exc: BaseException) -> FileOutcome | None:
        """Quarantine an entry whose ingestion failed in a way nobody predicted, with the message."""
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return None
        message = names.display(f"{type(exc).__name__}: {exc}")[:2000]  # an OSError's text holds the raw name
        problem = FileRejected("internal_error", message)
        handle = open_checked(path, before) if stat.S_ISREG(before.st_mode) else None
        try:
            return self._commit(path, before, handle,
                                lambda file_id, sha: self._finish_rejected(file_id, path.name, sha, problem))
        finally:
            if handle is not None:
                handle.close()

    def _hash(self, handle: BinaryIO) -> str:
        digest = hashlib.sha256()
        reader = PositionalReader(handle)
        while block := reader.read(BLOCK):
            digest.update(block)
            self.tick()
        return digest.hexdigest()

    def _read_rows(self, file_id: int, name: str, handle: BinaryIO, sha: str | None,
                   on_progress: Callable[[int], None] | None) -> None:
        """Parse and validate; rows stream into a segment that is published only if the file is accepted."""
        try:
            try:
                scan = self._scan(file_id, name, handle, on_progress, fast=True)
            except formats.NotFast:
                scan = self._scan(file_id, name, handle, on_progress, fast=False)
        except FileRejected as problem:
            self._finish_rejected(file_id, name, sha, problem)
            return
        skip = self.config.on_bad_rows == "skip"
        good_rows = scan.counts[0] + scan.counts[1]
        if scan.bad and (not skip or good_rows == 0):
            scan.discard()
            first = scan.listed[0]
            message = (f"{scan.bad} of {scan.total} rows are invalid (first: line {first['line']}, field "
                       f"{first['field']}: {first['reason']}); inbox.on_bad_rows = {self.config.on_bad_rows!r}")
            self._finish_rejected(file_id, name, sha, FileRejected("invalid_rows", message),
                                  scan.listed, rows_rejected=scan.bad)
            return
        scan.publish()
        self.store.add_labels(file_id, scan.labels.added)
        message = f"{good_rows} rows ingested, {scan.bad} skipped" if scan.bad else f"{good_rows} rows ingested"
        repaired = scan.validate.repaired if isinstance(scan.validate, TaggedValidator) else 0
        if repaired:
            message += f"; {repaired} BIO tags repaired (I- starting an entity made B-) in {scan.validate.repaired_rows} rows"
            log.warning("%s: %s", names.display(name), message, extra={"repaired_tags": repaired})
        self.store.finish_file(
            file_id, outcome="accepted", dest=self._free_name(self.archive, name, file_id),
            message=message,
            rows_train=scan.counts[0], rows_eval=scan.counts[1], rows_rejected=scan.bad,
        )

    def _scan(self, file_id: int, name: str, handle: BinaryIO, on_progress: Callable[[int], None] | None, *,
              fast: bool) -> "_Scan":
        """One read of the file; raises NotFast (having cleaned up) when the fast reader must give way."""
        config = self.config
        skip = config.on_bad_rows == "skip"
        labels = LabelSet.of(self.store.labels(), config.labels, max_labels=config.max_labels)
        checks = TaggedValidator if self.tagged else ChatValidator if self.chat else Validator
        validate = checks(labels, config.eval_fraction, max_text_chars=config.max_text_chars,
                          max_label_chars=config.max_label_chars)
        rejected = RejectedRows(self.quarantine / f".tmp-{file_id}.rejected.jsonl") if skip else None
        schema = tagged.SCHEMA if self.tagged else chat.SCHEMA if self.chat else None
        writer = self.store.segment_writer(file_id, schema) if schema is not None else self.store.segment_writer(file_id)
        scan = _Scan(labels=labels, writer=writer, rejected=rejected, validate=validate)
        limits = formats.Limits(config.max_file_bytes, config.max_row_bytes)
        required = formats.TAGGED if self.tagged else formats.CHAT if self.chat else formats.REQUIRED
        try:
            for chunk in formats.read(PositionalReader(handle), limits, on_progress, name=name, fast=fast,
                                      required=required):
                self.tick()
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

    def _finish_rejected(self, file_id: int, name: str, sha: str | None, problem: FileRejected,
                         errors: list[dict[str, object]] | None = None, rows_rejected: int = 0) -> None:
        dest = self._free_name(self.quarantine, name, file_id)
        doc: dict[str, object] = {"file": names.display(name), "sha256": sha, "received_at": self._received_at,
                                  "reason": problem.reason, "message": problem.message, "errors": errors or []}
        if not names.is_text(name):
            doc["file_name_bytes_hex"] = os.fsencode(name).hex()  # the exact name, which is not UTF-8
        self.store.finish_file(file_id, outcome="quarantined", dest=dest, reason=problem.reason, message=problem.message,
                               error_doc=json.dumps(doc, ensure_ascii=False, indent=2), rows_rejected=rows_rejected)

    def _free_name(self, folder: Path, name: str, file_id: int) -> str:
        """`name`, or `name` with `~<file id>` before its extension when that name or a sidecar of it is taken."""
        def taken(candidate: str) -> bool:
            return any(os.path.lexists(folder / f"{candidate}{suffix}")
                       for suffix in ("", ".error.json", ".rejected.jsonl"))
        if not taken(name):
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}~{file_id}{dot}{ext}"

    # -- finishing and recovery -------------------------------------------------------------------
    def finalize(self, record: FileRecord, handle: BinaryIO | None = None) -> Path:
        """Move a committed file to its destination and write its sidecars; idempotent.

        `handle` is the descriptor the file was read from, when there is one: a copy across file
        systems reads it, and the name is moved only while it still names that file."""
        src = self.inbox / record.name
        folder = self.quarantine if record.outcome == "quarantined" else self.archive
        dest = folder / record.dest
        try:
            current = os.lstat(src)
        except FileNotFoundError:
            current = None
        if current is not None and not stat.S_ISREG(current.st_mode):
            if record.outcome == "quarantined":  # only ever quarantined; never copied
                dest = self._set_aside(src, dest)
        elif current is not None:
            dest = self._move_file(src, dest, record, handle)
        elif not os.path.lexists(dest) and os.path.lexists(self.inbox / HELD_ASIDE / record.dest):
            dest = self.inbox / HELD_ASIDE / record.dest  # set aside before a crash
        if record.error_doc is not None:
            doc = record.error_doc
            if dest.parent != folder:
                doc = json.dumps({**json.loads(doc), "moved_to": names.display(str(dest))}, ensure_ascii=False, indent=2)
            atomic_write(self.quarantine / f"{record.dest}.error.json", doc)
        rejected_tmp = self.quarantine / f".tmp-{record.id}.rejected.jsonl"
        if rejected_tmp.exists():
            publish_no_replace(rejected_tmp, self.quarantine, f"{record.dest}.rejected.jsonl", record.id)
        self.store.mark_finalized(record.id)
        return dest

    def _move_file(self, src: Path, dest: Path, record: FileRecord, handle: BinaryIO | None) -> Path:
        """Rename `src` to `dest`; across file systems, copy from the checked descriptor first."""
        own = handle
        try:
            if own is None and record.sha256 is None:  # nothing was read (it could not be opened): rename it as it is
                os.rename(src, dest)
                fsync_dir(dest.parent)
                fsync_dir(src.parent)
                return dest
            if own is None:  # recovery after a crash: check it is still the file that was recorded
                own = open_checked(src, os.lstat(src))
                if own is None:
                    return dest
                if record.sha256 is not None and self._hash(own) != record.sha256:
                    log.warning("a different file now has the name of a finished one; left for the next pass",
                                extra={"file": names.display(record.name)})
                    return dest
            if os.path.lexists(dest):
                if record.sha256 is None or sha256_of(dest) != record.sha256:
                    raise FileExistsError(errno.EEXIST, "the destination is taken by another file", names.display(str(dest)))
                unlink_if_same(src, own)  # a copy across file systems was complete before a crash
                return dest
            if not still_names(src, own):  # replaced since it was read: the new file is taken at the next pass
                log.warning("the name of a file just ingested now holds another file; that one is taken next",
                            extra={"file": names.display(record.name)})
                return dest
            try:
                os.rename(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_across(own, dest)
                unlink_if_same(src, own)
            else:
                if not still_names(dest, own) and not os.path.lexists(src):  # swapped in the instant between
                    os.rename(dest, src)
                    return dest
            fsync_dir(dest.parent)
            fsync_dir(src.parent)
            return dest
        finally:
            if own is not None and own is not handle:
                own.close()

    def _copy_across(self, handle: BinaryIO, dest: Path) -> None:
        tmp = dest.with_name(f".{dest.name}.xdev.tmp")
        remove(tmp)
        reader = PositionalReader(handle)
        with open(tmp, "xb") as writer:
            while block := reader.read(BLOCK):
                writer.write(block)
                self.tick()
            writer.flush()
            os.fsync(writer.fileno())
        st = os.fstat(handle.fileno())
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, dest)

    def _set_aside(self, src: Path, dest: Path) -> Path:
        """Rename an entry that is not a regular file into quarantine/, or, where that is another file
        system, into a hidden folder of the inbox: such entries are never copied."""
        try:
            os.rename(src, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            aside = self.inbox / HELD_ASIDE
            aside.mkdir(exist_ok=True)
            dest = aside / dest.name
            os.rename(src, dest)
            fsync_dir(aside)
        fsync_dir(src.parent)
        return dest

    def recover(self, due: Callable[[FileRecord], bool] = lambda record: True) -> dict[str, BaseException]:
        """Finish what a crashed (or failed) run left half-done; remove its temp files.

        Returns the names whose finishing failed, with the error: each is left as it is, one never
        stops the others, and the caller retries it (only records `due` are tried).
        """
        try:
            self.store.remove_orphan_segments()
        except OSError as exc:  # never a reason to stop ingesting
            log.warning("cannot remove leftover segments: %s", names.display(str(exc)))
        failed: dict[str, BaseException] = {}
        for record in self.store.unfinalized():
            if not due(record):
                failed[record.name] = RuntimeError("waiting to retry")
                continue
            log.info("finishing interrupted ingest", extra={"file": names.display(record.name), "outcome": record.outcome})
            try:
                self.finalize(record)
            except Stopping:
                raise
            except Exception as exc:
                failed[record.name] = exc
        for folder in (self.quarantine, self.archive):
            try:
                for entry in os.scandir(folder):
                    if (entry.name.startswith(".") and entry.name.endswith(".tmp")) or entry.name.startswith(".tmp-"):
                        if not (entry.name.startswith(".tmp-") and entry.name.endswith(".rejected.jsonl")
                                and _pending_rejected(entry.name, self.store)):
                            remove(Path(entry.path))
            except OSError as exc:
                log.warning("cannot remove leftover temp files: %s", names.display(str(exc)))
        return failed


def _pending_rejected(name: str, store: Store) -> bool:
    """Whether a temp rejected-rows file still belongs to an unfinished record."""
    stem = name.removeprefix(".tmp-").removesuffix(".rejected.jsonl")
    return stem.isdigit() and any(record.id == int(stem) for record in store.unfinalized())


@dataclass
class _Scan:
    """What one read of a file found, and where its rows went."""

    labels: LabelSet
    writer: SegmentWriter
    rejected: "RejectedRows | None"
    validate: "Validator | TaggedValidator | ChatValidator"
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
