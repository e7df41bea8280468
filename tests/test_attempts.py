"""schedule.max_attempts: a batch whose update keeps failing is given up for good, later batches go
on, `lifelong status` names it, and its train rows reach the replay pool of the next version.

Training fails for real: `train.device = "cuda:99"` is a device no machine here has, so the training
child fails when it moves the model there (the config accepts it; only the child can find out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from daemon.ingest.store import Store
from daemon.service.loop import BACKOFF_FIRST, Service
from daemon.update.cycle import UpdateCycle
from daemon.update.launcher import TrainingInterrupted
from registry.registry import Registry
from tests.conftest import cli, open_home, stage_full, write_config
from tests.test_cycle import configure, cycle, drop
from tests.test_learning import toy

BROKEN = {"device": "cuda:99"}


def buffer_rows(root: Path, version: str) -> set[tuple[str, str]]:
    with Registry(root / "registry") as registry:
        path = registry.artifacts.local_path(version) / "state" / "replay.arrow"
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return set(zip(table["text"].to_pylist(), table["label"].to_pylist()))


def test_a_batch_failing_max_attempts_times_is_given_up_and_the_next_batch_is_decided(
        home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    write_config(home_root, schedule={"max_attempts": 2}, train=BROKEN, strategy={"replay": {"buffer_rows": 1000}})
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 60, seed=1))
    first, second = cycle(home_root), cycle(home_root)
    assert (first["batch"], first["decision"], first["attempt"], first["gave_up"]) == (1, "failed", 1, False), first
    assert (second["batch"], second["decision"], second["attempt"], second["gave_up"]) == (1, "failed", 2, True)
    assert "cuda" in second["reasons"][0].lower()
    assert not (home_root / "state" / "work" / "batch-000001").exists()  # nothing left to resume

    # the cause is mended; a new batch arrives and is trained and decided, batch 1 is not retried
    write_config(home_root, train={"device": "cpu"})
    drop(home_root, "b2.jsonl", toy(["music", "tech"], 60, seed=2))
    third = cycle(home_root)
    assert (third["batch"], third["version"]) == (2, "v0001") and third["decision"] in ("promoted", "rejected"), third
    with Store(open_home(home_root).store_path) as store:
        set_aside = set(store.iter_rows(1, "train"))
        own = list(store.iter_rows(2, "train"))
        assert store.undecided_batch() is None and len(store.updates()) == 3  # batch 1's rows stay in the store
    # the new batch alone was trained on at full weight; batch 1's train rows joined the replay pool
    with Registry(home_root / "registry") as registry:
        assert registry.get("v0001").info["data"]["train_rows"] == len(own)
    assert set_aside and set_aside <= buffer_rows(home_root, "v0001")
    assert set(own) <= buffer_rows(home_root, "v0001")
    # batch 1's held-out rows are still scored, as an earlier batch
    assert set(third["metrics"]["candidate"]["per_experience"]) == {"1", "2"}

    doc = json.loads(cli("status", "--json", "--home", str(home_root)).stdout)
    assert [(f["batch"], f["attempts"]) for f in doc["failed_for_good"]] == [(1, 2)]
    assert "cuda" in doc["failed_for_good"][0]["last_error"].lower() and doc["failed_for_good"][0]["finished_at"]
    text = cli("status", "--home", str(home_root)).stdout
    line = next(line for line in text.splitlines() if line.startswith("failed "))
    assert line.startswith("failed       batch 1 gave up after 2 attempts: training failed") and len(line) < 140


@pytest.mark.slow  # ~20-30 s on 2 cores: in `make test-slow` (make test's 15-minute budget)
def test_an_update_interrupted_by_sigterm_is_not_an_attempt(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    write_config(home_root, schedule={"max_attempts": 2}, train=BROKEN)
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 60, seed=1))
    assert cycle(home_root)["attempt"] == 1

    write_config(home_root, train={"device": "cpu"}, strategy={"epochs": 40})  # long enough to be caught
    home = open_home(home_root)
    child: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and child.get("run"):
            child["run"].terminate()

    with Registry(home.registry) as registry, pytest.raises(TrainingInterrupted):
        UpdateCycle(home, registry, on_event=on_event, on_child=lambda run: child.update(run=run)).run()
    with Store(home.store_path) as store:
        assert store.undecided_batch() == 1 and store.failed_attempts(1) == 1
    assert (home_root / "state" / "work" / "batch-000001" / "checkpoint" / "progress.json").is_file()

    write_config(home_root, train=BROKEN)
    again = cycle(home_root)  # the second failure, not the third: the interrupted run did not count
    assert (again["batch"], again["attempt"], again["gave_up"]) == (1, 2, True), again
    with Store(home.store_path) as store:
        assert store.undecided_batch() is None and [g["batch"] for g in store.given_up()] == [1]


@pytest.mark.slow  # ~20-30 s on 2 cores: in `make test-slow` (make test's 15-minute budget)
def test_backoff_doubles_between_attempts_of_a_batch_and_ends_when_it_is_given_up(
        home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    write_config(home_root, schedule={"max_attempts": 2, "min_new_rows": 1}, train=BROKEN)
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 30, seed=1))
    now = 1000.0
    service = Service(open_home(home_root), clock=lambda: now)
    assert service._why_update() == "first model"
    service._update("first model", [])
    assert service.retry_at == now + BACKOFF_FIRST
    assert service._why_update() is None  # waiting out the backoff
    now += BACKOFF_FIRST
    assert service._why_update() == "resume"
    service._update("resume", [])
    assert service.retry_at == 0.0  # given up: nothing left to wait for
    assert service._why_update() is None  # nothing pending, nothing to resume
    drop(home_root, "b2.jsonl", toy(["music", "tech"], 30, seed=2))
    assert service._why_update() == "first model"  # the new batch goes on at once
    service._update("first model", [])
    with Store(service.home.store_path) as store:
        assert [u["batch"] for u in store.updates()] == [2, 1, 1]
    assert service.retry_at == now + BACKOFF_FIRST  # its first failure, not the third in a row


def test_spec_offers_batches_given_up_since_the_champion_to_the_replay_pool_only(
        home_root: Path, tiny_model: Path) -> None:
    write_config(home_root, model={"base": str(tiny_model)}, inbox={"settle_seconds": 0, "eval_fraction": 0.25})
    home = open_home(home_root)

    def give_up(store: Store, batch: int) -> None:
        for attempt in (1, 2, 3):
            store.record_update(batch_id=batch, started_at="t", finished_at="t", version=None, decision="failed",
                                reasons=["training failed (out_of_memory): boom"],
                                summary={"attempt": attempt, "gave_up": attempt == 3})

    def spec() -> tuple[int, dict[str, Any]]:
        with Registry(home.registry) as registry, Store(home.store_path) as store:
            cycle = UpdateCycle(home, registry)
            batch = cycle.close_batch(store)
            return batch, json.loads(cycle.build_spec(store, batch).to_json())

    def rows(path: str) -> list[tuple[str, str]]:
        with pa.memory_map(path) as source:
            table = pa.ipc.open_file(source).read_all()
        return list(zip(table["text"].to_pylist(), table["label"].to_pylist()))

    drop(home_root, "b1.jsonl", toy(["sport", "food"], 40, seed=1))
    with Store(home.store_path) as store:
        store.close_batch("t")
        give_up(store, 1)
        first = list(store.iter_rows(1, "train"))
    drop(home_root, "b2.jsonl", toy(["sport", "food"], 40, seed=2))
    batch, second = spec()
    with Store(home.store_path) as store:
        own = list(store.iter_rows(2, "train"))
    # no champion: a first model learns from every batch so far but the one given up, which is set aside
    assert batch == 2 and rows(second["data"]["train"]) == own
    assert second["data"]["set_aside_batches"] == [1] and rows(second["data"]["set_aside"]) == first
    assert set(second["data"]["eval"]) == {"1", "2"}

    # a champion trained on batch 2, then batch 3 given up: batch 4 offers 3, not 1 (v0001 holds it)
    with Registry(home.registry) as registry, Store(home.store_path) as store:
        version = registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay",
                                          info={"labels": ["sport", "food"], "data": {"experience": 2}}).version
        registry.promote(version, actor="cli", reason="test")
        store.record_update(batch_id=2, started_at="t", finished_at="t", version=version, decision="promoted",
                            reasons=[], summary={})
    drop(home_root, "b3.jsonl", toy(["sport", "food"], 40, seed=3))
    with Store(home.store_path) as store:
        store.close_batch("t")
        give_up(store, 3)
    drop(home_root, "b4.jsonl", toy(["sport", "food"], 40, seed=4))
    batch, fourth = spec()
    with Store(home.store_path) as store:
        assert rows(fourth["data"]["train"]) == list(store.iter_rows(4, "train"))
        assert rows(fourth["data"]["set_aside"]) == list(store.iter_rows(3, "train"))
    assert batch == 4 and fourth["data"]["set_aside_batches"] == [3]
