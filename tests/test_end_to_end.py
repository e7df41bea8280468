"""The real `lifelong run` process with a tiny model: files in, decisions out, metrics, rollback, stop."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, cli, jsonl, lifelong_cmd, spawn
from tests.test_cycle import configure
from tests.test_learning import toy
from tests.test_service import status, wait_for


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def drop(root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    tmp = root / "inbox" / f".{name}"
    tmp.write_text(jsonl([{"text": t, "label": l} for t, l in rows]))
    tmp.rename(root / "inbox" / name)


def update_now(root: Path) -> dict:
    done = subprocess.run(lifelong_cmd("update", "--now", "--wait", "--json", "--home", str(root)), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def metric(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


def test_daemon_end_to_end(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    proc = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: (status(home_root)["daemon"] or {}).get("metrics_port") is not None, timeout=30)
        port = status(home_root)["daemon"]["metrics_port"]
        assert scrape(port, "/healthz")[0] == 200 and scrape(port, "/readyz")[0] == 200
        assert scrape(port, "/nope")[0] == 404
        post = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(post, timeout=5)
            raise AssertionError("POST accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 405  # read-only
        _, text = scrape(port)
        for name in ("lifelong_build_info", "lifelong_updates_total", "lifelong_update_duration_seconds_bucket",
                     "lifelong_pending_rows", "lifelong_update_in_progress", "lifelong_rollbacks_total"):
            assert metric(text, name), name
        assert 'lifelong_updates_total{outcome="promoted"} 0.0' in text  # pre-created at zero

        drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
        # no champion yet and min_new_rows reached: the first model trains without being asked
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") is not None, timeout=120)
        first = status(home_root)["last_update"]
        assert (first["decision"], first["version"]) == ("promoted", "v0001"), first
        drop(home_root, "b2.jsonl", toy(["music", "tech"], 120, seed=2))
        wait_for(lambda: (home_root / "archive" / "b2.jsonl").exists())
        second = update_now(home_root)
        assert (second["decision"], second["version"]) == ("promoted", "v0002"), second
        assert second["child_warm"] is True  # handed to the standby child started when the first update ended
        flipped = [(t, {"sport": "food", "food": "sport"}[l]) for t, l in toy(["sport", "food"], 120, seed=3)]
        drop(home_root, "b3.jsonl", flipped)
        wait_for(lambda: (home_root / "archive" / "b3.jsonl").exists())
        third = update_now(home_root)
        assert third["decision"] == "rejected" and any(r.startswith("forgetting on batch 1") for r in third["reasons"])
        failures = status(home_root)["last_update"]["failures"]  # what `status` names as the reason
        assert failures and set(failures) <= set(third["reasons"]) and any(f.startswith("forgetting on batch 1") for f in failures)

        _, text = scrape(port)
        assert 'lifelong_champion_info{base_model="' in text and 'version="v0002"' in text
        assert 'lifelong_updates_total{outcome="promoted"} 2.0' in text
        assert 'lifelong_updates_total{outcome="rejected"} 1.0' in text
        assert metric(text, 'lifelong_eval_score{model="candidate",set="old"}')

        assert cli("rollback", "--reason", "e2e", "--home", str(home_root)).exit_code == 0
        started = time.monotonic()
        wait_for(lambda: 'version="v0001"' in scrape(port)[1], timeout=2)
        assert time.monotonic() - started < 2
        assert 'lifelong_rollbacks_total 1.0' in scrape(port)[1]

        second_run = subprocess.run(lifelong_cmd("run", "--home", str(home_root)), cwd=ROOT, capture_output=True,
                                    text=True, timeout=30)
        assert second_run.returncode == 3 and f"pid {proc.pid}" in second_run.stderr
        doc = status(home_root)
        assert doc["champion"] == "v0001" and doc["last_update"]["decision"] == "rejected"
        assert doc["next_update"] is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
