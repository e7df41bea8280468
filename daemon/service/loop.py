"""`lifelong run`: the long-running service's main loop.

It holds the home's single-instance lock, watches the inbox (file-system events as a latency hint,
full rescans on a timer as the source of truth), asks for update cycles (schedule ticks,
`min_new_rows`, `max_wait`, `lifelong update` requests, an undecided batch left by a restart), runs
at most one at a time in a worker thread (training itself runs in a child process), serves
/metrics, /healthz and /readyz, and speaks the systemd notify protocol. SIGTERM or SIGINT: the
training child checkpoints, the loop ends, exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from daemon.home import Home
from daemon.ingest.inbox import Inbox
from daemon.ingest.store import Store
from daemon.service.metrics import Metrics
from daemon.service.notify import Notifier
from daemon.service.role import POLL, Role, settle_decided
from daemon.service.signals import StopSignals
from daemon.update.launcher import Standby
from registry.errors import ArtifactStoreUnavailable, LifelongError, MetadataUnavailable, Stopping
from registry.fsutil import atomic_write
from registry.lock import PidLock

log = logging.getLogger(__name__)
HEARTBEAT_STALE = 30.0  # /healthz fails when the loop has not gone round for this long
STOP_GRACE = 120.0  # seconds the training child gets to checkpoint on SIGTERM
BACKOFF_FIRST, BACKOFF_MAX = 60.0, 3600.0
FOLLOW_SECONDS = 30.0  # a standby refreshes its registry/champion this often
DISK_RETRY = 300.0  # seconds before an update skipped for want of disk is tried again


class _Wake:
    """File-system events set a flag (the main loop does the work) and report renames to the inbox."""

    def __init__(self, event: threading.Event, inbox: Inbox | None = None) -> None:
        self.event = event
        self.inbox = inbox

    def dispatch(self, event: object) -> None:
        if self.inbox is not None and getattr(event, "event_type", None) == "moved":
            self.inbox.renamed(os.fsdecode(event.src_path), os.fsdecode(event.dest_path))  # type: ignore[attr-defined]
        self.event.set()


def start_watching(home: Home, wake: threading.Event, inbox: Inbox | None = None):  # type: ignore[no-untyped-def]
    """A watchdog observer on the inbox (polling on network volumes); None if it cannot start."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    settings = home.config.inbox
    observer = PollingObserver(timeout=max(1.0, min(settings.settle_seconds, 5.0))) if settings.polling else Observer()
    try:
        observer.schedule(_Wake(wake, inbox), str(home.inbox), recursive=False)
        observer.daemon = True
        observer.start()
    except OSError as exc:  # e.g. inotify watch limit reached: rescans still find everything
        log.warning("inbox events unavailable (%s); relying on rescans every %ss", exc, settings.rescan_seconds)
        return None
    return observer


def requests_dir(home: Home) -> Path:
    return home.state / "requests"


