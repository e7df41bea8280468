"""deploy/prometheus: the alert rules parse and their unit tests pass under promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not found (make tools)")
def test_alert_rules_check_and_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=FOLDER, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=FOLDER, capture_output=True, text=True)
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_alerts_use_only_metrics_the_daemon_exports() -> None:
    from tests.test_metrics import CONTRACT

    text = (FOLDER / "alerts.yml").read_text()
    used = {word for word in __import__("re").findall(r"lifelong_[a-z_]+", text)}
    assert used <= set(CONTRACT), used - set(CONTRACT)
