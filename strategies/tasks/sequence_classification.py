"""`sequence_classification`: a text -> one of the labels, from the softmax of a linear head.

Held-out figures: accuracy, macro-F1 over the labels present in truth or predictions, and per-label
precision, recall and F1. A label the model does not know can never be predicted: its rows count as
wrong and it is named in `unknown_labels`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from strategies import models
from strategies.data import Encoded, sequential_batches
from strategies.tasks.abc import Prediction, Row, Task


class SequenceClassification(Task):
    name = "sequence_classification"

    def load(self, source: str, labels: list[str]) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoModelForSequenceClassification

        return models.load_labelled(AutoModelForSequenceClassification, source, labels)

    def adapter_targets(self, model: torch.nn.Module) -> list[str]:
        return models.attention_projections(model)

    def adapter_saved_modules(self, model: torch.nn.Module) -> list[str]:
        """The head, and the pooler in front of it when there is one (sentence-embedding checkpoints
        such as all-MiniLM-L6-v2 ship none, so it starts random and must be trained like the head)."""
        heads = [name for name in ("classifier", "score") if hasattr(model, name)]
        if not heads:
            raise ValueError(f"{type(model).__name__}: no classification head to train alongside the adapter")
        poolers = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.endswith(".pooler")}
        return heads + sorted(poolers)

    def encode(self, rows: Sequence[Row], tokenizer: Any, labels: list[str], max_length: int,
               targets: bool = True) -> Encoded:
        index = {label: i for i, label in enumerate(labels)}
        if targets:
            unknown = sorted({row["label"] for row in rows} - set(index))
            if unknown:
                raise ValueError(f"rows labelled {', '.join(map(repr, unknown[:5]))}, not in labels")
        ids = tokenizer([row["text"] for row in rows], truncation=True, max_length=max_length)["input_ids"]
        return Encoded(ids, [index[row["label"]] if targets else 0 for row in rows], tokenizer.pad_token_id or 0)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"], weight=weights, reduction=reduction)

    def targets(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.argmax(-1), batch["labels"]

    def outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], known: int,
                replayed: torch.Tensor | None = None) -> torch.Tensor:
        return logits[:, :known]

    def class_weights(self, encoded: Encoded, count: int, device: torch.device) -> torch.Tensor | None:
        seen = Counter(encoded.targets)
        total = len(encoded.targets)
        weights = [total / (len(seen) * seen[i]) if seen.get(i) else 0.0 for i in range(count)]
        return torch.tensor(weights, dtype=torch.float, device=device)

    def balance_key(self, row: Row) -> str:
        return str(row["label"])

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], labels: list[str],
                device: torch.device, max_length: int, batch_size: int = 64) -> list[Prediction]:
        was_training = model.training
        model.eval()
        encoded = self.encode(rows, tokenizer, labels, max_length, targets=False)
        found: list[Prediction] = [{}] * len(rows)
        for indices in sequential_batches(encoded.lengths, batch_size):
            batch = {k: v.to(device) for k, v in encoded.collate(indices).items()}
            best = self.forward(model, batch).float().softmax(-1).cpu().max(-1)
            for row, i in enumerate(indices):
                found[i] = {"label": labels[int(best.indices[row])], "score": float(best.values[row])}
        model.train(was_training)
        return found

    def score(self, rows: Sequence[Row], predictions: Sequence[Prediction], labels: list[str]) -> dict[str, Any]:
        names = list(labels)
        unknown: dict[str, int] = {}
        for row in rows:
            if row["label"] not in labels:
                unknown[row["label"]] = unknown.get(row["label"], 0) + 1
                if row["label"] not in names:
                    names.append(row["label"])
        truth = [row["label"] for row in rows]
        return {**figures(truth, [p["label"] for p in predictions], names), "unknown_labels": unknown}

    def correct(self, row: Row, prediction: Prediction) -> bool:
        return bool(prediction["label"] == row["label"])


def figures(truth: Sequence[str], predicted: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    """rows, accuracy, macro_f1 (over labels present in truth or predictions) and per-label figures."""
    if not truth:
        return {"rows": 0, "accuracy": None, "macro_f1": None, "per_label": {}}
    per_label = {}
    f1s = []
    for name in names:
        tp = sum(1 for t, p in zip(truth, predicted) if t == p == name)
        fp = sum(1 for t, p in zip(truth, predicted) if p == name != t)
        fn = sum(1 for t, p in zip(truth, predicted) if t == name != p)
        support = tp + fn
        if support == 0 and fp == 0:
            continue
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        f1s.append(f1)
    accuracy = sum(int(t == p) for t, p in zip(truth, predicted)) / len(truth)
    return {"rows": len(truth), "accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "per_label": per_label}
