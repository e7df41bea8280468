"""deploy/systemd: the unit verifies without a single warning and stays at exposure <= 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_copy(folder: Path, gpu: bool = False) -> Path:
    """The unit with ExecStart pointing at this checkout's lifelong (verify checks it exists)."""
    lifelong = Path(sys.executable).with_name("lifelong")
    unit = folder / "lifelong.service"
    unit.write_text((DEPLOY / "lifelong.service").read_text().replace("/opt/lifelong/.venv/bin/lifelong", str(lifelong)))
    if gpu:
        (folder / "lifelong.service.d").mkdir()
        shutil.copy(DEPLOY / "gpu.conf", folder / "lifelong.service.d" / "gpu.conf")
    return unit


@pytest.mark.parametrize("gpu", [False, True])
def test_verify_prints_nothing(tmp_path: Path, gpu: bool) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(unit_copy(tmp_path, gpu))], capture_output=True, text=True)
    # verify exits 0 on a misspelt key, so any line it prints is a failure
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_exposure_of_the_cpu_unit(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit_copy(tmp_path))],
                          capture_output=True, text=True)
    match = re.search(r"Overall exposure level for lifelong.service: ([0-9.]+)", done.stdout)
    assert match, done.stdout[-500:] + done.stderr
    assert float(match.group(1)) <= 2.5


def test_the_unit_speaks_notify_and_stops_after_the_checkpoint_grace() -> None:
    text = (DEPLOY / "lifelong.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    from daemon.service import STOP_GRACE

    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert int(settings["TimeoutStopSec"]) > STOP_GRACE
    assert settings["CapabilityBoundingSet"] == "" and settings["NoNewPrivileges"] == "yes"
