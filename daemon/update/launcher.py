"""Runs one update in a child process (`python -m strategies.child`) and follows its JSON lines.

The daemon's process never imports torch: it writes a spec (`train_spec`, the one place a
strategies/spec.py TrainSpec is built from the config) and the data as Arrow files, spawns the child,
reads progress (step, loss, samples/s) line by line, and reads the results file at the end.

A child's imports (torch, transformers, peft) take several seconds, which is most of an update's
fixed cost. `Standby` keeps at most one child started ahead of need, its imports done, waiting on
its stdin for a spec path; an update hands it the spec instead of spawning afresh. It retires after
`train.standby_seconds` without use, and exits by itself when the daemon goes (its stdin closes).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from daemon.config import Config
from registry.errors import LifelongError
from strategies.tasks import TASKS
from strategies.spec import EXIT_INTERRUPTED, DataPaths, Failure, LoopSettings, StrategySpec, TrainSpec

log = logging.getLogger(__name__)

# loop settings that are not config keys: the same for every update
WARMUP_RATIO = 0.1  # of the steps, a linear warmup
MAX_GRAD_NORM = 1.0
VAL_FRACTION = 0.1  # of the new rows, held back for early stopping


def loop_settings(config: Config) -> LoopSettings:
    """The training loop's settings from the config: strategy.lora.lr when the strategy trains LoRA
    adapters, else strategy.lr ("auto" searches either way)."""
    strategy = config.strategy
    lr = strategy.lora.lr if "lora" in strategy.parts and strategy.lr != "auto" else strategy.lr
    return LoopSettings(epochs=strategy.epochs, min_steps=strategy.min_steps,
                        lift_target=strategy.lift_target, batch_size=strategy.batch_size, lr=lr,
                        weight_decay=strategy.weight_decay, l1=strategy.l1, warmup_ratio=WARMUP_RATIO,
                        max_grad_norm=MAX_GRAD_NORM, early_stopping_patience=strategy.early_stopping_patience,
                        class_weights=strategy.class_weights, val_fraction=VAL_FRACTION,
                        precision=config.train.precision)


def train_spec(config: Config, work: Path, *, batch: int, labels: list[str], data: DataPaths,
               parent: str | None = None, parent_model: Path | None = None, parent_files: Path | None = None,
               old_label_count: int = 0, base: str | None = None) -> TrainSpec:
    """The spec of one update: start from `parent_model` (the champion's verified model directory,
    also scored side by side) or `base` (model.base as the child loads it: an embedded LLM's
    converted directory, strategies/embedded.py local_base; model.base itself when None);
    `parent_files` is the champion's version folder (its state/ and kept predictions); the child
    writes under `work`. A task without labels (causal_lm) scores the base side by side with its
    first model: the gate judges that one against the base model."""
    state = parent_files / "state" if parent_files is not None else None
    kept = parent_files / "predictions.json" if parent_files is not None else None
    return TrainSpec(
        task=config.model.task, batch=batch, labels=list(labels), seed=config.train.seed, device=config.train.device,
        num_processes=config.train.num_processes, max_length=config.model.max_length,
        base=str(parent_model) if parent_model is not None else (base or config.model.base),
        old_label_count=old_label_count, parent=parent,
        parent_state=str(state) if state is not None and state.is_dir() else None,
        champion=(str(parent_model) if parent_model is not None
                  else None if TASKS[config.model.task].labelled else (base or config.model.base)),
        champion_predictions=str(kept) if kept is not None and kept.is_file() else None,
        strategy=StrategySpec(name=config.strategy.name, options=config.strategy.sections()),
        loop=loop_settings(config), data=data,
        out=str(work / "out"), serving=str(work / "serving"), checkpoint=str(work / "checkpoint"),
        results=str(work / "results.json"))


def spawn_materializer(version_dir: Path, parent_dir: Path, out: Path) -> None:
    """The registry's materialiser: merge a LoRA version in a child process (`strategies.materialize`),
    so that the daemon's process never imports torch."""
    done = subprocess.run([sys.executable, "-m", "strategies.materialize", str(version_dir), str(parent_dir), str(out)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"materialising {version_dir.name} failed: {done.stderr.strip()[-2000:]}")


class TrainingFailed(LifelongError, RuntimeError):
    """The child failed (exception, non-finite loss, out of memory, invalid spec, killed). `kind`
    (strategies/spec.py Failure) says which."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"training failed ({kind}): {message}")


class TrainingInterrupted(LifelongError, RuntimeError):
    """The child stopped on SIGTERM after a checkpoint; running the same spec again resumes."""


@dataclass
class ChildRun:
    spec_path: Path
    on_event: Callable[[dict[str, Any]], None] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    warm: bool = False  # handed to a standby child rather than spawned

    def start(self, standby: "Standby | None" = None) -> "ChildRun":
        processes = TrainSpec.load(self.spec_path).num_processes
        ready = standby.take() if standby is not None and processes == 1 else None
        if ready is not None:
            try:
                ready.stdin.write(f"{self.spec_path}\n")  # type: ignore[union-attr]
                ready.stdin.close()  # type: ignore[union-attr]
                self.process, self.warm = ready, True
            except OSError:  # it died since take() looked: spawn one as usual
                ready.kill()
                ready.wait()
        if self.process is None:
            self.process = spawn([*launcher(processes), "strategies.child", str(self.spec_path)],
                                 stdin=subprocess.DEVNULL)
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True)  # type: ignore[union-attr, arg-type]
        self._drain.start()
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()
        return self

    def _follow(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if self.on_event:
                try:
                    self.on_event(event)
                except Exception:  # a broken progress display must not stop training
                    log.exception("progress callback failed")

    def terminate(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> dict[str, Any]:
        """Follow the child to its end; the results document, or TrainingFailed / TrainingInterrupted."""
        if self.process is None:
            raise RuntimeError("ChildRun.wait() before start()")
        code = self.process.wait()
        self._reader.join(timeout=30)
        self._drain.join(timeout=5)
        last = self.events[-1] if self.events else {}
        if code == 0 and last.get("event") == "done":
            return json.loads(Path(last["results"]).read_text())
        if code == EXIT_INTERRUPTED or last.get("event") == "interrupted":  # torchrun exits with its own code
            raise TrainingInterrupted(last.get("message", "stopped"))
        if last.get("event") == "failed":
            raise TrainingFailed(last.get("kind", Failure.EXCEPTION.value), last.get("error", "unknown error"))
        if code < 0:
            raise TrainingFailed(Failure.KILLED.value, f"the training process was killed by signal {-code}")
        tail = "".join(self._stderr)[-1500:].strip()
        raise TrainingFailed(Failure.EXCEPTION.value, f"the training process exited {code}: {tail}")


def spawn(args: list[str], stdin: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


class Standby:
    """At most one single-process training child, started ahead of need (see the module's text).

    `warm()` starts one if none is alive (or renews the one waiting); `take()` hands it over (imports done or still under way:
    either way it is ahead of a fresh spawn); `expire()` retires it after `seconds` unused; `close()`
    ends it. `seconds` = 0 disables it. Not thread-safe on its own: the daemon calls it from its
    update thread (take) and its main loop (warm, expire) under `lock`.
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None
        self.since = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def warm(self) -> None:
        with self.lock:
            if self.seconds <= 0:
                return
            if self.alive:
                self.since = self.clock()  # wanted again: its time to retire counts from now
                return
            self._reap()
            self.process = spawn(["-m", "strategies.child", "--standby"], stdin=subprocess.PIPE)
            self.since = self.clock()
            log.debug("standby training child started", extra={"pid": self.process.pid})

    def take(self) -> subprocess.Popen[str] | None:
        with self.lock:
            process, self.process = self.process, None
            if process is not None and process.poll() is None:
                return process
            if process is not None:
                process.wait()
            return None

    def expire(self) -> None:
        with self.lock:
            if self.process is not None and self.clock() - self.since >= self.seconds:
                log.debug("standby training child retired after %.0fs unused", self.seconds)
                self._reap()

    def close(self) -> None:
        with self.lock:
            self._reap()

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()  # a standby holds no state: SIGTERM ends it at once, even mid-import
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def launcher(processes: int) -> list[str]:
    """Interpreter arguments before the child module: `-m` alone, or torchrun starting `processes`
    data-parallel ranks on this machine (it forwards SIGTERM to every rank)."""
    if processes <= 1:
        return ["-m"]
    return ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}",
            "--monitor-interval=1", "-m"]


# columns of a list per row (token classification's tokens and tags); every other column is a string
LIST_COLUMNS = frozenset(("tokens", "tags"))
# causal_lm's prompt: a list of {"role", "content"} messages (daemon/ingest/chat.py)
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def write_rows(path: Path, rows: Iterable[tuple], columns: tuple[str, ...] = ("text", "label")) -> int:
    """Rows (text, label), or tuples of the task's `columns`, as an Arrow IPC file for the child;
    returns how many."""
    values: list[list] = [[] for _ in columns]
    for row in rows:
        for column, value in zip(values, row):
            column.append(value)
    def kind(name: str) -> pa.DataType:
        return pa.list_(pa.string()) if name in LIST_COLUMNS else MESSAGES if name == "prompt" else pa.string()

    table = pa.table({name: pa.array(column, kind(name)) for name, column in zip(columns, values)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return len(values[0])
