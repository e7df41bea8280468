"""A real Prometheus scrapes a real `lifelong run` through one update; every dashboard query then
returns data from Prometheus's HTTP API, and the alert rules load and evaluate cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import spawn
from tests.test_cycle import configure
from tests.test_end_to_end import drop
from tests.test_learning import toy
from tests.test_service import status, wait_for

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "lifelong.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not found (make tools)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def test_prometheus_scrapes_the_daemon_and_every_panel_has_data(home_root: Path, tiny_model: Path, tmp_path: Path) -> None:
    configure(home_root, tiny_model)
    daemon = spawn("run", "--home", str(home_root))
    prometheus = None
    try:
        wait_for(lambda: (status(home_root)["daemon"] or {}).get("metrics_port") is not None, timeout=30)
        target = status(home_root)["daemon"]["metrics_port"]
        web = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: lifelong
    static_configs:
      - targets: ["127.0.0.1:{target}"]
""")
        prometheus = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def scraped() -> bool:
            try:
                result = api(web, "query", query='up{job="lifelong"}')["data"]["result"]
            except OSError:
                return False
            return bool(result) and result[0]["value"][1] == "1"

        wait_for(scraped, timeout=60)
        time.sleep(2)  # a few scrapes of the idle daemon, so counters have a before and an after
        drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") is not None, timeout=180)
        assert status(home_root)["last_update"]["decision"] == "promoted"

        empty: dict[str, str] = {}
        deadline = time.monotonic() + 60
        for title, expr in dashboard_queries():
            if "lifelong_entity_f1" in expr:
                continue  # a token classification home's (this one classifies texts); tests/test_ner.py scrapes it
            while True:
                body = api(web, "query", query=expr)
                assert body["status"] == "success", (title, expr, body)
                if body["data"]["result"]:
                    break
                if time.monotonic() > deadline:
                    empty[title] = expr
                    break
                time.sleep(1)
        assert not empty, f"panels without data: {empty}"

        champion = api(web, "query", query="lifelong_champion_info")["data"]["result"]
        assert champion[0]["metric"]["version"] == "v0001"
        groups = api(web, "rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert rules and all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
        firing = [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"]
        assert "LifelongDown" not in firing and "LifelongUpdateFailures" not in firing, firing
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
