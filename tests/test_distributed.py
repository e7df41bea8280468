"""`train.num_processes > 1`: data-parallel training through torchrun, here 2 gloo processes on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from daemon.update.launcher import ChildRun
from strategies.distributed import Group
from tests.test_child import interrupt_after_first_step, make_spec


def test_every_rank_gets_the_same_number_of_steps() -> None:
    batches = [[i] for i in range(5)]
    assert Group(rank=0, world=2).steps(batches) == [[[0], [1]], [[2], [3]], [[4], [0]]]  # the last step is filled
    assert Group().steps(batches) == [[b] for b in batches]
    assert Group(rank=1, world=3).steps([]) == []


def two_process_spec(tmp_path: Path, model: Path, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    spec = make_spec(tmp_path, model, **kwargs)
    doc = json.loads(spec.read_text())
    doc["num_processes"] = 2
    spec.write_text(json.dumps(doc))
    return spec


@pytest.mark.parametrize("strategy", ["replay", "ewc+lora"])
def test_two_gloo_processes_train_in_step_and_learn(tmp_path: Path, tiny_model: Path, strategy: str) -> None:
    rows, epochs = 60, 3
    spec = two_process_spec(tmp_path, tiny_model, strategy=strategy, epochs=epochs, rows=rows, lr=3e-3,
                            champion=tiny_model, parent="v0001")
    events: list[dict] = []
    results = ChildRun(spec, events.append).start().wait()
    assert next(e for e in events if e["event"] == "start")["processes"] == 2
    train = results["train"]
    assert train["processes"] == 2 and train["replicas_in_sync"] is True
    # replay adds nothing on a first update; 10% of the rows are held for validation
    train_rows = 2 * rows - int(2 * rows * 0.1)
    assert train["steps"] == epochs * math.ceil(math.ceil(train_rows / 8) / 2)  # each step takes 2 batches
    assert train["train_samples"] >= epochs * train_rows
    assert results["scores"]["candidate"]["1"]["rows"] == 20
    if strategy == "replay":  # full fine-tuning learns the toy task in a few epochs
        assert results["scores"]["candidate"]["1"]["accuracy"] >= 0.8
    assert (tmp_path / "out" / "state").is_dir()
    # progress lines come from rank 0 alone
    assert len([e for e in events if e["event"] == "step"]) == train["steps"]


@pytest.mark.slow  # two torchrun runs, ~30 s (make test-slow)
def test_sigterm_stops_both_ranks_and_the_next_run_resumes(tmp_path: Path, tiny_model: Path) -> None:
    spec = two_process_spec(tmp_path, tiny_model, strategy="finetune", epochs=40, rows=80)
    stopped_at = interrupt_after_first_step(spec, timeout=120)
    events2: list[dict] = []
    results = ChildRun(spec, events2.append).start().wait()
    assert next(e for e in events2 if e["event"] == "resumed")["step"] == stopped_at
    assert results["train"]["epochs_run"] == 40 and results["train"]["replicas_in_sync"] is True
