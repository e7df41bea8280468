"""`lifelong run` as a real process: it watches the inbox, holds the home, and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import ROOT, cli, jsonl, lifelong_cmd, spawn, write_config

ROWS = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)]


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def status(root: Path) -> dict:
    return json.loads(cli("status", "--home", str(root), "--json").stdout)


@pytest.fixture
def daemon(home_root: Path):  # type: ignore[no-untyped-def]
    procs: list[subprocess.Popen[str]] = []

    def start(**config: dict) -> subprocess.Popen[str]:
        if config:
            write_config(home_root, **config)
        proc = spawn("run", "--home", str(home_root))
        procs.append(proc)
        wait_for(lambda: (status(home_root)["daemon"] or {}).get("pid") == proc.pid or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_run_watches_the_inbox_and_stops_on_sigterm(home_root: Path, daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inbox = home_root / "inbox"
    (inbox / "before-start.jsonl").write_text(jsonl(ROWS))  # dropped while the daemon was down
    proc = daemon(inbox={"settle_seconds": 0.2, "rescan_seconds": 60})
    wait_for(lambda: (home_root / "archive" / "before-start.jsonl").exists())

    # written under a temp name and renamed into place: picked up by the events, not the 60 s rescan
    (inbox / "live.jsonl.tmp").write_text(jsonl(ROWS[:10]))
    os.rename(inbox / "live.jsonl.tmp", inbox / "live.jsonl")
    wait_for(lambda: (home_root / "archive" / "live.jsonl").exists(), timeout=10)

    # renamed in from elsewhere on the same file system
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("text,label\nfoo,a\nbar,b\n")
    os.rename(outside, inbox / "moved-in.csv")
    wait_for(lambda: (home_root / "archive" / "moved-in.csv").exists(), timeout=10)
    (inbox / "bad.jsonl").write_text("{oops\n")
    wait_for(lambda: (home_root / "quarantine" / "bad.jsonl.error.json").exists(), timeout=10)

    doc = status(home_root)
    assert doc["daemon"]["pid"] == proc.pid
    assert doc["rows_total"]["train"] + doc["rows_total"]["eval"] == 32

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert status(home_root)["daemon"] is None


def test_second_run_exits_3_naming_the_holder(home_root: Path, daemon) -> None:  # type: ignore[no-untyped-def]
    first = daemon()
    second = subprocess.run(lifelong_cmd("run", "--home", str(home_root)), cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 3
    assert f"pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=10) == 0


def test_polling_mode_and_the_rescan_timer_find_files(home_root: Path, daemon) -> None:  # type: ignore[no-untyped-def]
    daemon(inbox={"polling": True, "settle_seconds": 0.1, "rescan_seconds": 1})
    (home_root / "inbox" / "nfs.jsonl").write_text(jsonl(ROWS))
    wait_for(lambda: (home_root / "archive" / "nfs.jsonl").exists(), timeout=10)


def test_a_bad_config_stops_run_with_exit_2(home_root: Path) -> None:
    write_config(home_root, strategy={"name": "magic"})
    done = subprocess.run(lifelong_cmd("run", "--home", str(home_root)), cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "strategy.name" in done.stderr
