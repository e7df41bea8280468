"""Evaluation: predictions, accuracy, macro-F1 and per-label figures, and the accuracy matrix."""

from __future__ import annotations

from typing import Sequence

import torch

from strategies.data import Encoded, Example, sequential_batches


@torch.no_grad()
def predict(model: torch.nn.Module, tokenizer, texts: Sequence[str], device: torch.device, max_length: int = 128,  # type: ignore[no-untyped-def]
            batch_size: int = 64) -> tuple[list[int], list[float]]:
    """(label index, probability) per text, in the order given."""
    was_training = model.training
    model.eval()
    encoded = Encoded([Example(t, 0) for t in texts], tokenizer, max_length)
    labels = [0] * len(texts)
    scores = [0.0] * len(texts)
    lengths = [len(ids) for ids in encoded.ids]
    for indices in sequential_batches(lengths, batch_size):
        batch = encoded.collate(indices)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        probs = logits.float().softmax(-1).cpu()
        best = probs.max(-1)
        for row, i in enumerate(indices):
            labels[i] = int(best.indices[row])
            scores[i] = float(best.values[row])
    model.train(was_training)
    return labels, scores


def scores(truth: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> dict:
    """accuracy, macro_f1 (over labels present in truth or predictions) and per-label figures."""
    if not truth:
        return {"rows": 0, "accuracy": None, "macro_f1": None, "per_label": {}}
    per_label = {}
    f1s = []
    for index, name in enumerate(names):
        tp = sum(1 for t, p in zip(truth, predicted) if t == p == index)
        fp = sum(1 for t, p in zip(truth, predicted) if p == index != t)
        fn = sum(1 for t, p in zip(truth, predicted) if t == index != p)
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
