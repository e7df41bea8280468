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


def test_every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet() -> None:
    import yaml

    alerts = {rule["alert"] for group in yaml.safe_load((FOLDER / "alerts.yml").read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    cases = [case for test in yaml.safe_load((FOLDER / "alerts_test.yml").read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts <= firing, alerts - firing
    assert alerts <= quiet, alerts - quiet


def test_alerts_use_only_metrics_the_daemon_exports() -> None:
    from tests.test_metrics import REQUIRED

    text = (FOLDER / "alerts.yml").read_text()
    used = {word for word in __import__("re").findall(r"lifelong_[a-z_]+", text)}
    assert used <= set(REQUIRED), used - set(REQUIRED)
