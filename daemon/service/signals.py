"""SIGTERM and SIGINT turned into a call made on a thread of their own.

A Python signal handler runs in the main thread between two of its bytecodes, possibly while that
thread holds a lock the handler needs. `Event.set()` from a handler is such a case: a signal that
lands while the main thread is inside `Event.wait()` on the same event (between taking the event's
lock and letting it go) blocks the handler on a lock its own thread holds, for good, and every later
SIGTERM with it. Here the Python-level handler does nothing; the interpreter's C-level handler
writes the signal's number to a pipe (`signal.set_wakeup_fd`) and a reader thread makes the call,
waiting like any other thread for the main thread to let a lock go.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _noop(_signum: int, _frame: object) -> None:
    """The Python-level handler: it only keeps the signal's default action away."""


class StopSignals:
    """`with StopSignals(on_stop):` calls `on_stop(signum)` for each SIGTERM or SIGINT received,
    on a reader thread. Used from the main thread (as `signal.signal` requires); on exit the
    earlier handlers and wakeup fd are put back. A process has one wakeup fd: nothing else in it may
    set one (an asyncio loop's `add_signal_handler` in the main thread would)."""

    def __init__(self, on_stop: Callable[[int], None], signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.on_stop = on_stop
        self.signals = tuple(int(s) for s in signals)
        self._handlers: dict[int, object] = {}
        self._previous_fd = -1
        self._write_fd = -1
        self._reader: threading.Thread | None = None

    def __enter__(self) -> StopSignals:
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C handler must never block; a full pipe drops bytes
        try:
            self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)  # main thread only
        except ValueError:
            os.close(read_fd)
            os.close(self._write_fd)
            raise
        self._handlers = {signum: signal.signal(signum, _noop) for signum in self.signals}
        self._reader = threading.Thread(target=self._read, args=(read_fd,), name="stop-signals", daemon=True)
        self._reader.start()  # a signal before it reads waits in the pipe
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the reader sees end of file, closes its end and returns
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read(self, read_fd: int) -> None:
        try:
            while data := os.read(read_fd, 64):
                for signum in data:  # a byte per handler call (signals still pending merge)
                    if signum in self.signals:
                        try:
                            self.on_stop(signum)
                        except Exception:  # the next SIGTERM must still get through
                            log.exception("handling signal %d failed", signum)
        finally:
            os.close(read_fd)
