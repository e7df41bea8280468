"""Per-label figures of a text classifier's candidate on each held-out set of an update, computed in
the daemon from the predictions the child kept with the candidate (`lifelong show --json`
metrics.candidate.per_label, the report's per-label chart); NER's per-type figures are tagging.py's."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strategies.spec import TrainSpec


def per_label(spec: "TrainSpec") -> dict[str, dict[str, dict[str, Any]]]:
    """{set: {label: {precision, recall, f1, support}}}; {} when the predictions cannot be read (the
    gate never depends on them)."""
    import pyarrow as pa

    try:
        kept = json.loads((Path(spec.out) / "predictions.json").read_text())
        found = {}
        for name, path in spec.data.eval.items():
            with pa.memory_map(path) as source:
                truth = [str(label) for label in pa.ipc.open_file(source).read_all().column("label").to_pylist()]
            predicted = [str(p["label"]) for p in kept[name]["predictions"]]
            found[name] = figures(truth, predicted)
        return found
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return {}


def figures(truth: list[str], predicted: list[str]) -> dict[str, dict[str, Any]]:
    """Precision, recall, F1 and support of every label in truth or predictions."""
    hits = Counter(t for t, p in zip(truth, predicted) if t == p)
    said, true = Counter(predicted), Counter(truth)
    found = {}
    for label in sorted(set(true) | set(said)):
        precision = hits[label] / said[label] if said[label] else 0.0
        recall = hits[label] / true[label] if true[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        found[label] = {"precision": precision, "recall": recall, "f1": f1, "support": true[label]}
    return found
