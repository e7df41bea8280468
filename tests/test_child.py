"""The learning child process: spec in, JSON lines out, checkpoints, resume, failures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.config import parse
from daemon.update.launcher import ChildRun, Standby, TrainingFailed, TrainingInterrupted, train_spec, write_rows
from strategies.spec import DataPaths, Failure, TrainSpec
from tests.test_learning import toy


def make_spec(tmp_path: Path, model: Path, *, strategy: str = "replay", epochs: int = 2, lr: float | str = 1e-3,
              parent: str | None = None, rows: int = 60, champion: Path | None = None) -> Path:
    """A spec built as the daemon builds one (`train_spec` from a config), on toy rows, for the CPU."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    train_rows = write_rows(data / "train.arrow", toy(["sport", "food"], rows, seed=1))
    eval_rows = write_rows(data / "eval-1.arrow", toy(["sport", "food"], 10, seed=2))
    # class_weights "none" and exactly `epochs` epochs (min_steps 0): the settings these tests were measured with
    config = parse({"model": {"base": str(model), "max_length": 64}, "train": {"device": "cpu", "seed": 0},
                    "strategy": {"name": strategy, "epochs": epochs, "min_steps": 0, "batch_size": 8, "early_stopping_patience": 0,
                                 "class_weights": "none", "replay": {"buffer_rows": 50}, "lora": {"r": 4}}})
    paths = DataPaths(train=str(data / "train.arrow"), train_rows=train_rows, eval={"1": str(data / "eval-1.arrow")},
                      eval_rows={"1": eval_rows}, set_aside=None, set_aside_rows=0, set_aside_batches=[])
    spec = train_spec(config, tmp_path, batch=1, labels=["sport", "food"], data=paths, parent=parent,
                      parent_model=champion, old_label_count=2)
    # every strategy at `lr`, beyond what the config accepts too (a diverging run)
    return replace(spec, loop=replace(spec.loop, lr=lr)).write(tmp_path / "spec.json")


def edit(path: Path, **changes: object) -> Path:
    """The spec at `path` with some fields changed (checked again, as the child will)."""
    return replace(TrainSpec.load(path), **changes).write(path)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["replay", "lora+replay"])
def test_child_trains_evaluates_side_by_side_and_reports_progress(tmp_path: Path, tiny_model: Path, strategy: str) -> None:
    events: list[dict] = []
    spec = make_spec(tmp_path, tiny_model, strategy=strategy, champion=tiny_model, parent="v0001")
    results = ChildRun(spec, events.append).start().wait()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "step" in kinds and "evaluating" in kinds
    step = next(e for e in events if e["event"] == "step")
    assert {"step", "loss", "samples_per_second"} <= set(step)
    assert set(results["scores"]) == {"candidate", "champion"}
    assert 0.0 <= results["scores"]["candidate"]["1"]["accuracy"] <= 1.0
    assert results["train"]["train_samples"] > 0
    out = tmp_path / "out"
    if strategy.startswith("lora"):
        assert (out / "adapter" / "adapter_model.safetensors").is_file() and (tmp_path / "serving" / "config.json").is_file()
    else:
        assert (out / "model" / "model.safetensors").is_file()
    assert (out / "state" / "replay.arrow").is_file()


def interrupt_after_first_step(spec: Path, timeout: float = 60, standby: Standby | None = None) -> int:
    """Start the child, SIGTERM it once it has taken a step; the step it stopped at (checkpointed)."""
    events: list[dict] = []
    run = ChildRun(spec, events.append).start(standby)
    deadline = time.monotonic() + timeout
    while not any(e["event"] == "step" for e in events) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.terminate()
    with pytest.raises(TrainingInterrupted):
        run.wait()
    assert (Path(TrainSpec.load(spec).checkpoint or "") / "progress.json").is_file()
    return max(e["step"] for e in events if e["event"] == "step")


@pytest.mark.slow  # ~20-30 s on 2 cores: in `make test-slow` (make test's 15-minute budget)
def test_sigterm_checkpoints_and_the_next_run_resumes(tmp_path: Path, tiny_model: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, strategy="finetune", epochs=8, rows=150)
    stopped_at = interrupt_after_first_step(spec)
    deadline = time.monotonic() + 60
    # resume; SIGKILL it at an epoch boundary this time, then resume again to the end
    events2: list[dict] = []
    run2 = ChildRun(spec, events2.append).start()
    while sum(e["event"] == "validation" for e in events2) < 2 and time.monotonic() < deadline + 120:
        time.sleep(0.02)  # after the second validation, the first epoch-end checkpoint is on disk
    resumed = next(e for e in events2 if e["event"] == "resumed")
    assert resumed["step"] == stopped_at
    run2.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    with pytest.raises(TrainingFailed, match="killed"):
        run2.wait()
    events3: list[dict] = []
    results = ChildRun(spec, events3.append).start().wait()
    resumed3 = next(e for e in events3 if e["event"] == "resumed")
    assert resumed3["step"] > stopped_at  # picked up after the last epoch checkpoint, not from zero
    assert results["train"]["epochs_run"] == 8


