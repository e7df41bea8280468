"""`lifelong eval` and `lifelong predict`, the parent's side: pick the version, read and check the
rows, run strategies/inference.py in a child process, show its progress, and render the result.

Only reads the home: the caller opens the registry without recovery and without its lock, so both
commands work while the daemon runs. A LoRA version's merged weights may be materialised into the
registry's serving cache on first use, as for any other reader. What a task reads, sends and shows
is one class in `TASKS`; what the model does with them is the learning side's (strategies/tasks/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from daemon.home import Home
from daemon.ingest import formats
from daemon.ingest.names import clipped, display
from daemon.ingest.rows import LabelSet, Validator
from daemon.update import tables
from daemon.update.launcher import spawn, write_rows
from daemon.update.answers import CausalLM
from daemon.update.evalfile import MAX_ERRORS, Labeled, read_valid
from daemon.update.tagging import TokenClassification
from registry.errors import LifelongError, UsageError, VersionNotFound
from strategies.inference import FAILURE_KINDS, InferenceSpec

if TYPE_CHECKING:
    from registry.registry import Registry

BATCH_SIZE = 64
PROGRESS_MIN_BYTES = 4 << 20
TEXT_WIDTH = 60


class NoChampion(VersionNotFound):
    """No version was named and there is no champion yet."""

    def __init__(self) -> None:
        self.version = "champion"
        LookupError.__init__(self, "there is no champion yet; name a version with --version "
                             "(`lifelong versions` lists them)")


class InferenceFailed(LifelongError, RuntimeError):
    """The child failed; `kind` is one of strategies.inference.FAILURE_KINDS, or "killed"."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"the model process failed ({kind}): {message}")


@dataclass(frozen=True, kw_only=True)
class Target:
    version: str
    model_dir: Path
    labels: list[str]


