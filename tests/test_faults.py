"""Faults in update cycles: SIGTERM mid-training, a killed child, a broken model; never a crash loop."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import cli, spawn, write_config
from tests.test_cycle import configure
from tests.test_end_to_end import drop, scrape
from tests.test_learning import toy
from tests.test_service import status, wait_for


def progress(root: Path) -> dict:
    try:
        return json.loads((root / "state" / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigterm_during_training_checkpoints_exits_0_and_resumes(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    write_config(home_root, strategy={"epochs": 40})  # long enough to be caught mid-training
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 150, seed=1))
    proc = spawn("run", "--home", str(home_root))
    wait_for(lambda: progress(home_root).get("event") == "step", timeout=60)  # the first model starts at once
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    work = home_root / "state" / "work" / "batch-000001"
    assert (work / "checkpoint" / "progress.json").is_file()
    stopped_at = json.loads((work / "checkpoint" / "progress.json").read_text())["step"]
    assert status(home_root)["last_update"] is None  # nothing decided, nothing promoted

    proc = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: "resumed" in progress(home_root).get("events", {}), timeout=60)
        assert progress(home_root)["events"]["resumed"]["step"] == stopped_at
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") is not None, timeout=240)
        assert status(home_root)["last_update"]["decision"] == "promoted"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.slow  # ~20-30 s on 2 cores: in `make test-slow` (make test's 15-minute budget)
def test_a_killed_child_is_a_failed_update_and_the_daemon_carries_on(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
    proc = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") == "promoted", timeout=120)
        write_config(home_root, strategy={"epochs": 40})
        drop(home_root, "b2.jsonl", toy(["music", "tech"], 150, seed=2))
        wait_for(lambda: (home_root / "archive" / "b2.jsonl").exists())
        assert cli("update", "--now", "--home", str(home_root)).exit_code == 0
        wait_for(lambda: progress(home_root).get("event") == "step" and progress(home_root).get("epoch", 0) >= 1,
                 timeout=60)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        children = [p for p in pids if _is_child_of(p, proc.pid)]
        assert children, "no training child found"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") == "failed", timeout=60)
        doc = status(home_root)
        assert doc["champion"] == "v0001" and "killed" in " ".join(doc["last_update"]["reasons"])
        _, text = scrape(doc["daemon"]["metrics_port"])
        assert 'lifelong_updates_total{outcome="failed"} 1.0' in text
        assert proc.poll() is None and scrape(doc["daemon"]["metrics_port"], "/healthz")[0] == 200  # still up
        time.sleep(3)
        assert status(home_root)["last_update"]["decision"] == "failed"  # backing off, not retrying in a loop
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _is_child_of(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"strategies.child" in cmdline
