"""Runs one update in a child process (`python -m strategies.child`) and follows its JSON lines.

The daemon's process never imports torch: it writes a spec and the data as Arrow files, spawns the
child, reads progress (step, loss, samples/s) line by line, and reads the results file at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from registry.errors import LifelongError

log = logging.getLogger(__name__)
EXIT_INTERRUPTED = 75


class TrainingFailed(LifelongError, RuntimeError):
    """The child failed (exception, non-finite loss, out of memory, killed). `kind` says which."""

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

    def start(self) -> "ChildRun":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        processes = int(json.loads(self.spec_path.read_text()).get("num_processes", 1))
        self.process = subprocess.Popen([sys.executable, *launcher(processes), "strategies.child", str(self.spec_path)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                        start_new_session=True)
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
            raise TrainingFailed(last.get("kind", "exception"), last.get("error", "unknown error"))
        if code < 0:
            raise TrainingFailed("killed", f"the training process was killed by signal {-code}")
        tail = "".join(self._stderr)[-1500:].strip()
        raise TrainingFailed("exception", f"the training process exited {code}: {tail}")


def launcher(processes: int) -> list[str]:
    """Interpreter arguments before the child module: `-m` alone, or torchrun starting `processes`
    data-parallel ranks on this machine (it forwards SIGTERM to every rank)."""
    if processes <= 1:
        return ["-m"]
    return ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={processes}",
            "--monitor-interval=1", "-m"]


def write_rows(path: Path, rows: Iterable[tuple[str, str]]) -> int:
    """Rows (text, label) as an Arrow IPC file for the child; returns how many."""
    texts, labels = [], []
    for text, label in rows:
        texts.append(text)
        labels.append(label)
    table = pa.table({"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.string())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return len(texts)
