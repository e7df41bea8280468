"""`ingest --once` on a terminal shows a progress bar for large files; off a terminal it prints none."""

from __future__ import annotations

import os
import pty
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT, jsonl, lifelong_cmd


def big_file(path: Path) -> None:
    rows = [{"text": f"row number {i} with some words in it", "label": "ab"[i % 2]} for i in range(150_000)]
    path.write_text(jsonl(rows))
    assert path.stat().st_size > 4 << 20


def test_progress_bar_on_a_terminal(home_root: Path) -> None:
    big_file(home_root / "inbox" / "big.jsonl")
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(lifelong_cmd("ingest", "--once", "--home", str(home_root)), cwd=ROOT, env=env,
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        output += data
    assert proc.wait(timeout=30) == 0
    os.close(leader)
    text = output.decode(errors="replace")
    assert "big.jsonl" in text and "━" in text  # rich's bar
    assert "accepted" in text


def test_no_progress_bar_off_a_terminal(home_root: Path) -> None:
    big_file(home_root / "inbox" / "big.jsonl")
    done = subprocess.run(lifelong_cmd("ingest", "--once", "--home", str(home_root)), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "━" not in done.stdout + done.stderr and "\x1b[" not in done.stdout + done.stderr
    assert done.stdout.startswith("accepted    big.jsonl")
