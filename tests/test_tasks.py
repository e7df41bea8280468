"""The task interface: names agree everywhere they are listed, hooks are checked when a task is
defined, and sequence classification behind it encodes, scores and grows as it should."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import strategies.tasks
from daemon.config import parse
from registry.errors import ConfigError
from strategies import tasks
from strategies.tasks.abc import HOOKS, REGISTRY, Task


def test_every_task_is_described_implemented_and_shown() -> None:
    from daemon.update import inference

    for module in pkgutil.iter_modules(strategies.tasks.__path__):
        importlib.import_module(f"strategies.tasks.{module.name}")
    assert set(REGISTRY) == set(tasks.TASKS), "strategies/tasks TASKS and the task modules"
    for name, cls in REGISTRY.items():
        assert cls.__module__ == f"strategies.tasks.{name}", f"{name} must live in strategies/tasks/{name}.py"
        assert tasks.TASKS[name].name == name
        assert set(tasks.TASKS[name].metrics.values()) <= {"higher", "lower"}
    assert set(inference.TASKS) == set(tasks.TASKS), "daemon/update/inference.py TASKS (the parent's side)"


def test_a_misspelt_missing_or_undescribed_hook_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="predicts"):
        class Typo(Task):  # noqa: F841
            def predicts(self):  # type: ignore[no-untyped-def]
                pass
    with pytest.raises(TypeError, match="does not define .*encode"):
        class Partial(Task):  # noqa: F841
            name = "sequence_classification"

            def load(self, source, labels):  # type: ignore[no-untyped-def]
                pass
    with pytest.raises(TypeError, match="not described"):
        class Stranger(Task):  # noqa: F841
            name = "summarisation"
    assert REGISTRY["sequence_classification"].__name__ == "SequenceClassification"  # untouched by the above
    assert "load" in HOOKS and "score" in HOOKS


def test_the_config_names_a_task_and_one_of_its_metrics() -> None:
    assert parse({}).model.task == "sequence_classification"
    with pytest.raises(ConfigError) as info:
        parse({"model": {"task": "summarisation"}})
    assert info.value.key == "model.task"
    with pytest.raises(ConfigError) as info:
        parse({"gate": {"metric": "entity_f1"}})
    assert info.value.key == "gate.metric" and "accuracy, macro_f1" in str(info.value)
    with pytest.raises(tasks.UnknownTask):
        tasks.load("summarisation")


def test_sequence_classification_encodes_batches_and_computes_its_loss(tiny_model: Path) -> None:
    task = tasks.load("sequence_classification")
    labels = ["neg", "pos", "neu"]
    model, tokenizer = task.load(str(tiny_model), labels)
    rows = [{"text": "good film indeed", "label": "pos"}, {"text": "awful", "label": "neg"},
            {"text": "it was a film", "label": "neu"}]
    encoded = task.encode(rows, tokenizer, labels, 32)
    batch = encoded.collate([2, 0])
    assert batch["labels"].tolist() == [2, 1] and batch["index"].tolist() == [2, 0]
    assert batch["input_ids"].shape[1] == max(encoded.lengths[2], encoded.lengths[0])  # padded to the longest only
    model.eval()
    logits = task.forward(model, batch)
    assert torch.allclose(task.loss(logits, batch), F.cross_entropy(logits, batch["labels"]))
    assert task.outputs(logits, batch, 2).shape == (2, 2)  # distillation sees the labels the teacher had
    with pytest.raises(ValueError, match="'mixed'"):
        task.encode([{"text": "x", "label": "mixed"}], tokenizer, labels, 32)
    found = task.predict(model, tokenizer, rows, labels, torch.device("cpu"), 32)
    assert [set(p) for p in found] == [{"label", "score"}] * 3 and all(p["label"] in labels for p in found)


def test_sequence_classification_scores_by_hand() -> None:
    task = tasks.load("sequence_classification")
    rows = [{"text": str(i), "label": label} for i, label in enumerate(["a", "a", "b", "b", "c"])]
    predicted = [{"label": label, "score": 1.0} for label in ["a", "b", "b", "b", "a"]]
    figures = task.score(rows, predicted, ["a", "b"])  # "c" is a label this model does not know
    assert figures["rows"] == 5 and figures["accuracy"] == pytest.approx(3 / 5)
    # a: p 1/2 r 1/2 f1 1/2; b: p 2/3 r 1 f1 4/5; c: never predicted, f1 0
    assert figures["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert figures["unknown_labels"] == {"c": 1} and figures["per_label"]["c"]["support"] == 1
    assert [task.correct(r, p) for r, p in zip(rows, predicted)] == [True, False, True, True, False]


def test_each_task_names_the_targets_it_is_judged_on_beside_the_predictions() -> None:
    """`targets`: what the loop's check that a batch was learned compares (strategies/loop.py)."""
    from strategies.data import IGNORE

    sequence = tasks.load("sequence_classification")
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    predicted, wanted = sequence.targets(logits, {"labels": torch.tensor([0, 1, 1])})
    assert predicted.tolist() == [0, 2, 1] and wanted.tolist() == [0, 1, 1]
    # tags: every word's, O (0) included, padding and continuation pieces (IGNORE) left out
    tokens = tasks.load("token_classification")
    logits = F.one_hot(torch.tensor([[0, 1, 0, 0], [2, 0, 0, 0]]), 3).float()
    labels = torch.tensor([[0, 1, IGNORE, 2], [2, 0, IGNORE, IGNORE]])
    predicted, wanted = tokens.targets(logits, {"labels": labels})
    assert predicted.tolist() == [0, 1, 0, 2, 0] and wanted.tolist() == [0, 1, 2, 2, 0]
    # answer tokens only, each against the model's next-token prediction one position before it
    chat = tasks.load("causal_lm")
    logits = F.one_hot(torch.tensor([[5, 7, 9, 4]]), 10).float()
    labels = torch.tensor([[IGNORE, IGNORE, 9, 3]])
    predicted, wanted = chat.targets(logits, {"labels": labels})
    assert predicted.tolist() == [7, 9] and wanted.tolist() == [9, 3]
