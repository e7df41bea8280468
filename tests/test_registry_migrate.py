"""`lifelong migrate-registry`: a home's SQLite + files registry copied to PostgreSQL + S3 with every
version, decision, audit entry and retention mark, verified, and resumable after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.home import open_registry
from registry.registry import Registry
from tests.conftest import ROOT, cli, open_home, write_config
from tests.servers import postgres_server, seaweedfs_server  # noqa: F401 (fixtures)
from tests.test_registry_crash import copy_materializer, fake_version


def history(home_root: Path) -> dict:
    """v0001..v0005 (v0004 a LoRA adapter of v0003), promotions, a rollback, a pin, decisions, and
    some versions' weights pruned; returns what a copy must hold."""
    with Registry(home_root / "registry", materializer=copy_materializer) as registry:
        for i, marker in enumerate("abcde", 1):
            lora = marker == "d"
            registry.create_version(fake_version(registry, marker, lora=lora), parent="v0003" if lora else None,
                                    strategy="lora" if lora else "replay", info={"data": {"experience": i}})
            registry.record_decision(f"v000{i}", "promoted" if marker in "abc" else "rejected",
                                     gate={"passed": marker in "abc", "reasons": [f"r{i}"]}, metrics={"new": i / 10})
        for version in ("v0001", "v0002", "v0003"):
            registry.promote(version, actor="daemon", reason="gate passed")
        registry.rollback(actor="cli", reason="bad")
        registry.pin(actor="cli", reason="hold")
        registry.record_decision("v0005", "held")
        registry.gc(2)  # the weights of the versions beyond the bound go; their records stay
        return state(registry)


def state(registry: Registry) -> dict:
    return {"versions": registry.versions(), "decisions": registry.meta.decisions(), "audit": registry.meta.audit(),
            "pruned": registry.pruned(), "champion": registry.champion(), "pinned": registry.pinned()}


def migrated(home_root: Path, urls: dict[str, str]) -> dict:
    write_config(home_root, registry=urls)
    with open_registry(open_home(home_root), materializer=copy_materializer) as registry:
        for record in registry.versions():
            if record.version not in registry.pruned():
                registry.verify(record.version, full=True)
        found = state(registry)
    write_config(home_root, registry={"metadata": "", "artifacts": ""})
    os.unlink(home_root / "registry" / "REMOTE")  # back to the local registry for the next step
    return found


@pytest.fixture
def urls(postgres_server, seaweedfs_server) -> dict[str, str]:  # noqa: F811
    return {"metadata": postgres_server.new_database(), "artifacts": seaweedfs_server.url()}


def test_every_version_decision_and_audit_entry_is_copied_and_verified(home_root: Path, urls: dict[str, str]) -> None:
    before = history(home_root)
    assert before["pruned"] and before["pinned"] and len(before["decisions"]) == 6
    result = cli("migrate-registry", "--metadata", urls["metadata"], "--artifacts", urls["artifacts"],
                 "--home", str(home_root))
    assert result.exit_code == 0, result.stderr
    assert "5 versions" in result.stdout and "verified at the destination" in result.stdout
    assert f"artifacts = '{urls['artifacts']}'" in result.stdout
    assert migrated(home_root, urls) == before
    again = cli("migrate-registry", "--metadata", urls["metadata"], "--artifacts", urls["artifacts"],
                "--home", str(home_root))
    assert again.exit_code == 0 and "migrated: 0 versions" in again.stdout and "0 decisions" in again.stdout
    assert not (home_root / "state" / "migrate-upload").exists()


def test_an_interrupted_migration_resumes(home_root: Path, urls: dict[str, str]) -> None:
    before = history(home_root)
    args = ["migrate-registry", "--metadata", urls["metadata"], "--artifacts", urls["artifacts"], "--home",
            str(home_root)]
    killer = ("import os, signal, sys\n"
              "from registry import retry\n"
              "real, calls = retry.call, [0]\n"
              "def call(*a, **k):\n"
              "    calls[0] += 1\n"
              "    if calls[0] == int(sys.argv[1]): os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(*a, **k)\n"
              "retry.call = call\n"
              "from daemon.cli import main\n"
              "main(sys.argv[2:])\n")
    for kill_at in (9, 23):  # the 9th and the 23rd request to the store: mid-copy, twice
        done = subprocess.run([sys.executable, "-c", killer, str(kill_at), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == -signal.SIGKILL, done.stderr
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert migrated(home_root, urls) == before


def test_a_destination_holding_another_registry_is_refused(home_root: Path, urls: dict[str, str],
                                                           tmp_path: Path) -> None:
    history(home_root)
    other = tmp_path / "other"
    cli("init", "--home", str(other))
    write_config(other, registry=urls)
    with open_registry(open_home(other)) as registry:
        registry.create_version(fake_version(registry, "z"), parent=None, strategy="replay")
    result = cli("migrate-registry", "--metadata", urls["metadata"], "--artifacts", urls["artifacts"],
                 "--home", str(home_root))
    assert result.exit_code == 3 and "different v0001" in result.stderr
    assert cli("migrate-registry", "--home", str(home_root)).exit_code == 2
