"""systemd notify protocol against a real unix datagram socket, and the daemon's use of it."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from daemon.service.notify import Notifier
from tests.conftest import spawn


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    return sock


def receive_until(sock: socket.socket, wanted: str, seen: list[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        seen.extend(sock.recv(4096).decode().split("\n"))


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    sock = listen(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"})
    assert notifier.watchdog_interval == 2.0
    assert notifier.ready() and notifier.watchdog() and notifier.stopping()
    assert [sock.recv(100).decode() for _ in range(3)] == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
    assert Notifier({}).ready() is False  # not under systemd: nothing sent, nothing fails


def test_daemon_notifies_ready_watchdog_and_stopping(home_root: Path, tmp_path: Path) -> None:
    sock = listen(tmp_path / "notify")
    proc = spawn("run", "--home", str(home_root),
                 env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"})
    seen: list[str] = []
    try:
        receive_until(sock, "READY=1", seen)
        before = seen.count("WATCHDOG=1")
        time.sleep(2.5)
        sock.settimeout(0.5)
        try:
            while True:
                seen.extend(sock.recv(4096).decode().split("\n"))
        except socket.timeout:
            pass
        assert seen.count("WATCHDOG=1") - before >= 3  # about every 0.5 s while the loop runs
        proc.send_signal(signal.SIGSTOP)  # a stalled main loop sends no more pings
        sock.settimeout(1.5)
        stalled: list[str] = []
        try:
            stalled.extend(sock.recv(4096).decode().split("\n"))
        except socket.timeout:
            pass
        assert "WATCHDOG=1" not in stalled
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        sock.settimeout(20)
        receive_until(sock, "STOPPING=1", seen)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
