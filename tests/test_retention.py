"""Retention and disk: `lifelong gc`, pruned versions through the CLI, retention after an update, the
min_free_bytes guard and the two metrics, on real homes."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.service.metrics import Metrics
from registry.lock import PidLock
from registry.registry import Registry
from tests.conftest import cli, open_home, stage_full, write_config
from tests.test_cycle import configure, cycle, drop
from tests.test_learning import toy

KEEP_ONE = {"LIFELONG_REGISTRY__KEEP_VERSIONS": "1"}


def seed(root: Path, tiny_model: Path, decisions: str = "pprr") -> None:
    """Versions v0001.. from the tiny model: p promoted in turn, r rejected."""
    with Registry(root / "registry") as registry:
        for i, kind in enumerate(decisions, 1):
            version = registry.create_version(stage_full(registry, tiny_model, str(i)), parent=None,
                                              strategy="replay").version
            registry.record_decision(version, "promoted" if kind == "p" else "rejected",
                                     gate={"passed": kind == "p", "reasons": ["seeded"]},
                                     metrics={"candidate": {"new": 0.9, "old": 0.8}})
            if kind == "p":
                registry.promote(version, actor="daemon")


def test_gc_dry_run_then_gc_and_what_a_pruned_version_still_says(home_root: Path, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    seed(home_root, tiny_model, "pprrp")  # champion v0005; v0002 its rollback target
    versions = home_root / "registry" / "versions"
    dry = cli("gc", "--dry-run", "--json", "--home", str(home_root), env={"LIFELONG_REGISTRY__KEEP_VERSIONS": "2"})
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert [p["version"] for p in doc["pruned"]] == ["v0001", "v0003", "v0004"]
    assert doc["kept"] == ["v0002", "v0005"] and doc["dry_run"] is True and doc["keep_versions"] == 2
    assert doc["bytes_freed"] == sum(p["bytes"] for p in doc["pruned"]) > 0
    assert len(list(versions.iterdir())) == 5  # a dry run changes nothing
    plain = cli("gc", "--dry-run", "--home", str(home_root), env={"LIFELONG_REGISTRY__KEEP_VERSIONS": "2"}).stdout
    assert "would prune v0001" in plain and "registry.keep_versions = 2" in plain

    done = cli("gc", "--home", str(home_root), env={"LIFELONG_REGISTRY__KEEP_VERSIONS": "2"})
    assert done.exit_code == 0 and "pruned      v0003" in done.stdout and "freed" in done.stdout
    assert sorted(p.name for p in versions.iterdir()) == ["v0002", "v0005"]
    rows = {r["version"]: r for r in json.loads(cli("versions", "--json", "--home", str(home_root)).stdout)}
    assert rows["v0003"]["weights"] == "pruned" and rows["v0005"]["weights"] == "kept"
    assert rows["v0003"]["decision"] == "rejected" and rows["v0003"]["metrics"] == {"new": 0.9, "old": 0.8}
    shown = json.loads(cli("show", "v0001", "--json", "--home", str(home_root)).stdout)
    assert shown["weights"] == "pruned" and shown["pruned_at"] and shown["gate"]["reasons"] == ["seeded"]
    assert [e["to"] for e in shown["audit"]] == ["v0002", "v0001"]  # its audit stays
    assert "weights   pruned at" in cli("show", "v0001", "--home", str(home_root)).stdout
    for args in (["promote", "v0003"], ["promote", "v0003", "--force"], ["rollback", "--to", "v0004"],
                 ["export", "v0001", str(tmp_path / "out")]):
        result = cli(*args, "--home", str(home_root))
        assert result.exit_code == 4, (args, result.output)
        assert "weights were pruned" in result.stderr and "keep_versions" in result.stderr
    assert cli("rollback", "--home", str(home_root)).exit_code == 0  # v0002 was within the bound
    result = cli("rollback", "--home", str(home_root))
    assert result.exit_code == 4 and "v0001's weights were pruned" in result.stderr

    metrics = Metrics(open_home(home_root)).exposition().decode()
    assert 'lifelong_versions{state="kept"} 2.0' in metrics
    assert 'lifelong_versions{state="pruned"} 3.0' in metrics
    free = next(line for line in metrics.splitlines() if line.startswith("lifelong_disk_free_bytes "))
    assert float(free.split()[1]) > 0


def test_gc_exits_3_while_a_registry_change_holds_the_lock(home_root: Path, tiny_model: Path) -> None:
    seed(home_root, tiny_model)
    lock = PidLock(home_root / "registry" / ".lock", "a registry change").acquire()
    try:
        result = cli("gc", "--wait", "0", "--home", str(home_root), env=KEEP_ONE)
    finally:
        lock.release()
    assert result.exit_code == 3 and "a registry change is already running" in result.stderr
    assert len(list((home_root / "registry" / "versions").iterdir())) == 4
    assert cli("gc", "--home", str(home_root), env=KEEP_ONE).exit_code == 0


def test_an_update_short_of_disk_is_skipped_after_retention_and_its_rows_stay_pending(
        home_root: Path, tiny_model: Path) -> None:
    seed(home_root, tiny_model)
    configure(home_root, tiny_model)
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 20, seed=1))
    env = {**KEEP_ONE, "LIFELONG_REGISTRY__MIN_FREE_BYTES": str(1 << 60)}
    result = cli("update", "--now", "--json", "--home", str(home_root), env=env)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["decision"] is None and outcome["version"] is None
    reason = outcome["reasons"][0]
    assert reason.startswith("skipped: ") and f"registry.min_free_bytes = {1 << 60}" in reason
    status = json.loads(cli("status", "--json", "--home", str(home_root)).stdout)
    assert status["pending_rows"]["train"] > 0 and status["last_update"] is None  # the batch was never closed
    with Registry(home_root / "registry") as registry:  # retention ran first, to make room
        assert set(registry.pruned()) == {"v0001", "v0003"} and len(registry.versions()) == 4


def test_an_update_applies_retention_after_its_decision(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    seed(home_root, tiny_model, "rr")  # two rejected versions, no champion
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
    home = open_home(home_root)
    with Registry(home.registry) as registry:
        assert registry.gc(home.config.registry.keep_versions).pruned == []  # 20 by default: nothing to do
    write_config(home_root, registry={"keep_versions": 1})
    first = cycle(home_root)
    assert (first["decision"], first["version"]) == ("promoted", "v0003"), first
    with Registry(home_root / "registry") as registry:
        assert set(registry.pruned()) == {"v0001", "v0002"}
        registry.verify("v0003", full=True)
        assert registry.artifacts.versions_present() == {"v0003"}
