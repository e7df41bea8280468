"""What the `ray` and `kubernetes` executors share: the run's folder in the S3 artifact store
(strategies/runstore.py), filled with what the spec names before the workers start, followed for
rank 0's progress while they train, and read for the candidate after; and the end of a run mapped
to what the local child gives (results, TrainingFailed, TrainingInterrupted).

A stop (`terminate`, on SIGTERM to the daemon) writes `stop` into the run's folder: every rank sees
it within seconds, the loop checkpoints into the store, and the run ends "interrupted"; the next
attempt of the batch resumes from that checkpoint. A run that has not ended `STOP_GRACE` seconds
after a stop is cancelled (the engine ends it), and resumes from its last checkpoint (every epoch).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from daemon.config import Config
from daemon.update.launcher import TrainingFailed, TrainingInterrupted
from strategies.runstore import RELATIVE, RunStore, run_url
from strategies.spec import Failure, TrainSpec

log = logging.getLogger(__name__)

STOP_GRACE = 90.0  # seconds a stopped run has to checkpoint before it is cancelled: under the daemon's own
# 120 s wait for the update (daemon/service/loop.py), so a cancelled run is still cleaned up before it exits
POLL_SECONDS = 1.0  # how often rank 0's events are read from the store
ENDS = ("done", "interrupted", "failed")


def stage(spec: TrainSpec, store: RunStore, world: int) -> dict[str, Any]:
    """Upload every file and folder the spec names into the run's inputs/, and the spec itself with
    those paths made relative ("./data/train.arrow"); a spec path that is not a local file (a hub
    model name) is left as it is. Clears what an earlier attempt left, except its checkpoint."""
    uploads: dict[Path, str] = {}

    def place(path: str | None, rel: str) -> str | None:
        if path is None or not Path(path).exists():
            return path
        local = Path(path).resolve()
        if local not in uploads:
            uploads[local] = rel
        return RELATIVE + uploads[local]

    doc = json.loads(spec.to_json())
    doc["base"] = place(spec.base, "base")
    doc["champion"] = place(spec.champion, "champion")
    doc["parent_state"] = place(spec.parent_state, "state")
    doc["champion_predictions"] = place(spec.champion_predictions, "predictions.json")
    data = doc["data"]
    data["train"] = place(spec.data.train, "data/train.arrow")
    data["eval"] = {name: place(path, f"data/eval-{name}.arrow") for name, path in spec.data.eval.items()}
    data["set_aside"] = place(spec.data.set_aside, "data/set_aside.arrow")
    doc.update(out=RELATIVE + "out", serving=RELATIVE + "serving", checkpoint=RELATIVE + "checkpoint",
               results=RELATIVE + "results.json", num_processes=world)
    for leftover in ("inputs/", "outputs/"):
        store.remove(leftover)
    for name in ("events.json", "stop"):
        store.delete(name)
    for local, rel in uploads.items():
        store.upload(local, f"inputs/{rel}")
    store.put_bytes("inputs/spec.json", json.dumps(doc, indent=2).encode())
    TrainSpec.from_json(json.dumps(doc))  # what the workers will load: refused here rather than there
    return doc


class RemoteExecutor:
    """What the remote executors share: the config, and forgetting a given-up batch's run folder."""

    name = "remote"

    def __init__(self, config: Config) -> None:
        self.config = config

    def forget(self, batch: int) -> None:
        """A batch given up for good is never resumed: its run folder (inputs, checkpoint) goes."""
        url = run_url(self.config.registry.artifacts, batch)
        try:
            RunStore(url).remove()
        except Exception as exc:  # the store being down costs storage only; the batch stays given up
            log.warning("could not remove the given-up run's folder %s: %s", url, exc)


