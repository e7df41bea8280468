"""deploy/grafana: the dashboard covers what operators watch, with queries over exported metrics only."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.test_metrics import REQUIRED

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "lifelong.json"


def test_dashboard_panels_query_exported_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    names = {n.removesuffix("_bucket") for e in exprs for n in re.findall(r"lifelong_[a-z0-9_]+", e)}
    assert names <= set(REQUIRED), names - set(REQUIRED)
    for needed in ("lifelong_champion_info", "lifelong_eval_score", "lifelong_forgetting_max", "lifelong_updates_total",
                   "lifelong_update_duration_seconds", "lifelong_pending_rows", "lifelong_ingested_rows_total",
                   "lifelong_inbox_files_total", "lifelong_train_samples_per_second", "lifelong_rollbacks_total",
                   "lifelong_disk_free_bytes", "lifelong_inbox_stuck_files"):
        assert needed in names, needed
    assert any('up{job="lifelong"}' in e for e in exprs)  # daemon up
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    import shutil
    import subprocess

    import pytest

    if shutil.which("promtool") is None:
        pytest.skip("promtool not found (make tools)")
    board = json.loads(DASHBOARD.read_text())
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(t["expr"] for p in board["panels"] for t in p["targets"]):
        rules += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "rules.yml").write_text("\n".join(rules) + "\n")
    done = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
