"""The inbox: which names are taken, when a file has settled, and one ingest pass over it.

A pass is the source of truth (a full scan); file-system events only make passes come sooner.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from daemon.home import Home
from daemon.ingest import Ingestor, Outcome
from registry.lock import PidLock
from daemon.store import Store

log = logging.getLogger(__name__)

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
    and renamed into place since: the writer said it is complete (CONTRACT section 3).
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


class Inbox:
    """One home's inbox and row store; passes hold the home's ingest lock."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.settler = Settler(home.config.inbox.settle_seconds)
        self.lock = PidLock(home.state / "ingest.lock", "an ingest pass")
        self._temps: set[tuple[int, int]] = set()  # temp-named files seen by the last pass
        self._renamed: set[str] = set()  # names a file-system event saw renamed from a temp name

    def renamed(self, source: str, target: str) -> None:
        """A file-system event: `source` was renamed to `target`. From a temporary name into the inbox
        is a finished write (the contract's protocol): taken at the next pass without settling, even
        when no pass saw the temporary name (a quick writer). Called from the watcher's thread."""
        src, dst = Path(source), Path(target)
        if dst.parent == self.home.inbox and ignored(src.name) and not ignored(dst.name):
            self._renamed.add(dst.name)

    def pass_once(self, on_file: Callable[[Outcome], None] | None = None,
                  on_progress: Callable[[str, int, int], None] | None = None,
                  only: set[str] | None = None) -> tuple[list[Outcome], float | None]:
        """Recover, scan, ingest every settled file. Returns outcomes and seconds until the next may settle."""
        outcomes: list[Outcome] = []
        with self.lock, Store(self.home.store_path) as store:
            ingestor = Ingestor(store=store, inbox=self.home.inbox, archive=self.home.archive,
                                quarantine=self.home.quarantine, config=self.home.config.inbox)
            ingestor.recover()
            found = {name: st for name, st in entries(self.home.inbox) if only is None or name in only}
            renamed, self._renamed = self._renamed, set()
            finished = self._temps | {(found[n].st_dev, found[n].st_ino) for n in renamed if n in found}
            ready, wait = self.settler.ready(found, finished)
            self._temps = temp_files(self.home.inbox)
            for name in ready:
                size = found[name].st_size
                progress = (lambda done, name=name, size=size: on_progress(name, done, size)) if on_progress else None
                try:
                    outcome = ingestor.ingest(self.home.inbox / name, progress)
                except OSError as exc:
                    # e.g. permission denied: leave the file, say why, carry on with the others
                    log.error("cannot ingest %s: %s", name, exc, extra={"file": name})
                    continue
                self.settler.forget(name)
                if outcome is None:
                    wait = self.home.config.inbox.settle_seconds if wait is None else wait
                    continue
                log.info("%s %s", outcome.outcome, name, extra={
                    "file": name, "outcome": outcome.outcome, "reason": outcome.reason,
                    "rows_train": outcome.rows_train, "rows_eval": outcome.rows_eval,
                    "rows_rejected": outcome.rows_rejected})
                outcomes.append(outcome)
                if on_file:
                    on_file(outcome)
        return outcomes, wait

    def drain(self, *, max_wait: float, on_file: Callable[[Outcome], None] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None, sleep: Callable[[float], None] = time.sleep
              ) -> tuple[list[Outcome], list[str]]:
        """Ingest what is in the inbox now, waiting for files still being written up to `max_wait` s.

        Returns the outcomes and the names left because they never settled.
        """
        present = {name for name, _ in entries(self.home.inbox)}
        deadline = time.monotonic() + max_wait
        outcomes: list[Outcome] = []
        while True:
            done, wait = self.pass_once(on_file, on_progress, only=present)
            outcomes.extend(done)
            present -= {outcome.name for outcome in done}
            present &= {name for name, _ in entries(self.home.inbox)}
            if wait is None or not present or time.monotonic() + wait > deadline:
                return outcomes, sorted(present)
            sleep(min(wait, 1.0) + 0.01)