class RemoteRun:
    """One update's training on a remote engine. Subclasses launch it (`launch`), wait for the engine
    to end it (`finish`: a failure kind and message when it did not end by itself), cancel it
    (`cancel`) and remove what they created (`cleanup`)."""

    warm = False  # never a standby child
    executor = "remote"

    def __init__(self, spec_path: Path, artifacts: str, world: int,
                 on_event: Callable[[dict[str, Any]], None] | None = None, store: RunStore | None = None) -> None:
        self.spec_path = spec_path
        self.spec = TrainSpec.load(spec_path)
        self.world = world
        self.on_event = on_event
        self.store = store or RunStore(run_url(artifacts, self.spec.batch))
        self.events: list[dict[str, Any]] = []
        self._seen = 0
        self._ended = threading.Event()
        self._stopped_at: float | None = None
        self._lock = threading.Lock()

    # -- what each engine does --------------------------------------------------------------------
    def launch(self) -> None:
        raise NotImplementedError

    def finish(self) -> tuple[str, str] | None:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    # -- the ChildRun interface -------------------------------------------------------------------
    def start(self) -> "RemoteRun":
        stage(self.spec, self.store, self.world)
        log.info("remote training started", extra={"executor": self.executor, "run": self.store.url,
                                                    "batch": self.spec.batch})
        try:
            self.launch()
        except BaseException:
            self.cleanup()
            raise
        self._follower = threading.Thread(target=self._follow, daemon=True)
        self._follower.start()
        return self

    def terminate(self) -> None:
        """Ask the run to checkpoint and stop; cancel it if it has not ended after STOP_GRACE seconds."""
        if self._stopped_at is not None or self._ended.is_set():
            return
        self._stopped_at = time.monotonic()
        try:
            self.store.put_bytes("stop", b"")
        except Exception:
            log.exception("could not write the stop request; cancelling the run")
            self.cancel()
            return
        timer = threading.Timer(STOP_GRACE, lambda: None if self._ended.is_set() else self.cancel())
        timer.daemon = True
        timer.start()

    def wait(self) -> dict[str, Any]:
        try:
            ended = self.finish()
            self._ended.set()
            self._follower.join(timeout=30)
            self._poll()
            return self._outcome(ended)
        finally:
            self._ended.set()
            self.cleanup()

    # -- progress ---------------------------------------------------------------------------------
    def _follow(self) -> None:
        while not self._ended.wait(POLL_SECONDS):
            try:
                self._poll()
            except Exception as exc:  # the store being slow must not stop the run; the end reads it again
                log.warning("reading the remote run's progress failed: %s", exc)

    def _poll(self) -> None:
        with self._lock:
            events = self.store.get_json("events.json") or []
            if len(events) < self._seen:  # the engine restarted the workers: a new attempt's events
                self._seen = 0
            for event in events[self._seen:]:
                self.events.append(event)
                if self.on_event:
                    try:
                        self.on_event(event)
                    except Exception:
                        log.exception("progress callback failed")
            self._seen = len(events)

    # -- the end ----------------------------------------------------------------------------------
    def _outcome(self, ended: tuple[str, str] | None) -> dict[str, Any]:
        last = next((e for e in reversed(self.events) if e.get("event") in ENDS), {})
        kind = last.get("event")
        if kind == "done":
            return self._fetch()
        if kind == "interrupted":
            raise TrainingInterrupted(last.get("message", "stopped"))
        if kind == "failed":
            raise TrainingFailed(last.get("kind", Failure.EXCEPTION.value), last.get("error", "unknown error"))
        if self._stopped_at is not None:
            raise TrainingInterrupted(f"the {self.executor} run was cancelled {STOP_GRACE:.0f}s after a stop without "
                                      "a checkpoint of its own; the next attempt resumes from its last epoch's")
        failure, message = ended or (Failure.EXCEPTION.value, "it ended without a word")
        raise TrainingFailed(failure, f"the {self.executor} run ended without a result: {message}")

    def _fetch(self) -> dict[str, Any]:
        """The candidate's files into the spec's local paths, then the run's folder goes."""
        spec = self.spec
        for name, local in (("out", Path(spec.out)), ("serving", Path(spec.serving))):
            shutil.rmtree(local, ignore_errors=True)
            self.store.download(f"outputs/{name}/", local)
        if not self.store.download("outputs/results.json", Path(spec.results)):
            raise TrainingFailed(Failure.EXCEPTION.value, "the run said done but wrote no results.json")
        results = json.loads(Path(spec.results).read_text())
        try:
            self.store.remove()
        except Exception as exc:
            log.warning("could not remove the finished run's folder %s: %s", self.store.url, exc)
        return results