def test_a_diverging_run_fails_cleanly(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(TrainingFailed) as info:
        ChildRun(make_spec(tmp_path, tiny_model, strategy="finetune", lr=1e30, epochs=3, rows=40)).start().wait()
    assert info.value.kind in ("non_finite_loss",)


def test_an_exception_fails_with_its_message(tmp_path: Path, tiny_model: Path) -> None:
    spec = edit(make_spec(tmp_path, tiny_model), base=str(tmp_path / "no-such-model"))
    with pytest.raises(TrainingFailed, match="no-such-model"):
        ChildRun(spec).start().wait()


def test_lr_auto_tries_a_grid_and_keeps_the_best(tmp_path: Path, tiny_model: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, strategy="finetune", epochs=1, rows=60, lr="auto")
    events: list[dict] = []
    results = ChildRun(spec, events.append).start().wait()
    tried = [e for e in events if e["event"] == "lr_search"]
    chosen = next(e for e in events if e["event"] == "lr_chosen")["lr"]
    assert [e["lr"] for e in tried] == [1e-4, 3e-4, 1e-3, 3e-3]
    assert chosen == min(tried, key=lambda e: e["validation_loss"])["lr"]
    assert results["train"]["lr"] == chosen


@pytest.mark.slow  # ~20-30 s on 2 cores: in `make test-slow` (make test's 15-minute budget)
def test_kept_predictions_stand_in_for_the_champion_exactly(tmp_path: Path, tiny_model: Path) -> None:
    """A version keeps its predictions; as champion they replace scoring it again, with the same figures."""
    for folder in "abc":
        (tmp_path / folder).mkdir()
    first = TrainSpec.load(make_spec(tmp_path / "a", tiny_model, rows=80))
    assert ChildRun(Path(tmp_path / "a" / "spec.json")).start().wait()["eval_reused"] == []
    kept = tmp_path / "a" / "out" / "predictions.json"
    assert set(json.loads(kept.read_text())) == {"1"}

    def second(folder: str, predictions: Path | None) -> dict:
        path = make_spec(tmp_path / folder, tiny_model, rows=80, champion=tmp_path / "a" / "out" / "model", parent="v0001")
        spec = TrainSpec.load(path)
        evals = {"1": first.data.eval["1"], "2": str(tmp_path / folder / "data" / "eval-2.arrow")}
        write_rows(Path(evals["2"]), toy(["music", "tech"], 10, seed=3))
        write_rows(Path(spec.data.train), toy(["music", "tech"], 80, seed=4) + toy(["sport", "food"], 40, seed=5))
        edit(path, labels=["sport", "food", "music", "tech"], old_label_count=2,
             champion_predictions=str(predictions) if predictions else None,
             data=replace(spec.data, eval=evals, eval_rows={"1": first.data.eval_rows["1"], "2": 20}, train_rows=240))
        return ChildRun(path).start().wait()

    reused, fresh = second("b", kept), second("c", None)
    assert reused["eval_reused"] == ["1"] and fresh["eval_reused"] == []
    assert reused["scores"]["champion"] == fresh["scores"]["champion"]
    assert reused["paired"] == fresh["paired"] and set(reused["paired"]) == {"1", "2"}
    # the champion scored as it serves: its own two labels, never the new ones
    assert reused["scores"]["champion"]["2"]["accuracy"] == 0.0


def test_kept_predictions_cover_only_the_same_rows_of_the_same_task() -> None:
    from strategies.evaluate import _covers, _digest

    rows = [{"text": "a", "label": "food"}, {"text": "b", "label": "sport"}]
    digest = _digest("sequence_classification", rows, 64)
    kept = [{"label": "food", "score": 0.9}, {"label": "sport", "score": 0.8}]
    assert _covers({"digest": digest, "predictions": kept}, digest, 2)
    assert not _covers({"digest": _digest("sequence_classification", rows, 32), "predictions": kept}, digest, 2)
    assert not _covers({"digest": _digest("token_classification", rows, 64), "predictions": kept}, digest, 2)
    assert not _covers({"digest": _digest("sequence_classification", rows[:1], 64), "predictions": kept}, digest, 2)
    assert not _covers({"digest": digest, "predictions": kept[:1]}, digest, 2)
    assert not _covers({"digest": digest, "labels": ["food", "sport"]}, digest, 2)  # the format before tasks
    assert not _covers(None, digest, 2)


@pytest.mark.parametrize(("change", "key", "says"), [
    (lambda doc: doc["loop"].pop("precision"), "loop.precision", "missing"),
    (lambda doc: doc["data"].update(extra="x"), "data.extra", "unknown key"),
    (lambda doc: doc["loop"].update(epochs="2"), "loop.epochs", "expected integer"),
    (lambda doc: doc["loop"].update(precision="fp16"), "loop.precision", "expected"),
])
def test_the_child_refuses_an_invalid_spec_naming_the_key(tmp_path: Path, tiny_model: Path, change, key: str,  # type: ignore[no-untyped-def]
                                                          says: str) -> None:
    path = make_spec(tmp_path, tiny_model)
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, "-m", "strategies.child", str(path)], capture_output=True, text=True, timeout=120)
    failed = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 1 and failed["event"] == "failed" and failed["kind"] == Failure.INVALID_SPEC
    assert failed["error"].startswith(f"SpecError: invalid train spec: {key}: {says}"), failed
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_small_batch_is_judged_learned_on_its_held_out_rows(tmp_path: Path, tiny_model: Path) -> None:
    """Past `epochs`, the check that the batch was learned scores the batch's held-out rows (the
    model never trains on them), not the rows it trained on: the floor is theirs."""
    spec = make_spec(tmp_path, tiny_model, strategy="finetune", rows=20)
    # held-out rows three to one (floor 0.75) where the training rows are one to one (floor 0.5)
    write_rows(tmp_path / "data" / "eval-1.arrow", toy(["sport"], 15, seed=3) + toy(["food"], 5, seed=4))
    loaded = TrainSpec.load(spec)
    edit(spec, loop=replace(loaded.loop, min_steps=30, lift_target=0.0),
         data=replace(loaded.data, eval_rows={"1": 20}))
    results = ChildRun(spec, lambda event: None).start().wait()
    assert results["train"]["learned"]["floor"] == 0.75, results["train"]
