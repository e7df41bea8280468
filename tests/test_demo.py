"""`make demo` (examples/demo.py) end to end: a real daemon on a fresh home with the embedded MiniLM,
the four files of examples/sentiment dropped one by one, a rollback and the report. Four real
updates of 100+ optimizer steps each: `make test-slow`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_demo_tells_the_whole_story_and_writes_the_report(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    done = subprocess.run([sys.executable, "-m", "examples.demo", "--home", str(home)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1400, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    out = done.stdout
    decisions = re.findall(r"^  decision: (\w+)", out, re.MULTILINE)
    assert len(decisions) == 4 and decisions[0] == "promoted", out
    assert decisions[3] == "rejected", out  # the poisoned batch
    reasons = out.split("[4/4]")[1].split("versions:")[0]
    assert "forgetting on batch 1:" in reasons and "majority-class baseline" in reasons, reasons
    assert "audit entry:" in out and " cli rollback " in out
    report = home / "report" / "report.html"
    assert report.is_file() and f"report: {report}" in out
    assert (home / ".lifelong-demo").is_file()  # a home the demo may remove and make again on its next run
