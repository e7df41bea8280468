"""`[hooks] on_champion_change`: a command run after every change of champion.

It runs with LIFELONG_VERSION and LIFELONG_MODEL_DIR (the version's own directory, resolved from the
champion link so a later switch cannot move it under the hook) set, in a process group of its own,
under a timeout that ends the whole group; its failure is logged and never undoes the switch.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, cast

log = logging.getLogger(__name__)
HOOK_TIMEOUT = 60.0
KILL_GRACE = 5.0  # between SIGTERM and SIGKILL of the hook's process group
OUTPUT_TAIL = 4096  # bytes of the hook's output kept for the log


def champion_hook(command: str, timeout: float = HOOK_TIMEOUT,
                  grace: float = KILL_GRACE) -> Callable[[str, Path], None] | None:
    if not command.strip():
        return None

    def run(version: str, link: Path) -> None:
        model_dir = Path(link).resolve()
        env = {**os.environ, "LIFELONG_VERSION": version, "LIFELONG_MODEL_DIR": str(model_dir)}
        proc = subprocess.Popen(command, shell=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        tail = _Tail(cast(io.BufferedReader, proc.stdout))
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc, grace)
            log.error("on_champion_change hook timed out after %ss; its process group was killed: %s", timeout,
                      tail.text(), extra={"version": version})
            return
        if code:
            log.error("on_champion_change hook exited %s: %s", code, tail.text(), extra={"version": version})
        else:
            log.info("on_champion_change hook ran", extra={"version": version})
    return run


def _end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End the hook's whole process group: SIGTERM, then SIGKILL once the shell is gone or `grace` has passed.

    The shell is reaped only at the end: until then its pid, which is the group's id, cannot be reused,
    so the signals reach the hook's processes and nothing else.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not _exited(proc.pid):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the shell or ignored SIGTERM
    except ProcessLookupError:
        pass
    proc.wait()


def _exited(pid: int) -> bool:
    """Whether the child has ended, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


class _Tail:
    """The last OUTPUT_TAIL bytes of a stream, read in a thread so a chatty hook never fills memory or blocks."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="hook-output", daemon=True)
        self._thread.start()

    def _read(self, stream: io.BufferedReader) -> None:
        with stream:
            while chunk := stream.read1(65536):
                self._kept += chunk
                del self._kept[:-OUTPUT_TAIL]

    def text(self) -> str:
        self._thread.join(timeout=1.0)  # a background child the hook left may hold the pipe open
        return bytes(self._kept).decode("utf-8", "replace").strip()
