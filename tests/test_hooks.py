"""`[hooks] on_champion_change` run for real: its environment, its timeout, its output."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

from daemon.service.hooks import OUTPUT_TAIL, champion_hook


def champion_link(root: Path) -> Path:
    """A registry-like layout: `champion` is a relative symlink to a version's directory."""
    (root / "versions" / "v0001").mkdir(parents=True)
    link = root / "champion"
    link.symlink_to(Path("versions") / "v0001")
    return link


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a killed orphan may wait a moment for its reaper


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_hook_gets_the_resolved_model_directory(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    hook = champion_hook(f'printf "%s %s" "$LIFELONG_VERSION" "$LIFELONG_MODEL_DIR" > {out}')
    assert hook is not None
    hook("v0001", champion_link(tmp_path))
    assert out.read_text() == f"v0001 {(tmp_path / 'versions' / 'v0001').resolve()}"


def test_a_timed_out_hook_takes_its_whole_process_group_with_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a background child, one more that ignores SIGTERM, and the shell itself (as `sleep`), all past the timeout
    hook = champion_hook(f"sleep 300 & echo $! >> {pids}; "
                         f"sh -c 'trap \"\" TERM; exec sleep 300' & echo $! >> {pids}; "
                         f"echo $$ >> {pids}; exec sleep 300", timeout=0.5, grace=0.3)
    assert hook is not None
    started = time.monotonic()
    try:
        hook("v0001", champion_link(tmp_path))
        assert time.monotonic() - started < 5
        assert eventually(lambda: len(pids.read_text().split()) == 3)
        assert eventually(lambda: not any(alive(int(pid)) for pid in pids.read_text().split()))
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)


def test_a_hook_that_leaves_a_background_child_returns_at_once(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hook = champion_hook(f"sleep 300 & echo $! > {pid_file}", timeout=5.0)
    assert hook is not None
    started = time.monotonic()
    try:
        hook("v0001", champion_link(tmp_path))
        assert time.monotonic() - started < 2  # not held until the child closes the output it inherited
    finally:
        if pid_file.exists() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_failing_hook_logs_the_tail_of_its_output(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hook = champion_hook("echo first >&2; head -c 5000000 /dev/zero | tr '\\0' x; echo; echo last words; exit 3")
    assert hook is not None
    with caplog.at_level(logging.ERROR, logger="daemon.service.hooks"):
        hook("v0001", champion_link(tmp_path))
    [record] = caplog.records
    message = record.getMessage()
    assert "exited 3" in message and message.endswith("last words")
    assert "first" not in message  # stdout and stderr are one stream, of which the tail is kept
    assert len(message) < OUTPUT_TAIL + 100