def open_version(registry: Registry, version: str | None) -> Target:
    """The version (default: the champion) with its verified model directory and its labels; the
    registry is opened read-only by the caller (no recovery, no lock)."""
    chosen = version or registry.champion()
    if chosen is None:
        raise NoChampion()
    model_dir = registry.model_dir(chosen)  # VersionNotFound / VersionPruned: exit 4
    config = json.loads((model_dir / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return Target(version=chosen, model_dir=model_dir, labels=[id2label[k] for k in sorted(id2label, key=int)])


class SequenceClassification:
    """Rows are {"text", "label"} in any inbox format; predictions are a label and its score."""

    name = "sequence_classification"

    @staticmethod
    def read_labeled(home: Home, path: Path, labels: list[str], on_progress: Callable[[int], None] | None) -> Labeled:
        """Every valid row of the file, checked as the inbox checks it. A label the version does not
        know is kept (the child scores it as wrong), up to inbox.max_labels labels in all."""
        inbox = home.config.inbox
        known = LabelSet(known={label: i for i, label in enumerate(labels)},
                         max_labels=max(inbox.max_labels, len(labels)))
        validator = Validator(known, 0.0, max_text_chars=inbox.max_text_chars, max_label_chars=inbox.max_label_chars)

        def fast(chunk: formats.Chunk) -> list[tuple] | None:
            taken = validator.fast_chunk(chunk)
            return None if taken is None else list(zip(taken[2].to_pylist(), taken[1].to_pylist()))

        return read_valid(home, path, validator, lambda found: (found[2], found[1]), on_progress, fast=fast)

    @staticmethod
    def write(path: Path, rows: list[tuple[str, str]]) -> None:
        write_rows(path, rows)

    @staticmethod
    def predict_rows(texts: list[str]) -> list[tuple[str, str]]:
        return [(text, "") for text in texts]

    @staticmethod
    def present(texts: list[str], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": text, **item} for text, item in zip(texts, found)]

    @staticmethod
    def render_eval(doc: dict[str, Any]) -> str:
        lines = [f"{doc['version']} on {doc['data']}: {doc['rows']} rows",
                 f"accuracy  {doc['accuracy']:.4f}", f"macro F1  {doc['macro_f1']:.4f}", ""]
        lines += tables.figures(doc["per_label"], "label")
        if doc["unknown_labels"]:
            named = ", ".join(f"{clipped(label, tables.NAME_WIDTH)} ({n})" for label, n in doc["unknown_labels"].items())
            lines.append(f"labels {doc['version']} does not know (their rows count as wrong): {named}")
        return "\n".join(lines + tables.invalid_rows(doc, MAX_ERRORS))

    @staticmethod
    def render_predict(items: list[dict[str, Any]]) -> str:
        width = max([5] + [len(clipped(item["label"], tables.NAME_WIDTH)) for item in items])
        lines = [f"{'label':<{width}}  score   text"]
        lines += [f"{clipped(item['label'], tables.NAME_WIDTH):<{width}}  {item['score']:.4f}  "
                  f"{clipped(item['text'], TEXT_WIDTH)}" for item in items]
        return "\n".join(lines)


# the parent's side of each task of strategies/tasks TASKS (tests/test_tasks.py checks they agree)
TASKS = {SequenceClassification.name: SequenceClassification, TokenClassification.name: TokenClassification,
         CausalLM.name: CausalLM}


def task_of(home: Home) -> type[SequenceClassification] | type[TokenClassification] | type[CausalLM]:
    return TASKS[home.config.model.task]


def evaluate(home: Home, target: Target, data: Path) -> dict[str, Any]:
    """`eval --json`'s document: the version's figures on the valid rows of `data`."""
    task = task_of(home)
    with _Display(target.version, "scoring") as shown:
        labeled = task.read_labeled(home, data, target.labels, shown.reading(data))
        if not labeled.rows:
            first = labeled.errors[0] if labeled.errors else None
            why = f"; line {first['line']}, {first['field']}: {first['reason']}" if first else ""
            raise UsageError(f"{display(str(data))} has no valid rows to score{why}")
        result = _run_child(home, task, target, "eval", labeled.rows, shown)
    return {"version": target.version, "data": display(str(data)), **result,
            "invalid_rows": labeled.invalid, "errors": labeled.errors}


def predict(home: Home, target: Target, texts: list[str], max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    """`predict --json`'s document: one {"text", "label", "score"} per text, in order (causal_lm: one
    {"prompt", "completion"}, at most `max_new_tokens` new tokens, the task's default when None)."""
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise UsageError(f"text {number} is empty")
        if len(text) > home.config.inbox.max_text_chars:
            raise UsageError(f"text {number} is longer than inbox.max_text_chars = {home.config.inbox.max_text_chars}")
    task = task_of(home)
    with _Display(target.version, "labelling") as shown:
        rows = task.predict_rows(texts) if max_new_tokens is None else CausalLM.predict_rows(texts, max_new_tokens)
        found = _run_child(home, task, target, "predict", rows, shown)
    return task.present(texts, found)


def read_texts(home: Home, path: Path) -> list[str]:
    """Texts for `predict --file`: one per line (blank lines skipped), or for a .jsonl/.ndjson file
    the "text" field of each line's object; "-" reads standard input."""
    limit = home.config.inbox.max_file_bytes
    if str(path) == "-":
        raw = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as stream:
            raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise UsageError(f"{display(str(path))} is larger than inbox.max_file_bytes = {limit}")
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{display(str(path))} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    texts: list[str] = []
    as_json = path.name.lower().endswith((".jsonl", ".ndjson"))
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if as_json:
            try:
                record = json.loads(line)
            except ValueError:
                raise UsageError(f"{display(str(path))} line {number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UsageError(f"{display(str(path))} line {number} has no string field \"text\"")
            line = record["text"]
        texts.append(line)
    if not texts:
        raise UsageError(f"{display(str(path))} holds no texts")
    return texts


def _run_child(home: Home, task: type[SequenceClassification] | type[TokenClassification] | type[CausalLM],
               target: Target, mode: str,
               rows: list[tuple], shown: "_Display") -> Any:
    with tempfile.TemporaryDirectory(prefix=f"lifelong-{mode}-") as tmp:
        folder = Path(tmp)
        task.write(folder / "rows.arrow", rows)
        spec = InferenceSpec(task=task.name, mode=mode, model=str(target.model_dir), labels=tuple(target.labels),
                             rows=str(folder / "rows.arrow"), results=str(folder / "results.json"),
                             device=home.config.train.device, max_length=home.config.model.max_length,
                             batch_size=BATCH_SIZE)
        spec.write(folder / "spec.json")
        process = spawn(["-m", "strategies.inference", str(folder / "spec.json")], stdin=subprocess.DEVNULL)
        stderr: list[str] = []
        drain = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
        drain.start()
        last: dict[str, Any] = {}
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                try:
                    last = json.loads(line)
                except ValueError:
                    continue
                shown.event(last)
            code = process.wait()
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C): the child is in its own session
                process.kill()
                process.wait()
        drain.join(timeout=5)
        if code == 0 and last.get("event") == "done":
            return json.loads((folder / "results.json").read_text())
    if last.get("event") == "failed" and last.get("kind") in FAILURE_KINDS:
        raise InferenceFailed(last["kind"], str(last.get("error")))
    if code < 0:
        raise InferenceFailed("killed", f"killed by signal {-code}")
    raise InferenceFailed("exception", f"exited {code}: {''.join(stderr)[-1500:].strip()}")


class _Display:
    """Progress on stderr, only on a terminal: reading a large file, loading the model, rows done."""

    def __init__(self, version: str, verb: str) -> None:
        self.version = version
        self.verb = verb
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> "_Display":
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                     transient=True)
            self.progress.start()
        return self

    def reading(self, path: Path) -> Callable[[int], None] | None:
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        if self.progress is None or size < PROGRESS_MIN_BYTES:
            return None
        task = self.progress.add_task(f"reading {display(path.name)}", total=size)
        return lambda done: self.progress.update(task, completed=min(done, size))

    def event(self, event: dict[str, Any]) -> None:
        if self.progress is None:
            return
        kind = event.get("event")
        if kind == "start":
            self.task = self.progress.add_task(f"loading {self.version}", total=None)
        elif kind == "loaded" and self.task is not None:
            self.progress.update(self.task, description=f"{self.verb} with {self.version}", total=event["rows"],
                                 completed=0)
        elif kind == "progress" and self.task is not None:
            self.progress.update(self.task, completed=event["done"])

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
