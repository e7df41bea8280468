"""`lifelong run`: the long-running service's main loop.

Holds the home's single-instance lock, watches the inbox (file-system events as a latency hint,
full rescans on a timer as the source of truth) and ingests settled files. SIGTERM or SIGINT ends
the loop cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

from daemon.home import Home
from daemon.inbox import Inbox
from registry.lock import PidLock

log = logging.getLogger(__name__)


class _Wake:
    """File-system events only set a flag; the main loop does the work."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def dispatch(self, _event: object) -> None:
        self.event.set()


def start_watching(home: Home, wake: threading.Event):  # type: ignore[no-untyped-def]
    """A watchdog observer on the inbox (polling on network volumes); None if it cannot start."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    inbox = home.config.inbox
    observer = PollingObserver(timeout=max(1.0, min(inbox.settle_seconds, 5.0))) if inbox.polling else Observer()
    try:
        observer.schedule(_Wake(wake), str(home.inbox), recursive=False)
        observer.daemon = True
        observer.start()
    except OSError as exc:  # e.g. inotify watch limit reached: rescans still find everything
        log.warning("inbox events unavailable (%s); relying on rescans every %ss", exc, inbox.rescan_seconds)
        return None
    return observer


class Service:
    def __init__(self, home: Home, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.home = home
        self.clock = clock
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.heartbeat = clock()
        self.ready = False
        self.lock = PidLock(home.state / "daemon.lock", "lifelong run")
        self.inbox = Inbox(home)

    def stop(self, *_args: object) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        self.lock.acquire(timeout=0)
        observer = None
        try:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
            observer = start_watching(self.home, self.wake)
            self.ready = True
            log.info("lifelong running", extra={"home": str(self.home.root), "inbox": str(self.home.inbox),
                                                "pid": os.getpid(), "polling": self.home.config.inbox.polling})
            self._loop()
            log.info("lifelong stopped")
            return 0
        finally:
            if observer is not None:
                observer.stop()
            self.lock.release()

    def _loop(self) -> None:
        rescan = self.home.config.inbox.rescan_seconds
        next_pass = self.clock()
        while not self.stopping.is_set():
            self.heartbeat = self.clock()
            if self.wake.is_set() or self.clock() >= next_pass:
                self.wake.clear()
                settle_wait = self._ingest_pass()
                next_pass = self.clock() + rescan
                if settle_wait is not None:
                    next_pass = min(next_pass, self.clock() + settle_wait + 0.05)
            # wake at least once a second so the heartbeat shows the loop is alive
            self.wake.wait(max(0.0, min(next_pass - self.clock(), 1.0)))

    def _ingest_pass(self) -> float | None:
        """One pass; a failure is logged and the loop carries on."""
        try:
            _, wait = self.inbox.pass_once()
            return wait
        except Exception:
            log.exception("ingest pass failed; retrying at the next rescan")
            return None