class Service:
    def __init__(self, home: Home, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.home = home
        self.clock = clock
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.heartbeat = clock()
        self.ready = False
        self.lock = PidLock(home.state / "daemon.lock", "lifelong run")
        self.inbox = Inbox(home)
        self.notifier = Notifier()
        self.role = Role(home.config.registry.metadata, clock=clock)
        self.metrics = Metrics(home, in_progress=lambda: self.worker is not None and self.worker.is_alive(),
                               inbox=self.inbox, active=lambda: self.role.active)
        self.worker: threading.Thread | None = None
        self.child: Any = None
        self.standby = Standby(home.config.train.standby_seconds if home.config.train.num_processes == 1 else 0)
        self.tick = False  # a schedule tick is waiting for enough rows
        self.requests: list[dict[str, Any]] = []
        self.retry_at = 0.0
        self.port: int | None = None
        self._last_ping = 0.0

    # -- lifecycle --------------------------------------------------------------------------------
    def stop(self, *_args: object) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        self.lock.acquire(timeout=0)
        try:
            with StopSignals(self.stop):  # held through the cleanup: a second SIGTERM changes nothing
                return self._run()
        finally:
            self.lock.release()

    def _run(self) -> int:
        server = None
        try:
            requests_dir(self.home).mkdir(exist_ok=True)
            from daemon.home import open_registry

            # a remote object store that would let a version be overwritten is refused here (exit 2)
            open_registry(self.home, probe=True, recover=False).close()
            server = self._serve()
            while self._wait_for_lease():  # a standby until it holds the lease; again if it loses it
                try:
                    self._active()
                except (MetadataUnavailable, ArtifactStoreUnavailable) as exc:
                    if self.role.lease is None:
                        raise  # a daemon alone stops, as at start
                    log.error("taking over failed (%s); the lease is given back and tried for again", exc)
                    self.role.release()
                    self.stopping.wait(POLL)
            self.notifier.stopping()
            log.info("lifelong stopped")
            return 0
        finally:
            if server is not None:
                server.stop()
            self.role.release()

    def _wait_for_lease(self) -> bool:
        """As a standby: try for the lease every few seconds, answer requests by naming the active
        daemon. True once this daemon is active; False when it is stopping."""
        said, follower, followed = None, None, float("-inf")
        while not self.stopping.is_set():
            self._alive()
            if self.role.take():
                if follower is not None:
                    follower.join()
                return True
            if not self.ready and not self.home.config.failover.state:
                log.warning("standby without failover.state: should it take over, it trains only on what its own "
                            "row store holds; rows the active daemon took in stay in that daemon's home")
            self._now_ready()  # as a standby: serving, and trying for the lease
            if (follower is None or not follower.is_alive()) and self.clock() - followed >= FOLLOW_SECONDS:
                # a local, verified champion ready for the day this daemon takes over (and for serving)
                follower, followed = threading.Thread(target=self._follow_champion, name="follow", daemon=True), self.clock()
                follower.start()
            if self.role.holder != said:
                said = self.role.holder
                log.info("standby: %s is active", said or "no daemon", extra={"active_daemon": said})
            self._take_requests()
            if self.requests:
                self._answer(self.requests, {"decision": None, "reasons": [
                    f"this daemon is a standby; {self.role.holder or 'another daemon'} is active and runs updates"]})
                self.requests = []
            self._write_state()
            self.wake.wait(1.0)
            self.wake.clear()
        return False

    def _follow_champion(self) -> None:
        from daemon.home import open_registry
        from daemon.update.launcher import spawn_materializer

        try:
            with open_registry(self.home, recover=False, materializer=spawn_materializer) as registry:
                registry.sync_champion()
        except Exception as exc:  # tried again in FOLLOW_SECONDS
            log.warning("standby could not refresh registry/champion: %s", exc)

    def _active(self) -> None:
        """As the active daemon: recover, watch the inbox, update; until stopping or the lease is lost."""
        from daemon.home import open_registry
        from daemon.update.launcher import spawn_materializer

        observer = scheduler = None
        try:
            # recover leftovers of a crash before anything else (re-pointing the champion may materialise it)
            open_registry(self.home, materializer=spawn_materializer).close()
            settle_decided(self.home)
            scheduler = self._schedule()
            observer = start_watching(self.home, self.wake, self.inbox)
            self.standby.warm()  # an update soon after start-up (files already waiting, a test) starts warm
            self._now_ready()
            self._write_state()  # before the first pass, which may take long (a large file waiting)
            log.info("lifelong running", extra={"home": str(self.home.root), "inbox": str(self.home.inbox),
                                                "pid": os.getpid(), "metrics": self.home.config.metrics.bind,
                                                "role": self.role.name})
            self._loop()
        finally:  # stopping, the lease lost, or the registry out of reach: no update of ours goes on
            self._finish_update()
            self.standby.close()
            for part in (observer, scheduler):
                if part is not None:
                    part.stop() if part is observer else part.shutdown(wait=False)
            self.tick = False

    def _now_ready(self) -> None:
        """/readyz and systemd's READY=1: once serving as a standby, or once active and watching."""
        if not self.ready:
            self.ready = True
            self.notifier.ready()
            self._last_ping = 0.0  # the watchdog's first ping follows READY=1 at once, as systemd counts from there

    def _serve(self):  # type: ignore[no-untyped-def]
        from daemon.service.http import HealthServer

        host, port = self.home.config.metrics.host_port
        try:
            server = HealthServer(host, port, metrics=self.metrics.exposition, healthy=self.healthy,
                                  ready=lambda: self.ready and (self.role.active or self.role.error is None),
                                  standby=lambda: not self.role.active)
        except OSError as exc:
            raise LifelongError(f"cannot serve metrics on {self.home.config.metrics.bind}: {exc.strerror}") from None
        self.port = server.port
        return server.start()

    def _schedule(self):  # type: ignore[no-untyped-def]
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        schedule = self.home.config.schedule
        trigger = (CronTrigger.from_crontab(schedule.cron) if schedule.cron
                   else IntervalTrigger(seconds=max(schedule.interval, 1.0)))
        scheduler = BackgroundScheduler(timezone=timezone.utc)
        # coalesce + no misfire limit: a tick missed while busy or asleep runs late, once, never not at all
        job = scheduler.add_job(self._on_tick, trigger, coalesce=True, misfire_grace_time=None, max_instances=1)
        scheduler.start()
        self._job = job
        return scheduler

    def _on_tick(self) -> None:
        self.tick = True
        self.wake.set()

    def healthy(self) -> bool:
        return self.ready and self.clock() - self.heartbeat < HEARTBEAT_STALE

    # -- the loop ---------------------------------------------------------------------------------
    def _alive(self) -> None:
        """The main loop is making progress: the heartbeat (/healthz) and systemd's watchdog are fed
        only from its thread: here, once a round, and from long work it does (a large file)."""
        self.heartbeat = self.clock()
        if self.notifier.watchdog_interval and self.heartbeat - self._last_ping >= self.notifier.watchdog_interval:
            self.notifier.watchdog()  # a stuck loop stops the pings
            self._last_ping = self.heartbeat

    def _ingest_tick(self) -> None:
        """Called between blocks while a file is hashed, parsed or copied."""
        self._alive()
        if self.stopping.is_set():
            raise Stopping("the daemon is stopping")

    def _loop(self) -> None:
        rescan = self.home.config.inbox.rescan_seconds
        next_pass = self.clock()
        self.inbox.tick = self._ingest_tick
        while not self.stopping.is_set():
            self._alive()
            if not self.role.kept():
                log.error("the lease was lost (its database session ended); stepping down to standby")
                return
            if self.wake.is_set() or self.clock() >= next_pass:
                self.wake.clear()
                settle_wait = self._ingest_pass()
                next_pass = self.clock() + rescan
                if settle_wait is not None:
                    next_pass = min(next_pass, self.clock() + settle_wait + 0.05)
            self._take_requests()
            self._maybe_update()
            self.standby.expire()
            self._write_state()
            self.wake.wait(max(0.0, min(next_pass - self.clock(), 1.0)))

    def _ingest_pass(self) -> float | None:
        """One pass; a failure is logged and the loop carries on."""
        try:
            outcomes, wait = self.inbox.pass_once()
            if outcomes or wait is not None:  # a file landed or is settling: an update may follow
                self.standby.warm()
            return wait
        except Stopping:
            log.info("ingest pass stopped; the file it was reading stays in the inbox for the next start")
            return None
        except Exception:
            log.exception("ingest pass failed; retrying at the next rescan")
            return None

    def _take_requests(self) -> None:
        for path in sorted(requests_dir(self.home).glob("*.request.json")):
            try:
                request = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            path.unlink(missing_ok=True)
            request["id"] = path.name.removesuffix(".request.json")
            self.requests.append(request)

    def _maybe_update(self) -> None:
        if self.worker is not None and self.worker.is_alive():
            return
        if self.worker is not None:
            self.worker = None
            self.standby.warm()  # updates come in bursts: the next one starts warm
        reason = self._why_update()
        if reason is None:
            return
        self.tick = False
        waiting, self.requests = self.requests, []
        self.worker = threading.Thread(target=self._update, args=(reason, waiting), name="update", daemon=True)
        self.worker.start()

    def _why_update(self) -> str | None:
        schedule = self.home.config.schedule
        with Store(self.home.store_path) as store:
            undecided = store.undecided_batch()
            pending = store.counts(pending=True)
            oldest = store.oldest_pending()
        rows = pending["train"] + pending["eval"]
        if self.requests:
            if rows or undecided:
                return "requested"
            self._answer(self.requests, {"decision": None, "reasons": ["no pending rows"]})
            self.requests = []
        if self.clock() < self.retry_at:
            return None
        if undecided:
            return "resume"
        if rows >= max(schedule.min_new_rows, 1) and not self._has_champion():
            return "first model"  # nothing serves yet: no reason to wait for a tick
        if self.tick and rows >= max(schedule.min_new_rows, 1):
            return "schedule"
        if self.tick:
            self.tick = False  # not enough rows: wait for the next tick (or max_wait)
        if rows and oldest and _age(oldest) >= schedule.max_wait:
            return "max_wait"
        return None

    def _has_champion(self) -> bool:
        from daemon.home import open_registry

        with open_registry(self.home, recover=False) as registry:
            return registry.champion() is not None

    def _update(self, reason: str, waiting: list[dict[str, Any]]) -> None:
        from daemon.service.hooks import champion_hook
        from daemon.update.cycle import UpdateCycle
        from daemon.home import open_registry
        from daemon.update.launcher import TrainingInterrupted, spawn_materializer

        progress = self.home.state / "progress.json"
        started = time.monotonic()
        stage = {"train": started}

        seen: dict[str, Any] = {}  # the latest event of each kind but steps, for `update --wait` and operators

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "evaluating":
                stage["eval"] = time.monotonic()
            if event.get("event") != "step":
                seen[event.get("event", "?")] = {**event, "at": time.time()}  # `lifelong status`: elapsed
            atomic_write(progress, json.dumps({**event, "at": time.time(), "events": seen}))

        log.info("update cycle starting", extra={"reason": reason})
        try:
            with open_registry(self.home, recover=False, materializer=spawn_materializer,
                          on_switch=champion_hook(self.home.config.hooks.on_champion_change)) as registry:
                outcome = UpdateCycle(self.home, registry, on_event=on_event, standby=self.standby,
                                      on_child=lambda run: setattr(self, "child", run)).run()
        except TrainingInterrupted:
            log.info("update interrupted by shutdown; it resumes at the next start")
            self._answer(waiting, {"decision": None, "reasons": ["interrupted by shutdown; resumes at the next start"]})
            return
        except Exception as exc:  # the loop survives anything a cycle does
            log.exception("update cycle crashed")
            self._answer(waiting, {"decision": "failed", "reasons": [str(exc)]})
            self._backoff()
            return
        total = time.monotonic() - started
        evaluated = stage.get("eval")
        self.metrics.observe({"train": (evaluated or time.monotonic()) - stage["train"],
                              "eval": time.monotonic() - evaluated if evaluated else None, "total": total})
        if outcome.decision == "failed" and not outcome.gave_up:
            self._backoff(outcome.batch)
        elif outcome.skipped:
            self.retry_at = self.clock() + DISK_RETRY  # not every loop round: each check runs retention
        elif outcome.decision is not None:
            self.retry_at = 0.0  # decided, or given up for good: later batches go on a normal schedule
        self._answer(waiting, outcome.as_dict())

    def _backoff(self, batch: int | None = None) -> None:
        """Wait longer after each failed attempt of a batch (of any update when the cycle itself crashed)."""
        with Store(self.home.store_path) as store:
            failures = max(store.failed_attempts(batch) if batch else store.consecutive_failures(), 1)
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        self.retry_at = self.clock() + delay
        log.warning("update failed %s time(s) in a row (schedule.max_attempts %s); next try in %.0fs",
                    failures, self.home.config.schedule.max_attempts, delay, extra={"batch": batch})

    def _answer(self, waiting: list[dict[str, Any]], result: dict[str, Any]) -> None:
        for request in waiting:
            atomic_write(requests_dir(self.home) / f"{request['id']}.result.json", json.dumps(result, default=str))

    def _finish_update(self) -> None:
        """On stop: let the training child checkpoint, then wait for the cycle thread."""
        worker = self.worker
        if worker is None or not worker.is_alive():
            return
        if self.child is not None:
            self.child.terminate()
        worker.join(timeout=STOP_GRACE)

    def _write_state(self) -> None:
        job = getattr(self, "_job", None)
        next_run = job.next_run_time if job is not None else None
        state = {"pid": os.getpid(), "next_update": next_run.isoformat() if next_run else None,
                 "updating": self.worker is not None and self.worker.is_alive(), "metrics_port": self.port,
                 "standby": self.standby.alive, "role": self.role.name,
                 "active_daemon": self.role.holder if self.role.lease is not None else None}
        if state != getattr(self, "_last_state", None):
            atomic_write(self.home.state / "daemon.json", json.dumps(state))
            self._last_state = state


def _age(iso: str) -> float:
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (datetime.now(timezone.utc) - then).total_seconds()
