"""The standby training child: imports done ahead of need, handed a spec on its stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.update.launcher import ChildRun, Standby
from tests.test_child import interrupt_after_first_step, make_spec
from tests.test_service import wait_for


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has exited; only its parent's wait() is missing


def test_a_standby_child_runs_the_spec_it_is_handed_as_a_fresh_child_does(tmp_path: Path, tiny_model: Path) -> None:
    standby = Standby(300)
    standby.warm()
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    cold_spec = make_spec(tmp_path / "cold", tiny_model, strategy="lora+replay", champion=tiny_model, parent="v0001")
    warm_spec = make_spec(tmp_path / "warm", tiny_model, strategy="lora+replay", champion=tiny_model, parent="v0001")
    cold_events: list[dict] = []
    cold = ChildRun(cold_spec, cold_events.append).start()
    cold_results = cold.wait()
    events: list[dict] = []
    warm = ChildRun(warm_spec, events.append).start(standby)
    warm_results = warm.wait()
    assert warm.warm and not cold.warm
    assert not standby.alive  # taken: the next update's standby is the daemon's to start
    kinds = [e["event"] for e in events]
    assert kinds[0] == "standby" and kinds[1] == "start" and kinds[-1] == "done"
    assert warm_results["scores"] == cold_results["scores"]
    assert warm_results["train"]["train_samples"] == cold_results["train"]["train_samples"]
    losses = [[e["loss"] for e in run if e["event"] == "step"] for run in (events, cold_events)]
    assert losses[0] and losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert (tmp_path / "warm" / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_sigterm_on_a_warm_run_checkpoints_and_a_fresh_child_resumes(tmp_path: Path, tiny_model: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, strategy="finetune", epochs=8, rows=150)
    standby = Standby(300)
    standby.warm()
    stopped_at = interrupt_after_first_step(spec, standby=standby)
    events: list[dict] = []
    ChildRun(spec, events.append).start().wait()
    assert next(e for e in events if e["event"] == "resumed")["step"] == stopped_at


def test_a_standby_retires_when_unused_and_ends_when_closed(tmp_path: Path) -> None:
    now = [0.0]
    standby = Standby(300, clock=lambda: now[0])
    standby.warm()
    first = standby.process.pid  # type: ignore[union-attr]
    standby.warm()  # one at a time
    assert standby.process.pid == first  # type: ignore[union-attr]
    now[0] = 200.0
    standby.warm()  # wanted again: renewed, not replaced
    assert standby.process.pid == first  # type: ignore[union-attr]
    now[0] = 499.0
    standby.expire()
    assert standby.alive
    now[0] = 500.0
    standby.expire()
    assert not standby.alive and gone(first)
    standby.warm()
    second = standby.process.pid  # type: ignore[union-attr]
    standby.close()
    assert gone(second) and standby.take() is None
    disabled = Standby(0)
    disabled.warm()
    assert disabled.process is None


def test_a_standby_exits_by_itself_when_its_daemon_dies(tmp_path: Path) -> None:
    """SIGKILL the parent: the standby's stdin closes and it leaves, orphaned or not."""
    parent = subprocess.run([sys.executable, "-c", (
        "import os, sys, time\n"
        "from daemon.update.launcher import Standby\n"
        "s = Standby(300); s.warm(); print(s.process.pid, flush=True)\n"
        "os._exit(0)\n")], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    pid = int(parent.stdout.split()[0])
    wait_for(lambda: gone(pid), timeout=90)  # else: the standby outlived its parent
