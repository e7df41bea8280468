"""Liveness during long work: a 1 GiB JSONL file keeps /healthz at 200 and systemd's watchdog fed
while it is ingested, and SIGTERM in the middle of it stops the daemon cleanly with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from daemon.ingest.store import Store
from tests.conftest import spawn, write_config

pytestmark = pytest.mark.slow
GIB = 1 << 30


def write_big_jsonl(path: Path, size: int) -> int:
    """About `size` bytes of valid rows (each row's text distinct); returns the row count."""
    filler = "a short review of a film"  # short rows: ten million of them, the slow case per byte
    block_rows = 10_000
    rows = 0
    with open(path, "w") as handle:
        while handle.tell() < size:
            handle.write("".join(f'{{"text": "{rows + i} {filler}", "label": "{"pn"[i % 2]}"}}\n' for i in range(block_rows)))
            rows += block_rows
    return rows


class Probe(threading.Thread):
    """Polls /healthz and listens for systemd notifications while the daemon works."""

    def __init__(self, port: int, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.port, self.sock = port, sock
        self.codes: list[int] = []
        self.pings: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as answer:
                    self.codes.append(answer.status)
            except OSError as exc:
                self.codes.append(getattr(exc, "code", 0))
            try:
                while True:
                    if b"WATCHDOG=1" in self.sock.recv(4096):
                        self.pings.append(time.monotonic())
            except socket.timeout:
                pass


def start(root: Path, notify: Path) -> tuple:  # type: ignore[type-arg]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if notify.exists():
        notify.unlink()
    sock.bind(str(notify))
    proc = spawn("run", "--home", str(root), env={"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "10000000"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            state = json.loads((root / "state" / "daemon.json").read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("pid") == proc.pid and state.get("metrics_port"):  # this daemon's, not the last one's
            return proc, sock, state["metrics_port"]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("daemon did not start")


def test_a_1gib_file_keeps_the_daemon_alive_and_sigterm_loses_nothing(home_root: Path, tmp_path: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 0, "rescan_seconds": 1, "max_file_bytes": 2 * GIB},
                 schedule={"min_new_rows": 10**9, "max_wait": "1000d"}, train={"standby_seconds": 0},
                 metrics={"bind": "127.0.0.1:0"})
    staged = home_root / "inbox" / ".big.jsonl.tmp"  # written under a temp name, renamed into place
    rows = write_big_jsonl(staged, GIB)
    big = home_root / "inbox" / "big.jsonl"

    # SIGTERM in the middle of the ingest: a clean exit, the file still in the inbox, no row stored
    proc, sock, port = start(home_root, tmp_path / "notify")
    os.rename(staged, big)
    time.sleep(3)
    assert big.exists(), "the file was ingested before the stop could land in the middle"
    stopping = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.communicate()
    stopped_in = time.monotonic() - stopping
    sock.close()
    assert big.exists() and not (home_root / "archive" / "big.jsonl").exists()
    with Store(home_root / "state" / "rows.sqlite") as store:
        assert store.row_count() == 0 and store.segment_rows() == {}
    assert stopped_in < 30, stopped_in  # systemd's TimeoutStopSec is far longer

    # the next start ingests it whole, once, while /healthz and the watchdog stay fed throughout
    proc, sock, port = start(home_root, tmp_path / "notify")
    probe = Probe(port, sock)
    probe.start()
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 600
        while big.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (home_root / "archive" / "big.jsonl").exists()
    finally:
        probe.done.set()
        probe.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        sock.close()
    took = time.monotonic() - started
    assert len(probe.codes) >= 5 and set(probe.codes) == {200}, (probe.codes, took)  # polled during the ingest
    gaps = [b - a for a, b in zip([started, *probe.pings], [*probe.pings, time.monotonic()])]
    assert max(gaps) < 10, (max(gaps), took)  # WATCHDOG_USEC: systemd would have killed it past this
    with Store(home_root / "state" / "rows.sqlite") as store:
        assert store.row_count() == rows == sum(store.segment_rows().values())
