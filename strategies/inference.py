"""Scoring and labelling rows with one version, in a child process: the learning side of
`lifelong eval` and `lifelong predict`.

    python -m strategies.inference SPEC.json

The spec (an `InferenceSpec`, written by daemon/update/inference.py) names the version's verified model
directory and labels, an Arrow file of the rows, and where to write the results. Progress is JSON
lines on stdout, as strategies/child.py does: "start", "loaded" {rows}, "progress" {done, total},
then "done" {results} or "failed" {kind, error}. Exit codes: 0 done; 1 failed; 2 bad spec.

What a task does with the rows is one class in `TASKS`; this module imports nothing heavy at the top,
so the daemon's parent process can import the spec.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from strategies.spec import EXIT_FAILED, Failure, failed_event

MODES = ("eval", "predict")
# the "kind" of a "failed" line (the parent imports this set)
FAILURE_KINDS = frozenset(kind.value for kind in Failure)  # the training child's kinds, defined once
DEVICES = ("auto", "cpu", "mps")
# rows per progress line; each chunk is still batched by length (dynamic padding)
CHUNK_ROWS = 1024

Progress = Callable[[int, int], None]


class BadSpec(ValueError):
    """The spec file is not a valid `InferenceSpec`; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class InferenceSpec:
    task: str  # a key of TASKS
    mode: str  # one of MODES
    model: str  # a complete, verified Hugging Face model directory
    labels: tuple[str, ...]  # the version's labels, in the order of its head
    rows: str  # Arrow IPC file with columns text and label ("" when predicting)
    results: str  # where the results document is written
    device: str  # auto, cpu, cuda, cuda:N or mps
    max_length: int
    batch_size: int

    def __post_init__(self) -> None:
        for name, kind in (("task", str), ("mode", str), ("model", str), ("rows", str), ("results", str),
                           ("device", str), ("max_length", int), ("batch_size", int)):
            value = getattr(self, name)
            if type(value) is not kind:
                raise BadSpec(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
        if self.task not in TASKS:
            raise BadSpec(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.mode not in MODES:
            raise BadSpec(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(self.labels, tuple) or not all(type(label) is str for label in self.labels):
            raise BadSpec("labels: expected a tuple of strings")
        if self.device not in DEVICES and not (self.device == "cuda" or self.device.startswith("cuda:")):
            raise BadSpec(f"device: {self.device!r} is not auto, cpu, cuda, cuda:N or mps")
        if self.max_length < 1 or self.batch_size < 1:
            raise BadSpec("max_length and batch_size must be at least 1")

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> "InferenceSpec":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BadSpec(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise BadSpec("the spec is not a JSON object")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise BadSpec(f"missing fields {missing}, unknown fields {unknown}")
        if isinstance(data["labels"], list):
            data["labels"] = tuple(data["labels"])
        return cls(**data)


class SequenceClassification:
    """text -> one of the version's labels, scored by the softmax of its head."""

    def __init__(self, spec: InferenceSpec) -> None:
        from strategies import models
        from strategies.distributed import Group

        self.labels = list(spec.labels)
        self.device = Group().device(spec.device)
        self.model, self.tokenizer = models.load(spec.model, self.labels)
        self.model.to(self.device)
        self.max_length = spec.max_length
        self.batch_size = spec.batch_size

    def _scored(self, texts: list[str], on_progress: Progress) -> tuple[list[int], list[float]]:
        from strategies.evaluate import predict

        found: list[int] = []
        probabilities: list[float] = []
        for start in range(0, len(texts), CHUNK_ROWS):
            labels, scores = predict(self.model, self.tokenizer, texts[start:start + CHUNK_ROWS], self.device,
                                     self.max_length, self.batch_size)
            found += labels
            probabilities += scores
            on_progress(len(found), len(texts))
        return found, probabilities

    def predict(self, rows: list[tuple[str, str]], on_progress: Progress) -> list[dict[str, Any]]:
        found, probabilities = self._scored([text for text, _ in rows], on_progress)
        return [{"label": self.labels[i], "score": p} for i, p in zip(found, probabilities)]

    def evaluate(self, rows: list[tuple[str, str]], on_progress: Progress) -> dict[str, Any]:
        """accuracy, macro_f1 and per-label figures. A label the version does not know can never be
        predicted: its rows count as wrong, it is scored in per_label (f1 0) and named in unknown_labels."""
        from strategies.evaluate import scores

        predicted, _ = self._scored([text for text, _ in rows], on_progress)
        names = list(self.labels)
        index = {name: i for i, name in enumerate(names)}
        unknown: dict[str, int] = {}
        truth = []
        for _, label in rows:
            if label not in index:
                index[label] = len(names)
                names.append(label)
            if index[label] >= len(self.labels):
                unknown[label] = unknown.get(label, 0) + 1
            truth.append(index[label])
        return {**scores(truth, predicted, names), "unknown_labels": unknown}


TASKS: dict[str, type[SequenceClassification]] = {"sequence_classification": SequenceClassification}


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run(spec: InferenceSpec) -> None:
    from strategies.child import read_rows

    task = TASKS[spec.task](spec)
    rows = read_rows(spec.rows)
    emit({"event": "loaded", "rows": len(rows)})

    def on_progress(done: int, total: int) -> None:
        emit({"event": "progress", "done": done, "total": total})

    result = task.evaluate(rows, on_progress) if spec.mode == "eval" else task.predict(rows, on_progress)
    Path(spec.results).write_text(json.dumps(result))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        spec = InferenceSpec.read(Path(argv[0]))
    except BadSpec as exc:
        emit(failed_event(exc, Failure.INVALID_SPEC))
        return 2
    emit({"event": "start", "pid": os.getpid()})
    try:
        run(spec)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
        emit(failed_event(exc))
        return EXIT_FAILED
    emit({"event": "done", "results": spec.results})
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip torch's slow teardown: the results are written and closed
