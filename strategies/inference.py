"""Scoring and labelling rows with one version, in a child process: the learning side of
`lifelong eval` and `lifelong predict`.

    python -m strategies.inference SPEC.json

The spec (an `InferenceSpec`, written by daemon/update/inference.py) names the version's verified model
directory and labels, an Arrow file of the rows, and where to write the results. Progress is JSON
lines on stdout, as strategies/child.py does: "start", "loaded" {rows}, "progress" {done, total},
then "done" {results} or "failed" {kind, error}. Exit codes: 0 done; 1 failed; 2 bad spec.

What the rows become is the task's (strategies/tasks/); this module imports nothing heavy at the
top, so the daemon's parent process can import the spec.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from strategies.spec import EXIT_FAILED, Failure, failed_event
from strategies.tasks import TASKS

MODES = ("eval", "predict")
# the "kind" of a "failed" line (the parent imports this set)
FAILURE_KINDS = frozenset(kind.value for kind in Failure)  # the training child's kinds, defined once
DEVICES = ("auto", "cpu", "mps")
# rows per progress line; each chunk is still batched by length (dynamic padding)
CHUNK_ROWS = 1024


class BadSpec(ValueError):
    """The spec file is not a valid `InferenceSpec`; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class InferenceSpec:
    task: str  # a key of strategies/tasks TASKS
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


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run(spec: InferenceSpec) -> None:
    """The version's predictions for the rows, in chunks with a progress line after each; `eval`
    scores them (the task's figures; labels the version does not know count as wrong)."""
    from strategies import tasks
    from strategies.child import read_rows
    from strategies.distributed import Group

    task = tasks.load(spec.task)
    labels = list(spec.labels)
    device = Group().device(spec.device)
    model, tokenizer = task.load(spec.model, labels)
    model.to(device)
    rows = read_rows(spec.rows)
    emit({"event": "loaded", "rows": len(rows)})
    found: list[dict[str, Any]] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        found += task.predict(model, tokenizer, rows[start:start + CHUNK_ROWS], labels, device, spec.max_length,
                              spec.batch_size)
        emit({"event": "progress", "done": len(found), "total": len(rows)})
    result = task.score(rows, found, labels) if spec.mode == "eval" else found
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
