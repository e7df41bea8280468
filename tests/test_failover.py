"""Active/standby: two real daemons on different homes, one PostgreSQL registry, S3 artifacts, one
shared inbox and one shared row store (`failover.state`). One is active, the other reports standby
in `lifelong status`, /readyz and `lifelong_daemon_active`; killed with SIGKILL, the active is
replaced within 30 s, and every row of every file is trained on in exactly one decided batch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from daemon.ingest.store import Store
from daemon.home import open_registry
from tests.conftest import ROOT, cli, lifelong_cmd, open_home, write_config
from tests.servers import postgres_server, seaweedfs_server  # noqa: F401 (fixtures)
from tests.test_cycle import configure
from tests.test_end_to_end import scrape
from tests.test_learning import toy
from tests.test_service import status, wait_for

ROWS = 120  # per file: 60 of each of two labels


def start(root: Path) -> subprocess.Popen[bytes]:
    log = open(root / "daemon.log", "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(lifelong_cmd("run", "--home", str(root)), cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # its group: the daemon and its children


def role(root: Path) -> str | None:
    return (status(root)["daemon"] or {}).get("role")


def drop(inbox: Path, name: str, seed: int) -> None:
    tmp = inbox / f".{name}"
    tmp.write_text("".join(f'{{"text": "{t}", "label": "{l}"}}\n' for t, l in toy(["sport", "food"], ROWS // 2, seed)))
    tmp.rename(inbox / name)


def decided(root: Path) -> list[int]:
    """The batches an update decided (promoted, rejected or held), as the shared row store has them."""
    with Store(open_home(root).store_path) as store:
        return sorted(u["batch"] for u in store.updates() if u["decision"] != "failed")


def kill(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL to the daemon and its children, as when its machine or pod dies; when it was done."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic()


# in `make test-slow` (35 s of make test's budget): the takeover itself is also checked here by
# test_an_active_whose_lease_session_is_cut_steps_down_and_a_standby_takes_it
@pytest.mark.slow
def test_a_standby_takes_over_within_30s_and_no_row_is_lost_or_trained_twice(
        tmp_path: Path, tiny_model: Path, postgres_server, seaweedfs_server) -> None:  # noqa: F811
    shared = tmp_path / "shared"  # the volume every daemon mounts: the inbox and the row store
    metadata, artifacts = postgres_server.new_database(), seaweedfs_server.url()
    homes = [tmp_path / "a", tmp_path / "b"]
    for root in homes:
        assert cli("init", "--home", str(root)).exit_code == 0
        configure(root, tiny_model)
        # no schedule ticks: the first model at once, later rows once they waited max_wait
        write_config(root, registry={"metadata": metadata, "artifacts": artifacts},
                     inbox={"path": str(shared / "inbox"), "settle_seconds": 0, "eval_fraction": 0.25},
                     failover={"state": str(shared / "state")}, metrics={"bind": "127.0.0.1:0"},
                     schedule={"interval": "1h", "min_new_rows": 1, "max_wait": "4s"}, train={"standby_seconds": 0},
                     strategy={"epochs": 1, "min_steps": 0})  # what is learned does not matter here: who decides
    a, b = homes
    procs = {a: start(a)}
    try:
        wait_for(lambda: role(a) == "active", timeout=60)
        procs[b] = start(b)
        wait_for(lambda: role(b) == "standby", timeout=60)
        doc = status(b)
        assert doc["daemon"]["active_daemon"].endswith(f"pid {procs[a].pid}") and doc["rows_skipped"]
        assert "standby:" in cli("status", "--home", str(b)).stdout
        port_a, port_b = status(a)["daemon"]["metrics_port"], doc["daemon"]["metrics_port"]
        assert scrape(port_a, "/readyz") == (200, "ready\n") and scrape(port_b, "/readyz") == (200, "standby\n")
        assert "lifelong_daemon_active 1.0" in scrape(port_a)[1] and "lifelong_daemon_active 0.0" in scrape(port_b)[1]

        drop(shared / "inbox", "one.jsonl", seed=1)  # the first model, trained by a
        wait_for(lambda: (status(a)["last_update"] or {}).get("decision") is not None, timeout=180)
        assert status(a)["last_update"]["version"] == "v0001"

        drop(shared / "inbox", "two.jsonl", seed=2)  # ingested by a, which is killed before training on it
        wait_for(lambda: not (shared / "inbox" / "two.jsonl").exists(), timeout=60)
        with Store(open_home(a).store_path) as store:
            assert store.counts(pending=True)["train"] + store.counts(pending=True)["eval"] == ROWS
        killed = kill(procs[a])
        wait_for(lambda: role(b) == "active", timeout=30)
        took_over = time.monotonic() - killed
        assert took_over < 30, took_over
        assert scrape(port_b, "/readyz") == (200, "ready\n") and "lifelong_daemon_active 1.0" in scrape(port_b)[1]

        procs[a] = start(a)  # back, as a standby now
        wait_for(lambda: role(a) == "standby", timeout=60)
        wait_for(lambda: (status(b)["last_update"] or {}).get("version") == "v0002", timeout=180)

        # b dies in the middle of an update: a resumes the batch, which is decided once
        drop(shared / "inbox", "three.jsonl", seed=3)
        progress = b / "state" / "progress.json"
        wait_for(lambda: progress.exists() and '"batch": 3' in progress.read_text(), timeout=60)
        killed = kill(procs[b])
        wait_for(lambda: role(a) == "active", timeout=30)
        assert time.monotonic() - killed < 30
        wait_for(lambda: decided(a) == [1, 2, 3], timeout=240)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill(proc)
    home = open_home(a)
    with Store(home.store_path) as store:  # every row of the three files, in three batches, none pending
        assert store.counts(pending=False)["train"] + store.counts(pending=False)["eval"] == 3 * ROWS
        assert store.counts(pending=True) == {"train": 0, "eval": 0}
        assert store.file_outcomes()["accepted"] == 3
        assert [batch["batch"] for batch in store.batches()] == [1, 2, 3]
        assert sorted(u["batch"] for u in store.updates() if u["decision"] != "failed") == [1, 2, 3]
    assert sorted(os.listdir(shared / "inbox")) == [] and len(os.listdir(shared / "state" / "archive")) == 3
    with open_registry(home, recover=False) as registry:  # one version, one decision, for each batch
        trained = [record.info["data"]["experience"] for record in registry.versions()
                   if registry.decision_record(record.version) is not None]
    assert sorted(trained) == [1, 2, 3], trained
    postgres_server.drop_database(metadata)


def test_a_batch_decided_in_the_registry_but_not_in_the_row_store_is_recorded_not_trained_again(
        home_root: Path, tiny_model: Path) -> None:
    from daemon.ingest.inbox import Inbox
    from daemon.service.role import settle_decided
    from tests.conftest import stage_full

    configure(home_root, tiny_model)
    drop(home_root / "inbox", "one.jsonl", seed=1)
    home = open_home(home_root)
    Inbox(home).pass_once()
    with Store(home.store_path) as store:
        batch = store.close_batch("2026-01-01T00:00:00.000Z")
        files = store.batch_files(batch)
    with open_registry(home) as registry:  # what a daemon killed between the registry and the row store left
        other = registry.create_version(stage_full(registry, tiny_model, "x"), parent=None, strategy="replay",
                                        info={"data": {"experience": batch, "files": ["another.jsonl"]}})
        mine = registry.create_version(stage_full(registry, tiny_model, "y"), parent=None, strategy="replay",
                                       info={"data": {"experience": batch, "files": files}})
        registry.record_decision(other.version, "rejected", gate={"passed": False, "reasons": ["no"]})
        registry.record_decision(mine.version, "promoted", gate={"passed": True, "reasons": ["better"]})
    settle_decided(home)
    with Store(home.store_path) as store:
        assert store.undecided_batch() is None
        (update,) = store.updates()
        assert (update["batch"], update["version"], update["decision"], update["reasons"]) == (
            batch, mine.version, "promoted", ["better"])
    with open_registry(home) as registry:  # the promotion it decided and did not make, made
        assert registry.champion() == mine.version
    settle_decided(home)  # nothing undecided: nothing done
    with Store(home.store_path) as store:
        assert len(store.updates()) == 1


def test_an_active_whose_lease_session_is_cut_steps_down_and_a_standby_takes_it(postgres_server) -> None:  # noqa: F811
    import psycopg

    from daemon.service.role import POLL, Role

    now = [0.0]
    url = postgres_server.new_database()
    try:
        first, second = Role(url, clock=lambda: now[0]), Role(url, clock=lambda: now[0])
        assert (first.name, second.name) == ("standby", "standby")
        assert first.take() and first.name == "active" and first.kept()
        assert not second.take() and second.name == "standby" and second.holder == first.lease.me
        assert not second.take()  # not tried again before POLL seconds
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                          (f"lifelong active {first.lease.me}",))
        time.sleep(0.2)
        now[0] += 1.0
        assert not first.kept() and first.name == "standby"
        now[0] += POLL
        deadline = time.monotonic() + 10
        while not second.take():  # the cut session's lock is gone once the server has ended it
            assert time.monotonic() < deadline
            now[0] += POLL
            time.sleep(0.1)
        assert second.name == "active" and not first.take() and first.holder == second.lease.me
        first.release()
        second.release()
        assert Role("").active and Role("").take() and Role("").kept()  # SQLite: alone, always active
    finally:
        postgres_server.drop_database(url)
