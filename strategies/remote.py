"""The training entry point of a remote run (`train.executor` "ray" or "kubernetes"), one process per
rank under `torchrun` or Ray Train: the same training as the local child (strategies/child.py), with
the files it reads and writes in the run's folder of the S3 artifact store (strategies/runstore.py).

    python -m strategies.remote s3://bucket/prefix/runs/batch-000001

Every rank downloads the inputs and the last checkpoint (a resumed run starts from it) into a
local folder ($LIFELONG_RUN_DIR, else a temporary one) and watches for the daemon's `stop`; the
ranks train in step over plain torch.distributed. Rank 0 writes its progress events to the store,
each checkpoint after it is written, and at the end the candidate (out/, serving/, results.json)
before its "done". Exit codes as the local child's: 0 done, 75 stopped after a checkpoint, 1 failed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from strategies import child
from strategies.runstore import RELATIVE, RunStore
from strategies.spec import EXIT_FAILED, Failure, TrainSpec, failed_event

STOP_POLL_SECONDS = 2.0
EVENT_SECONDS = 1.0  # step events reach the store at most this often; every other event at once


class EventLog:
    """Rank 0's events as one JSON list in the store, rewritten as it grows."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.events: list[dict[str, Any]] = []
        self.written = 0.0

    def add(self, event: dict[str, Any]) -> None:
        self.events.append({**event, "at": time.time()})
        if event.get("event") != "step" or time.monotonic() - self.written >= EVENT_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.store.put_bytes("events.json", json.dumps(self.events).encode())
        self.written = time.monotonic()


def localize(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """The spec's run-relative paths ("./...") made paths under `root`."""
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(RELATIVE):
            return str(root / value[len(RELATIVE):])
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value
    return {key: (value if key in ("strategy", "loop", "labels") else fix(value)) for key, value in doc.items()}


def watch_stop(store: RunStore, stop: threading.Event, done: threading.Event) -> None:
    while not done.wait(STOP_POLL_SECONDS):
        try:
            if store.exists("stop"):
                stop.set()
                return
        except Exception:  # a slow store: look again next time
            pass


def work(url: str, stop: threading.Event | None = None) -> int:
    """One rank's part of the run; its exit code. `stop` set (SIGTERM, or `stop` in the store) ends
    the run at the next step with a checkpoint."""
    rank = int(os.environ.get("RANK", "0"))
    child.QUIET = rank != 0
    store = RunStore(url)
    log = EventLog(store) if rank == 0 else None
    if log is not None:
        child.SINKS.append(log.add)
    given = os.environ.get("LIFELONG_RUN_DIR")
    root = Path(given) / f"rank-{rank}" if given else Path(tempfile.mkdtemp(prefix="lifelong-run-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    stop, done = stop or threading.Event(), threading.Event()
    try:
        store.put_bytes(f"workers/{rank}.json", json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        try:
            if not store.download("inputs/", root):
                raise FileNotFoundError(f"{url}/inputs/ is empty")
            spec = TrainSpec.from_json(json.dumps(localize(json.loads((root / "spec.json").read_text()), root)))
            store.load_checkpoint(Path(spec.checkpoint))  # absent on a first attempt
        except Exception as exc:  # noqa: BLE001 - reported like any failure
            child.emit(failed_event(exc, Failure.INVALID_SPEC))
            return EXIT_FAILED
        child.emit({"event": "start", "pid": os.getpid(), "processes": int(os.environ.get("WORLD_SIZE", "1")),
                    "host": socket.gethostname()})
        threading.Thread(target=watch_stop, args=(store, stop, done), daemon=True).start()
        code, results = child.attempt(spec, stop, on_checkpoint=store.save_checkpoint if rank == 0 else None)
        if results is not None:
            Path(spec.results).write_text(json.dumps(results, indent=2))
            for name in ("out", "serving"):
                if Path(getattr(spec, name)).is_dir():
                    store.upload(Path(getattr(spec, name)), f"outputs/{name}")
            store.upload(Path(spec.results), "outputs/results.json")
            child.emit({"event": "done", "results": RELATIVE + "results.json"})
        return code
    finally:
        done.set()
        if log is not None:
            log.flush()
            child.SINKS.remove(log.add)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a pod deleted, torchrun stopping: checkpoint and stop
    return work(argv[0], stop)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
