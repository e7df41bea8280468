"""The evaluation of an update: candidate and champion scored on every held-out set, side by side.

For each set: each model's figures (the task's `score`: its metrics and the figures TASKS names) and
the rows that changed between them (lost: the champion got them right and the candidate wrong;
gained: the reverse; for a lower-is-better metric that is also a per-row figure of the predictions,
such as `answer_loss`, the rows whose own value rose or fell and each row's change, under that
metric's name), which the gate's paired tests read. The candidate's predictions are kept with the version (out/predictions.json, each
set's keyed by a digest of the task, its rows and max_length): when this candidate is champion, the
next update reuses them for every set they cover instead of scoring it again. The champion is scored
as it serves, with its own head (its labels are a prefix of the candidate's), so kept and fresh
predictions agree.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from strategies.spec import TrainSpec
from strategies.tasks import TASKS
from strategies.tasks.abc import Prediction, Row, Task

ReadRows = Callable[[str], list[Row]]
TIE = 1e-6  # per-row values closer than this have not changed (numerical noise between two forwards)
# per-row changes are kept for sets of at most this many rows: the gate's small sets (below
# gate.min_eval_rows, 100 by default); a pool holding a larger one takes the sign test
KEPT_ROWS = 1000


def side_by_side(spec: TrainSpec, task: Task, candidate: torch.nn.Module, tokenizer: Any, device: torch.device,
                 read_rows: ReadRows, out: Path) -> dict[str, Any]:
    """{"scores": {who: {set: figures}}, "paired": {set: {lost, gained, metric: paired_rows}}, "eval_reused": [set],
    "eval_seconds"}."""
    labels = spec.labels
    kept = _kept_predictions(spec.champion_predictions)
    champion = None
    results: dict[str, Any] = {"scores": {}, "paired": {}, "eval_reused": []}
    predictions: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name, path in spec.data.eval.items():
        rows = read_rows(path)
        digest = _digest(task.name, rows, spec.max_length)
        found = {"candidate": task.predict(candidate, tokenizer, rows, labels, device, spec.max_length)}
        predictions[name] = {"digest": digest, "predictions": found["candidate"]}
        if spec.champion is not None:
            hit = kept.get(name)
            if _covers(hit, digest, len(rows)):
                found["champion"] = hit["predictions"]  # type: ignore[index]
                results["eval_reused"].append(name)
            else:
                own = labels[: spec.old_label_count] or labels
                if champion is None:
                    champion = task.load(spec.champion, own)[0].to(device)
                found["champion"] = task.predict(champion, tokenizer, rows, own, device, spec.max_length)
        found = {who: task.judged(rows, predicted) for who, predicted in found.items()}
        for who, predicted in found.items():
            figures = task.score(rows, predicted, labels)
            kept_figures = (*task.metrics, *TASKS[task.name].figures, "rows")
            results["scores"].setdefault(who, {})[name] = {k: v for k, v in figures.items() if k in kept_figures}
        if "champion" in found:
            pairs = [(task.correct(row, a), task.correct(row, b))
                     for row, a, b in zip(rows, found["champion"], found["candidate"])]
            results["paired"][name] = {"lost": sum(a and not b for a, b in pairs),
                                       "gained": sum(b and not a for a, b in pairs)}
            for metric, direction in task.metrics.items():
                if direction == "lower":  # a per-row figure (answer_loss): rows whose own value rose, fell
                    results["paired"][name][metric] = paired_rows(task.name, metric, found["champion"],
                                                                  found["candidate"])
    (out / "predictions.json").write_text(json.dumps(predictions))
    results["eval_seconds"] = round(time.perf_counter() - started, 3)
    return results


def paired_rows(task: str, metric: str, before: list[Prediction], after: list[Prediction]) -> dict[str, Any]:
    """A lower-is-better per-row figure, champion (`before`) against candidate (`after`) row by row:
    {"lost": rows whose figure rose, "gained": rows whose figure fell, "changes": each row's change,
    weighed as the set's figure weighs it and scaled so that their mean is the set's change} (the
    gate's paired tests); "changes" only for sets of at most KEPT_ROWS rows (larger sets are gated
    alone on their figure)."""
    weight = TASKS[task].weights.get(metric)
    moved = [(a.get(metric), b.get(metric), b.get(weight, 1) if weight else 1) for a, b in zip(before, after)]
    moved = [(a, b, w) for a, b, w in moved if a is not None and b is not None and w]
    found: dict[str, Any] = {"lost": sum(b > a + TIE for a, b, _ in moved), "gained": sum(b < a - TIE for a, b, _ in moved)}
    total = sum(w for _, _, w in moved)
    if moved and total and len(moved) <= KEPT_ROWS:
        found["changes"] = [round(len(moved) * w * (b - a) / total, 6) for a, b, w in moved]
    return found


def _digest(task: str, rows: list[Row], max_length: int) -> str:
    return hashlib.sha256(json.dumps([task, max_length, rows], sort_keys=True).encode()).hexdigest()


def _covers(hit: Any, digest: str, rows: int) -> bool:
    """Kept predictions that are for exactly these rows (the digest names the task and the rows)."""
    if not isinstance(hit, dict) or hit.get("digest") != digest:
        return False
    found = hit.get("predictions")
    return isinstance(found, list) and len(found) == rows and all(isinstance(p, dict) for p in found)


def _kept_predictions(path: str | None) -> dict[str, Prediction]:
    """The champion's predictions from when it was the candidate; {} when there are none or they cannot be read."""
    if not path:
        return {}
    try:
        kept = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}
