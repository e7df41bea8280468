"""deploy/systemd/standby.conf: the drop-in for a daemon of an active/standby group verifies without a
word, keeps the unit's exposure score low, and gives the daemon what the group needs: the database
and store reachable, the shared volume required and writable, and one uid on every host."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_deploy_systemd import DEPLOY, unit_copy

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def with_dropin(folder: Path) -> Path:
    unit = unit_copy(folder)
    (folder / "lifelong.service.d").mkdir()
    shutil.copy(DEPLOY / "standby.conf", folder / "lifelong.service.d" / "standby.conf")
    return unit


def dropin() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / "standby.conf").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_verify_prints_nothing(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(with_dropin(tmp_path))], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_exposure_score(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(with_dropin(tmp_path))],
                          capture_output=True, text=True)
    match = re.search(r"Overall exposure level for lifelong.service: ([0-9.]+)", done.stdout)
    if match is None and "--offline" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    assert match, done.stdout[-500:] + done.stderr
    assert float(match.group(1)) <= 1.1, done.stdout  # the unit alone: 0.9; the allow list and a static user add 0.1
    assert "runs under a static non-root user" in done.stdout


def test_the_group_gets_the_network_the_shared_volume_and_one_uid() -> None:
    found = dropin()
    shared = found["RequiresMountsFor"][0]
    assert found["ReadWritePaths"] == [shared]
    assert found["DynamicUser"] == ["no"] and found["User"] == found["Group"] == ["lifelong"]
    allowed = found["IPAddressAllow"][0].split()
    assert allowed and all(re.fullmatch(r"[0-9a-f.:/]+", address) for address in allowed)  # addresses, not names
    text = (DEPLOY / "standby.conf").read_text()
    assert "--uid 10001" in text  # the same uid as the Kubernetes pods (runAsUser), and on every host
