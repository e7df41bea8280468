"""The update cycle in process, with a tiny model: promote, reject on forgetting, hold when pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.ingest.inbox import Inbox
from daemon.ingest.store import Store
from daemon.update.cycle import UpdateCycle
from daemon.update.gate import GateResult
from registry.registry import Registry
from strategies.spec import TrainSpec
from tests.conftest import jsonl, open_home, write_config
from tests.test_learning import toy


def drop(root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    (root / "inbox" / name).write_text(jsonl([{"text": t, "label": l} for t, l in rows]))
    Inbox(open_home(root)).drain(max_wait=5)


def configure(root: Path, model: Path, strategy: str = "replay") -> None:
    # class_weights pinned to "none" with train.seed 0 and 8 epochs: a known-good run of a chaotic toy.
    # A random-init 32-wide model's second update keeps or forgets batch 1 by seed, not by class
    # weights (measured: old-batch accuracy after update 2 was 0.431 for none/seed 1 and 1.0 for
    # none/seed 2, 1.0 for balanced/seeds 1 and 2, 0.431 for balanced/seed 0); at 4 epochs it learned
    # batch 2 to 0.456 only, below its majority-class floor, and at 8 to 0.97
    write_config(root, model={"base": str(model), "max_length": 32}, inbox={"settle_seconds": 0, "eval_fraction": 0.25},
                 strategy={"name": strategy, "class_weights": "none", "epochs": 8, "lr": 2e-3, "batch_size": 16, "early_stopping_patience": 0,
                           "replay": {"ratio": 1.0, "buffer_rows": 400}},
                 gate={"min_eval_rows": 10, "max_forgetting": 0.1})


def cycle(root: Path) -> dict:
    home = open_home(root)
    with Registry(home.registry) as registry:
        return UpdateCycle(home, registry).run().as_dict()


@pytest.mark.slow  # ~90 s: four cycles in one test (make test-slow)
def test_cycles_promote_then_reject_flipped_labels_then_hold_when_pinned(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    assert cycle(home_root)["decision"] is None  # nothing pending
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
    first = cycle(home_root)
    assert (first["decision"], first["version"]) == ("promoted", "v0001"), first
    assert first["reasons"][0].startswith("first model: accuracy on batch 1")
    assert set(first["metrics"]["candidate"]["per_label"]["1"]) == {"sport", "food"}  # from the kept predictions
    drop(home_root, "b2.jsonl", toy(["music", "tech"], 120, seed=2))
    second = cycle(home_root)
    assert second["decision"] == "promoted", second
    assert second["metrics"]["candidate"]["old"] > 0.8  # replay kept batch 1
    assert second["eval_reused"] == ["1"]  # the champion's predictions on batch 1 were kept from its own update
    flipped = [(t, {"sport": "food", "food": "sport"}[l]) for t, l in toy(["sport", "food"], 120, seed=3)]
    drop(home_root, "b3.jsonl", flipped)
    third = cycle(home_root)
    assert third["decision"] == "rejected", third
    assert any(r.startswith("forgetting on batch 1:") and " > 0.1" in r for r in third["reasons"])
    with Registry(home_root / "registry") as registry:
        assert registry.champion() == "v0002"
        registry.pin(actor="cli")
        detail = registry.decision_record("v0003")
        assert detail and detail.gate["passed"] is False
    drop(home_root, "b4.jsonl", toy(["sport", "food"], 60, seed=4) + toy(["music", "tech"], 60, seed=5))
    fourth = cycle(home_root)
    matrix = fourth["metrics"]["accuracy_matrix"]
    assert matrix["versions"][:3] == ["v0001", "v0002", "v0003"] and matrix["batches"] == ["1", "2", "3", "4"]
    home = open_home(home_root)
    with Registry(home.registry) as registry:
        assert registry.champion() == "v0002"  # pinned: whatever the gate said, nothing moved
        # a candidate that passes the gate while pinned is held, not promoted
        assert UpdateCycle(home, registry).conclude("v0004", GateResult(True, ["ok"]), {}) == "held"
        assert registry.champion() == "v0002" and registry.decision("v0004") == "held"


def test_spec_trains_lora_at_its_own_rate_and_every_weight_at_strategy_lr(home_root: Path, tiny_model: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 0})
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 40, seed=1))
    # the same undecided batch is specified again under each config
    for name, lr, lora_lr, expected in [("lora+replay", 5e-4, 3e-3, 3e-3), ("lora", "auto", 3e-3, "auto"),
                                        ("ewc+replay", 5e-4, 3e-3, 5e-4)]:
        write_config(home_root, model={"base": str(tiny_model)}, strategy={"name": name, "lr": lr, "lora": {"lr": lora_lr}})
        home = open_home(home_root)
        with Registry(home.registry) as registry, Store(home.store_path) as store:
            cycle = UpdateCycle(home, registry)
            spec = cycle.build_spec(store, cycle.close_batch(store))
        assert spec.loop.lr == expected, name
        assert TrainSpec.load(cycle.spec_path(spec.batch)) == spec  # what the child reads


def test_with_no_champion_a_first_model_learns_from_every_batch_so_far(home_root: Path, tiny_model: Path) -> None:
    write_config(home_root, model={"base": str(tiny_model)}, inbox={"settle_seconds": 0, "eval_fraction": 0.25})
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 40, seed=1))
    home = open_home(home_root)
    with Registry(home.registry) as registry, Store(home.store_path) as store:
        cycle = UpdateCycle(home, registry)
        first = cycle.build_spec(store, cycle.close_batch(store))
        # its candidate lost to the majority class: rejected, no champion
        store.record_update(batch_id=1, started_at="t", finished_at="t", version=None, decision="rejected",
                            reasons=["first model: ..."], summary={})
    drop(home_root, "b2.jsonl", toy(["sport", "food"], 40, seed=2))
    with Registry(home.registry) as registry, Store(home.store_path) as store:
        cycle = UpdateCycle(home, registry)
        batch = cycle.close_batch(store)
        second = cycle.build_spec(store, batch)
        own = sum(1 for _ in store.iter_rows(batch, "train"))
    assert batch == 2 and first.data.train_rows > 0
    assert second.data.train_rows == first.data.train_rows + own


def test_update_now_without_a_daemon_ingests_the_inbox_first(home_root: Path, tiny_model: Path) -> None:
    """A user who dropped a file and asked for an update expects that file to count."""
    from tests.conftest import cli

    configure(home_root, tiny_model)
    (home_root / "inbox" / "b1.jsonl").write_text(jsonl([{"text": t, "label": l} for t, l in toy(["sport", "food"], 60, seed=1)]))
    result = cli("update", "--now", "--json", "--home", str(home_root))
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    (ingested,) = outcome["ingested"]
    assert ingested["file"] == "b1.jsonl" and ingested["outcome"] == "accepted"
    assert ingested["rows"]["train"] + ingested["rows"]["eval"] == 120
    assert (outcome["batch"], outcome["version"]) == (1, "v0001"), outcome  # trained on that file's rows
    assert (home_root / "archive" / "b1.jsonl").exists() and not (home_root / "inbox" / "b1.jsonl").exists()
    # said in words too, on the next file
    (home_root / "inbox" / "b2.jsonl").write_text(jsonl([{"text": t, "label": l} for t, l in toy(["sport", "food"], 5, seed=2)]))
    text = cli("update", "--home", str(home_root)).stdout
    assert text.splitlines()[0].startswith("ingested b2.jsonl (accepted): ")
    assert "not enough new rows: 10 < schedule.min_new_rows" in text


def test_a_candidate_that_did_not_learn_a_small_new_label_batch_is_never_promoted(home_root: Path, tiny_model: Path) -> None:
    """A small batch of three new labels, held-out set under min_eval_rows: the champion scores 0 on
    new labels, so any candidate "gains"; one that learned nothing must still not be promoted."""
    configure(home_root, tiny_model)
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
    assert cycle(home_root)["decision"] == "promoted"
    # a rate too small to move anything: the candidate answers with the old labels only
    write_config(home_root, strategy={"lr": 1e-9, "min_steps": 0, "epochs": 1},
                 gate={"min_eval_rows": 100, "max_forgetting": 0.1})
    drop(home_root, "b2.jsonl", toy(["music", "tech"], 14, seed=2) + toy(["sport"], 6, seed=3))
    second = cycle(home_root)
    assert second["metrics"]["candidate"]["new"] < second["metrics"]["baseline"], second
    assert second["decision"] == "rejected", second
    assert any(r.startswith("floor on batch 2:") for r in second["reasons"]), second["reasons"]


def test_a_poisoned_small_batch_is_rejected_though_its_forgetting_is_within_the_sign_tests_noise(
        home_root: Path, tiny_model: Path) -> None:
    """Labels flipped, every set under min_eval_rows: the candidate loses 4 of 31 pooled earlier rows
    and gains none (p = 0.062, "noise" to a sign test) and scores 0.05 on its own batch (whose gain
    is not gated): both were promoted before the batch's floor and the pool's ceiling."""
    configure(home_root, tiny_model)
    write_config(home_root, gate={"min_eval_rows": 100, "max_forgetting": 0.02})
    drop(home_root, "b1.jsonl", toy(["sport", "food"], 60, seed=1))
    assert cycle(home_root)["decision"] == "promoted"
    write_config(home_root, strategy={"lr": 8e-4, "min_steps": 0, "epochs": 1, "replay": {"ratio": 0.0, "buffer_rows": 400}})
    drop(home_root, "b2.jsonl", [(t, {"sport": "food", "food": "sport"}[l]) for t, l in toy(["sport", "food"], 30, seed=3)])
    second = cycle(home_root)
    assert second["decision"] == "rejected", second
    reasons = "\n".join(second["reasons"])
    assert "floor on batch 2: accuracy 0.050 < 0.650" in reasons, reasons
    assert "(31 rows; 4 lost, 0 gained)" in reasons and "whatever the sign test (p=0.062)" in reasons, reasons
