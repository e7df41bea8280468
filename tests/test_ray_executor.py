"""`train.executor = "ray"`: updates trained on a real two-node Ray cluster (ray.cluster_utils.Cluster,
a head and one more node of one CPU each, in a temp dir of its own) with the run's files in a real
SeaweedFS. Nothing is mocked. The cluster cases are slow (`make test-slow`)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from daemon.config import parse
from daemon.home import open_registry
from daemon.update.cycle import UpdateCycle
from daemon.update.executors.ray import RayExecutor
from daemon.update.launcher import TrainingFailed
from strategies.runstore import RunStore, run_url
from tests.conftest import open_home, spawn, write_config
from tests.servers import free_port, ray_cluster, seaweedfs_server  # noqa: F401 (fixture)
from tests.test_child import make_spec
from tests.test_cycle import drop
from tests.test_learning import toy
from tests.test_service import status, wait_for

ray = pytest.importorskip("ray", reason="the lifelong[ray] extra (ray[train]) is not installed")


@pytest.fixture(scope="module")
def cluster(seaweedfs_server):  # noqa: F811 - the workers inherit its AWS_* from this process
    with ray_cluster() as running:
        yield running


def configure(root: Path, model: Path, address: str, artifacts: str, *, epochs: int = 4) -> None:
    write_config(root, model={"base": str(model), "max_length": 32}, inbox={"settle_seconds": 0, "eval_fraction": 0.25},
                 strategy={"name": "replay", "class_weights": "none", "epochs": epochs, "min_steps": 0, "lr": 2e-3,
                           "batch_size": 16, "early_stopping_patience": 0},
                 train={"device": "cpu", "standby_seconds": 0, "executor": "ray",
                        "ray": {"address": address, "num_workers": 2, "resources_per_worker": {"CPU": 1}}},
                 gate={"min_eval_rows": 10}, registry={"artifacts": artifacts})


def test_an_unreachable_cluster_fails_the_update_clearly_and_starts_nothing(tmp_path: Path, tiny_model: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = parse({"train": {"executor": "ray", "ray": {"address": address}},
                    "registry": {"artifacts": "s3://no-such-bucket/prefix"}})
    spec = make_spec(tmp_path, tiny_model)
    started = time.monotonic()
    # checked before anything is staged (staging to this bucket would fail otherwise) or spawned
    with pytest.raises(TrainingFailed, match=f"cannot reach the Ray cluster at train.ray.address '{address}'"):
        RayExecutor(config).start(spec)
    assert time.monotonic() - started < 10


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_update_trains_across_both_nodes_and_the_gate_decides(
        home_root: Path, tiny_model: Path, cluster, seaweedfs_server) -> None:  # noqa: F811
    artifacts = seaweedfs_server.url()
    configure(home_root, tiny_model, cluster.address, artifacts)
    drop(home_root, "a.jsonl", toy(["sport", "food"], 80, seed=1))
    home = open_home(home_root)
    events: list[dict] = []
    with open_registry(home) as registry:
        outcome = UpdateCycle(home, registry, on_event=events.append).run()
        assert outcome.decision in ("promoted", "rejected"), outcome.reasons
        train = outcome.summary["train"]
        # two workers of one CPU each on a cluster of two one-CPU nodes: one on each
        assert train["processes"] == 2 and train["replicas_in_sync"] is True
        version = registry.get(outcome.version)
        assert registry.artifacts.exists(version.version) and (outcome.decision == "promoted") == (
            registry.champion() == version.version)
    kinds = [e["event"] for e in events]
    assert "start" in kinds and "step" in kinds and "evaluating" in kinds and kinds[-1] == "decision"
    assert RunStore(run_url(artifacts, outcome.batch)).keys() == []  # the run's folder is gone


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_killed_mid_run_resumes_from_its_checkpoint_or_fails_and_nothing_broken_is_promoted(
        home_root: Path, tiny_model: Path, cluster, seaweedfs_server) -> None:  # noqa: F811
    artifacts = seaweedfs_server.url()
    configure(home_root, tiny_model, cluster.address, artifacts, epochs=8)
    drop(home_root, "a.jsonl", toy(["sport", "food"], 80, seed=1))
    home = open_home(home_root)
    epochs = threading.Event()
    seen: list[dict] = []

    def on_event(event: dict) -> None:
        seen.append(event)
        if event.get("event") == "epoch" and event["epoch"] >= 2:
            epochs.set()

    with open_registry(home) as registry:
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(
            outcome=UpdateCycle(home, registry, on_event=on_event).run()))
        worker.start()
        assert epochs.wait(300), f"no second epoch: {seen[-3:]}"
        store = RunStore(run_url(artifacts, 1))
        assert store.get_json("checkpoint.json") is not None  # every epoch's checkpoint is in the store
        victim = store.get_json("workers/1.json")["pid"]
        os.kill(victim, signal.SIGKILL)
        worker.join(600)
        outcome = result["outcome"]
        kinds = [e["event"] for e in seen]
        print(f"after the kill: {outcome.decision}, events {kinds.count('start')} starts, {kinds.count('resumed')} resumed")
        if outcome.decision == "failed":
            assert outcome.version is None and registry.champion() is None and registry.versions() == []
        else:  # Ray restarted the workers: they resumed from the store's checkpoint, not from scratch
            assert "resumed" in kinds, kinds
            resumed = next(e for e in seen if e["event"] == "resumed")
            assert resumed["step"] > 0
            assert outcome.summary["train"]["replicas_in_sync"] is True
            assert outcome.summary["train"]["epochs_run"] == 8


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_to_the_daemon_checkpoints_the_ray_run_and_the_next_start_resumes_it(
        home_root: Path, tiny_model: Path, cluster, seaweedfs_server) -> None:  # noqa: F811
    artifacts = seaweedfs_server.url()
    configure(home_root, tiny_model, cluster.address, artifacts, epochs=40)
    write_config(home_root, schedule={"min_new_rows": 1})  # the first model trains without being asked
    drop(home_root, "a.jsonl", toy(["sport", "food"], 80, seed=1))
    progress = home_root / "state" / "progress.json"

    def events() -> dict:
        try:
            return json.loads(progress.read_text()).get("events") or {}
        except (OSError, ValueError):
            return {}

    store = RunStore(run_url(artifacts, 1))
    first = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: "epoch" in events(), timeout=300)  # training on the cluster, an epoch checkpointed
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=200) == 0  # within the daemon's own wait: the run answered the stop
    finally:
        if first.poll() is None:
            first.kill()
        _, err = first.communicate()
    assert "update interrupted by shutdown" in err, err[-2000:]
    assert store.get_json("checkpoint.json") is not None  # the run's checkpoint stays in the store
    doc = status(home_root)
    assert doc["champion"] is None and doc["last_update"] is None and doc["failed_for_good"] == []

    progress.unlink()
    second = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") is not None, timeout=600)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=200) == 0
    resumed = events().get("resumed")
    assert resumed is not None and resumed["step"] > 0, events()  # from the checkpoint, not from scratch
    last = status(home_root)["last_update"]
    assert last["decision"] in ("promoted", "rejected") and last["version"] == "v0001", last
    assert store.keys() == []  # the finished run's folder is removed
