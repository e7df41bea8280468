"""The inbox: which names are taken, when a file has settled, and one ingest pass over it.

A pass is the source of truth (a full scan); file-system events only make passes come sooner.
One entry never stops the others: whatever goes wrong with it ends with the entry quarantined
(`internal_error`, with the message) or, where even that fails, left in place as "stuck": counted,
retried with a growing backoff and logged once per step, while every other file is ingested.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from daemon.home import Home
from daemon.ingest import names
from daemon.ingest.ingestor import FileOutcome, Ingestor, Waiting
from daemon.ingest.store import Store
from registry.errors import Stopping
from registry.fsutil import atomic_write
from registry.lock import PidLock

log = logging.getLogger(__name__)
RETRY_FIRST, RETRY_MAX = 10.0, 3600.0  # seconds before a stuck entry is tried again, doubling

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", "~")
# Never moved out of an inbox that sits at the root of a file system (Kubernetes volumes).
IGNORED_NAMES = frozenset({"lost+found"})


def ignored(name: str) -> bool:
    """Names a writer uses while a file is incomplete; taken only once renamed."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name in IGNORED_NAMES


def entries(inbox: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of every candidate in the inbox, in name order."""
    try:
        names = sorted(os.listdir(inbox))
    except FileNotFoundError:
        return
    for name in names:
        if ignored(name):
            continue
        try:
            yield name, os.lstat(inbox / name)
        except FileNotFoundError:
            continue


def temp_files(inbox: Path) -> set[tuple[int, int]]:
    """(device, inode) of the regular files under temporary names: the writes in progress."""
    found: set[tuple[int, int]] = set()
    try:
        with os.scandir(inbox) as scan:
            for entry in scan:
                if ignored(entry.name) and entry.name not in IGNORED_NAMES and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.add((st.st_dev, st.st_ino))
    except FileNotFoundError:
        pass
    return found


@dataclass
class Settler:
    """A file is ready once its size and mtime have been still for `settle_seconds`.

    It is also ready at once when its mtime is already older than that (a file dropped while the
    daemon was down need not wait again), and when it is a file seen under a temporary name before
    and renamed into place since: the writer said it is complete (the protocol the README asks of
    writers).
    """

    settle_seconds: float
    clock: Callable[[], float] = time.time
    _seen: dict[str, tuple[tuple[int, int], float]] = field(default_factory=dict)

    def ready(self, found: dict[str, os.stat_result],
              renamed_from_temp: set[tuple[int, int]] = frozenset()) -> tuple[list[str], float | None]:  # type: ignore[assignment]
        """Names ready now, and seconds until the next one may be (None when none waits)."""
        now = self.clock()
        for gone in set(self._seen) - set(found):
            del self._seen[gone]
        ready: list[str] = []
        wait: float | None = None
        for name, st in found.items():
            signature = (st.st_size, st.st_mtime_ns)
            previous = self._seen.get(name)
            since = previous[1] if previous and previous[0] == signature else now
            self._seen[name] = (signature, since)
            mtime = st.st_mtime_ns / 1e9
            still = now - since
            if stat.S_ISREG(st.st_mode) and mtime <= now:
                still = max(still, now - mtime)
            if (st.st_dev, st.st_ino) in renamed_from_temp:
                still = self.settle_seconds
            if still >= self.settle_seconds:
                ready.append(name)
            else:
                left = self.settle_seconds - still
                wait = left if wait is None else min(wait, left)
        return ready, wait

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)


@dataclass
class Stuck:
    """An entry that could be neither ingested nor quarantined: why, and when it is tried again."""

    reason: str  # permission_denied | os_error | internal_error
    message: str
    attempts: int
    retry_at: float


def _traceback(exc: BaseException) -> str:
    import traceback

    return names.display("".join(traceback.format_exception(exc))[-4000:]).replace("\\x0a", "\n")


def error_reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission_denied"
    return "os_error" if isinstance(exc, OSError) else "internal_error"


class Inbox:
    """One home's inbox and row store; passes hold the home's ingest lock.

    `tick` is called often during long work (a large file); the daemon sets it to feed its liveness
    checks and to raise `Stopping` when asked to stop.
    """

    def __init__(self, home: Home, clock: Callable[[], float] = time.monotonic) -> None:
        self.home = home
        self.clock = clock
        self.settler = Settler(home.config.inbox.settle_seconds)
        self.lock = PidLock(home.state / "ingest.lock", "an ingest pass")
        self.tick: Callable[[], None] = lambda: None
        self._temps: set[tuple[int, int]] = set()  # temp-named files seen by the last pass
        self._renamed: set[str] = set()  # names a file-system event saw renamed from a temp name
        self.stuck: dict[str, Stuck] = {}
        self.waiting: dict[str, str] = {}  # name -> why it is not taken yet (logged once)
        self.errors: Counter[str] = Counter()  # failures by reason since start
        self._saved: list | None = None  # what entries_path holds (None: not written by this process yet)

    @property
    def entries_path(self) -> Path:
        """Stuck and waiting entries, for `lifelong status` (another process)."""
        return self.home.state / "inbox-entries.json"

    def renamed(self, source: str, target: str) -> None:
        """A file-system event: `source` was renamed to `target`. From a temporary name into the inbox
        is a finished write (the protocol the README asks of writers): taken at the next pass without
        settling, even when no pass saw the temporary name (a quick writer). Called from the watcher's
        thread."""
        src, dst = Path(source), Path(target)
        if dst.parent == self.home.inbox and ignored(src.name) and not ignored(dst.name):
            self._renamed.add(dst.name)

    def pass_once(self, on_file: Callable[[FileOutcome], None] | None = None,
                  on_progress: Callable[[str, int, int], None] | None = None,
                  only: set[str] | None = None) -> tuple[list[FileOutcome], float | None]:
        """Recover, scan, ingest every settled file. Returns outcomes and seconds until the next may settle."""
        outcomes: list[FileOutcome] = []
        with self.lock, Store(self.home.store_path) as store:
            ingestor = Ingestor(store=store, inbox=self.home.inbox, archive=self.home.archive,
                                quarantine=self.home.quarantine, config=self.home.config.inbox, tick=self.tick,
                                task=self.home.config.model.task)
            unfinished = ingestor.recover(due=lambda record: self._due(record.name))
            for name, exc in unfinished.items():
                if self._due(name):
                    self._stick(name, exc)
            found = {name: st for name, st in entries(self.home.inbox)
                     if (only is None or name in only) and name not in unfinished}
            renamed, self._renamed = self._renamed, set()
            finished = self._temps | {(found[n].st_dev, found[n].st_ino) for n in renamed if n in found}
            ready, wait = self.settler.ready(found, finished)
            self._temps = temp_files(self.home.inbox)
            for name in ready:
                if not self._due(name):
                    continue
                outcome = self._take(ingestor, store, name, found[name], on_progress)
                if isinstance(outcome, Waiting):
                    if self.waiting.get(name) != outcome.why:
                        log.info("%s not taken yet: %s", names.display(name), outcome.why,
                                 extra={"file": names.display(name)})
                    self.waiting[name] = outcome.why
                    wait = self.home.config.inbox.settle_seconds if wait is None else min(wait, self.home.config.inbox.settle_seconds)
                    continue
                self.waiting.pop(name, None)
                if name not in self.stuck:
                    self.settler.forget(name)
                if outcome is None:
                    if name not in self.stuck:
                        wait = self.home.config.inbox.settle_seconds if wait is None else wait
                    continue
                self.stuck.pop(name, None)
                log.info("%s %s", outcome.outcome, names.display(name), extra={
                    "file": names.display(name), "outcome": outcome.outcome, "reason": outcome.reason,
                    "rows_train": outcome.rows_train, "rows_eval": outcome.rows_eval,
                    "rows_rejected": outcome.rows_rejected})
                outcomes.append(outcome)
                if on_file:
                    on_file(outcome)
        present = set(found) | set(unfinished)
        for name in set(self.stuck) - present:
            if not os.path.lexists(self.home.inbox / name):
                del self.stuck[name]  # finished at last, or taken away by someone
        for name in set(self.waiting) - set(found):
            del self.waiting[name]
        if self.stuck:
            retry = max(0.0, min(entry.retry_at for entry in self.stuck.values()) - self.clock())
            wait = retry if wait is None else min(wait, retry)
        self._save_entries()
        return outcomes, wait

    def _take(self, ingestor: Ingestor, store: Store, name: str, chosen: os.stat_result,
              on_progress: Callable[[str, int, int], None] | None) -> FileOutcome | Waiting | None:
        """Ingest one entry; whatever goes wrong ends with it quarantined or stuck, never raised."""
        path = self.home.inbox / name
        progress = (lambda done: on_progress(name, done, chosen.st_size)) if on_progress else None
        try:
            return ingestor.ingest(path, progress, chosen=chosen)
        except Stopping:
            raise
        except Exception as exc:
            if any(record.name == name for record in store.unfinalized()):
                self._stick(name, exc)  # recorded, but it could not be moved: finishing is retried
                return None
            log.error("ingesting %s failed (%s); quarantining it as internal_error", names.display(name),
                      names.display(f"{type(exc).__name__}: {exc}"), extra={"file": names.display(name),
                                                                             "traceback": _traceback(exc)})
            self.errors["internal_error"] += 1
            try:
                return ingestor.quarantine_internal(path, exc)
            except Stopping:
                raise
            except Exception as again:
                self._stick(name, again)
                return None

    def _due(self, name: str) -> bool:
        entry = self.stuck.get(name)
        return entry is None or self.clock() >= entry.retry_at

    def _stick(self, name: str, exc: BaseException) -> None:
        """Leave the entry where it is; count it, log it once for this step of the backoff."""
        previous = self.stuck.get(name)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
        reason = error_reason(exc)
        message = names.display(f"{type(exc).__name__}: {exc}")[:500]  # an OSError's text holds the raw name
        self.stuck[name] = Stuck(reason=reason, message=message, attempts=attempts, retry_at=self.clock() + delay)
        self.errors[reason] += 1
        log.warning("cannot ingest or quarantine %s (%s); left in the inbox, try %d in %.0fs",
                    names.display(name), message, attempts + 1, delay,
                    extra={"file": names.display(name), "reason": reason, "attempts": attempts})

    def _save_entries(self) -> None:
        """Write the stuck and waiting entries when they changed (and once at start: a restart forgets)."""
        doc = {"stuck": [{"file": names.display(name), "reason": entry.reason, "message": entry.message,
                          "attempts": entry.attempts} for name, entry in sorted(self.stuck.items())],
               "waiting": [{"file": names.display(name), "why": why} for name, why in sorted(self.waiting.items())]}
        if doc == self._saved:
            return
        try:
            atomic_write(self.entries_path, json.dumps(doc, ensure_ascii=False))
            self._saved = doc  # type: ignore[assignment]
        except OSError as exc:
            log.warning("cannot record stuck inbox entries: %s", names.display(str(exc)))

    def drain(self, *, max_wait: float, on_file: Callable[[FileOutcome], None] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None, sleep: Callable[[float], None] = time.sleep
              ) -> tuple[list[FileOutcome], list[str]]:
        """Ingest what is in the inbox now, waiting for files still being written up to `max_wait` s.

        Returns the outcomes and the names left because they never settled.
        """
        present = {name for name, _ in entries(self.home.inbox)}
        deadline = time.monotonic() + max_wait
        outcomes: list[FileOutcome] = []
        while True:
            done, wait = self.pass_once(on_file, on_progress, only=present)
            outcomes.extend(done)
            present -= {outcome.name for outcome in done} | set(self.stuck)
            present &= {name for name, _ in entries(self.home.inbox)}
            if wait is None or not present or time.monotonic() + wait > deadline:
                return outcomes, sorted(present)
            sleep(min(wait, 1.0) + 0.01)
