"""What a person reads: `status` during an update, `versions` marking the champion and rolled back
versions, `show`'s accuracy matrix, on homes built by real update cycles on the tiny model."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from daemon import home as home_mod
from daemon.cli.status import render as render_status
from daemon.cli.versions import render_detail
from registry.registry import Registry
from tests.conftest import cli, jsonl, spawn, stage_full, write_config
from tests.test_cycle import configure
from tests.test_learning import toy
from tests.test_service import status, wait_for


def record(registry: Registry, model: Path, version: int, decision: str, per: dict[str, float],
           before: dict[str, float] | None, reasons: list[str], history: list[dict[str, float]]) -> None:
    """A version as an update cycle records it (UpdateCycle.register and .judge): lineage, training
    figures, and the metrics of its decision."""
    registry.create_version(stage_full(registry, model, str(version)), parent=f"v{version - 1:04d}" if version > 1 else None,
                            strategy="replay", info={"data": {"experience": version, "train_rows": 240, "eval_rows": 60,
                                                              "files": [f"{version}.jsonl"]},
                                                     "train": {"train_samples": 480 * version, "seconds": 20.0 + version}})
    batches = sorted(per, key=int)
    registry.record_decision(
        f"v{version:04d}", decision, gate={"passed": decision == "promoted", "reasons": reasons},
        metrics={"metric": "accuracy", "rows": dict.fromkeys(batches, 60),
                 "candidate": {"new": per[str(version)], "old": min(per.values()), "per_experience": per,
                               "per_label": {b: {"positive": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 30},
                                                 "negative": {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 30}}
                                             for b in batches}},
                 "champion": {"new": None, "old": None, "per_experience": before} if before else None,
                 "accuracy_matrix": {"versions": [f"v{v:04d}" for v in range(1, version)] + ["candidate"], "batches": batches,
                                     "values": [[row.get(b) for b in batches] for row in [*history, per]]}})
    history.append(per)
    if decision == "promoted":
        registry.promote(f"v{version:04d}", actor="daemon", reason="; ".join(reasons))


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """v0001 and v0002 promoted, v0003 (flipped labels) rejected, then v0002 rolled back to v0001."""
    root = tmp_path_factory.mktemp("story") / "home"
    home_mod.init(root)
    history: list[dict[str, float]] = []
    with Registry(root / "registry") as registry:
        record(registry, tiny_model, 1, "promoted", {"1": 0.9}, None, ["first model: accuracy on batch 1 0.900"], history)
        record(registry, tiny_model, 2, "promoted", {"1": 0.883, "2": 0.85}, {"1": 0.9, "2": 0.0}, ["gain on batch 2"], history)
        record(registry, tiny_model, 3, "rejected", {"1": 0.3, "2": 0.8, "3": 0.95}, {"1": 0.883, "2": 0.85, "3": 0.5},
               ["forgetting on batch 1: 0.583 > 0.02"], history)
    assert cli("rollback", "--reason", "demo", "--home", str(root)).exit_code == 0
    return root


def test_versions_marks_the_champion_and_the_rolled_back(story: Path) -> None:
    lines = cli("versions", "--home", str(story)).stdout.splitlines()
    assert lines[1].startswith("* v0001") and lines[1].endswith("<- champion")
    assert lines[2].startswith("x v0002") and "rolled_back" in lines[2] and "<- rolled back" in lines[2]
    assert lines[3].startswith("  v0003") and "rejected" in lines[3]
    assert lines[-1] == "* champion: v0001; x rolled back: v0002"
    assert "\x1b[" not in "\n".join(lines)  # not a terminal: no colour


def test_show_prints_the_accuracy_matrix_against_the_champion(story: Path) -> None:
    doc = json.loads(cli("show", "v0003", "--home", str(story), "--json").stdout)
    plain = cli("show", "v0003", "--home", str(story)).stdout
    assert "accuracy matrix (accuracy on each batch's held-out rows" in plain and "\x1b[" not in plain
    rows = {line.split()[0]: line.split()[1:] for line in plain.split("accuracy matrix")[1].splitlines()[2:]
            if line.startswith("          ") and line.split()[0].startswith(("v0", "champion"))}
    assert set(rows) == {"v0001", "v0002", "v0003", "champion"}
    champion = doc["metrics"]["champion"]["per_experience"]
    mine = doc["metrics"]["candidate"]["per_experience"]
    first = rows["v0003"][:2]  # batch 1: the flipped labels' candidate against the champion
    assert first == [f"{mine['1']:.3f}", f"({mine['1'] - champion['1']:+.3f})"]
    assert mine["1"] < champion["1"]
    coloured = render_detail(doc, colour=True)
    assert "\x1b[31m" in coloured and "\x1b[32m" in coloured  # its forgetting on batch 1 in red, its gain in green


def test_status_names_versions_and_the_rejection(story: Path) -> None:
    text = cli("status", "--home", str(story)).stdout
    assert "versions     3 (1 promoted, 1 rejected, 1 rolled back)" in text
    assert "last update  none yet" in text  # the registry was written directly: no update in the row store
    doc = status(story)
    doc["last_update"] = {"version": "v0003", "decision": "rejected", "finished_at": "2026-01-01T00:00:00Z",
                          "reasons": ["forgetting on batch 1: 0.583 > 0.02"]}
    assert ("last update  v0003 rejected at 2026-01-01T00:00:00Z: forgetting on batch 1: 0.583 > 0.02"
            in render_status(doc))
    # the check that failed, not the first reason (which may be one that passed, or a note)
    doc["last_update"]["reasons"] = ["batch 2: 54 held-out rows < min_eval_rows 100; gain not gated",
                                     "forgetting on batch 1: 0.583 > 0.02"]
    doc["last_update"]["failures"] = ["forgetting on batch 1: 0.583 > 0.02"]
    assert ("last update  v0003 rejected at 2026-01-01T00:00:00Z: forgetting on batch 1: 0.583 > 0.02"
            in render_status(doc))
    doc["versions"]["pruned"] = 2
    assert "versions     3 (1 promoted, 1 rejected, 1 rolled back); weights of 2 pruned by retention" in render_status(doc)


@pytest.mark.slow  # a daemon trained and stopped mid-update, ~25 s (make test-slow)
def test_status_shows_an_update_in_progress(home_root: Path, tiny_model: Path) -> None:
    configure(home_root, tiny_model)
    write_config(home_root, model={"base": str(tiny_model), "max_length": 32}, inbox={"settle_seconds": 0},
                 metrics={"bind": "127.0.0.1:0"}, strategy={"epochs": 400, "early_stopping_patience": 0},
                 train={"standby_seconds": 0})
    (home_root / "inbox" / "b1.jsonl").write_text(jsonl([{"text": t, "label": l}
                                                          for t, l in toy(["sport", "food"], 60, seed=1)]))
    proc = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: ((status(home_root)["update_in_progress"] or {}).get("step") or 0) >= 2, timeout=120)
        doc = status(home_root)["update_in_progress"]
        assert doc["batch"] == 1 and doc["stage"] == "training" and doc["steps"] >= doc["step"]
        assert doc["samples_per_second"] > 0 and doc["elapsed_seconds"] > 0
        text = cli("status", "--home", str(home_root)).stdout
        line = next(line for line in text.splitlines() if line.startswith("updating"))
        assert line.startswith("updating     batch 1: training, step ") and " of " in line
        assert "samples/s" in line and "elapsed" in line and "last update  none yet" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)

