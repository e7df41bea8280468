"""`versions`, `show`, `promote`, `rollback`, `unpin`, `export`, `gc` through the real CLI."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from registry.registry import Registry
from tests.conftest import cli, spawn, stage_full
from tests.test_service import status, wait_for


def seed_versions(home_root: Path, tiny_model: Path) -> None:
    with Registry(home_root / "registry") as registry:
        for i, marker in enumerate("abc", 1):
            registry.create_version(stage_full(registry, tiny_model, marker), parent=f"v000{i - 1}" if i > 1 else None,
                                    strategy="lora+replay", info={"data": {"experience": i, "train_rows": 90,
                                                                           "eval_rows": 10, "files": [f"{i}.jsonl"]},
                                                                  "config": {"strategy": {"name": "lora+replay"}}})
            passed = marker != "c"
            registry.record_decision(f"v000{i}", "promoted" if passed else "rejected",
                                     gate={"passed": passed, "reasons": [] if passed else ["forgetting on batch 1: 0.041 > 0.02"]},
                                     metrics={"candidate": {"new": 0.9, "old": 0.8, "per_experience": {"1": 0.8, str(i): 0.9}
                                                            if passed else {"1": 0.759, str(i): 0.9}, "canary": None},
                                              "champion": {"new": 0.5, "old": 0.82, "per_experience": {"1": 0.8, str(i): 0.5},
                                                           "canary": None},
                                              "rows": {"1": 100, str(i): 100}, "baseline": 0.5,
                                              "accuracy_matrix": [[0.8]]})
            if passed:
                registry.promote(f"v000{i}", actor="daemon", reason="gate passed")


def test_versions_and_show_json_shapes(home_root: Path, tiny_model: Path) -> None:
    seed_versions(home_root, tiny_model)
    result = cli("versions", "--home", str(home_root), "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["version"] for r in rows] == ["v0001", "v0002", "v0003"]
    assert {"version", "parent", "created_at", "strategy", "decision", "metrics"} <= set(rows[0])
    assert rows[2]["decision"] == "rejected" and rows[0]["metrics"] == {"new": 0.9, "old": 0.8}
    doc = json.loads(cli("show", "v0003", "--home", str(home_root), "--json").stdout)
    assert {"version", "parent", "created_at", "strategy", "config", "data", "metrics", "accuracy_matrix", "gate",
            "decision", "audit"} <= set(doc)
    assert set(doc["data"]) >= {"experience", "train_rows", "eval_rows", "files"}
    assert doc["gate"] == {"passed": False, "reasons": ["forgetting on batch 1: 0.041 > 0.02"]}
    assert doc["lineage"] == ["v0003", "v0002", "v0001"]
    assert set(doc["metrics"]["candidate"]) >= {"new", "old", "per_experience", "canary"}
    plain = cli("versions", "--home", str(home_root)).stdout
    assert "* v0002" in plain
    assert "forgetting on batch 1" in cli("show", "v0003", "--home", str(home_root)).stdout


def test_exit_codes_4_and_3(home_root: Path, tiny_model: Path) -> None:
    seed_versions(home_root, tiny_model)
    for args in (["show", "v0042"], ["promote", "v0042"], ["rollback", "--to", "v0042"], ["export", "v0042", "/tmp/x"]):
        result = cli(*args, "--home", str(home_root))
        assert result.exit_code == 4, (args, result.output)
        assert "no such version: v0042" in result.stderr
    result = cli("promote", "v0003", "--home", str(home_root))  # its gate fails again under today's config
    assert result.exit_code == 3 and "forgetting on batch 1: 0.041 > 0.02" in result.stderr
    loose = cli("promote", "v0003", "--home", str(home_root), env={"LIFELONG_GATE__MAX_FORGETTING": "0.05"})
    assert loose.exit_code == 0, loose.stderr  # re-checked with the current config: it passes now
    assert cli("rollback", "--home", str(home_root)).exit_code == 0
    result = cli("promote", "v0002", "--home", str(home_root))
    assert result.exit_code == 3 and "already the champion" in result.stderr
    assert cli("promote", "v0003", "--force", "--reason", "hotfix", "--home", str(home_root)).exit_code == 0
    doc = json.loads(cli("status", "--home", str(home_root), "--json").stdout)
    assert doc["champion"] == "v0003"
    assert doc["audit"][0] == {**doc["audit"][0], "actor": "cli", "action": "manual_promote", "from": "v0002",
                               "to": "v0003", "reason": "hotfix"}


def test_rollback_pin_unpin_and_export(home_root: Path, tiny_model: Path, tmp_path: Path) -> None:
    seed_versions(home_root, tiny_model)
    result = cli("rollback", "--reason", "bad answers", "--pin", "--home", str(home_root))
    assert result.exit_code == 0, result.output
    doc = json.loads(cli("status", "--home", str(home_root), "--json").stdout)
    assert (doc["champion"], doc["pinned"]) == ("v0001", True)
    versions = {r["version"]: r["decision"] for r in json.loads(cli("versions", "--home", str(home_root), "--json").stdout)}
    assert versions["v0002"] == "rolled_back"
    assert cli("unpin", "--home", str(home_root)).exit_code == 0
    assert json.loads(cli("status", "--home", str(home_root), "--json").stdout)["pinned"] is False
    assert cli("export", "v0002", str(tmp_path / "out"), "--home", str(home_root)).exit_code == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_commands_work_while_the_daemon_runs(home_root: Path, tiny_model: Path) -> None:
    seed_versions(home_root, tiny_model)
    proc = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: (status(home_root)["daemon"] or {}).get("pid") == proc.pid)
        assert cli("rollback", "--home", str(home_root)).exit_code == 0
        assert status(home_root)["champion"] == "v0001"
        assert (home_root / "registry" / "champion").resolve().parent.name == "v0001"
        gc = cli("gc", "--json", "--home", str(home_root), env={"LIFELONG_REGISTRY__KEEP_VERSIONS": "1"})
        assert gc.exit_code == 0, gc.output
        assert [p["version"] for p in json.loads(gc.stdout)["pruned"]] == ["v0002"]  # rolled back, beyond the bound
        assert (home_root / "registry" / "champion" / "config.json").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
