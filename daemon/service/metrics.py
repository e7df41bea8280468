"""Every Prometheus metric of lifelong, in one place (each listed in docs/reference.md, "Metrics").

State (champion, pending rows, totals, the last update's scores) is read at scrape time by a
collector from the row store and the registry, so it is right after a restart and after a CLI
rollback alike. Only the update-duration histogram is kept in the process. Nothing touches the
global default registry.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import __version__
from daemon.home import Home
from daemon.ingest.store import Store

STAGES = ("ingest_wait", "train", "eval", "total")
OUTCOMES = ("promoted", "rejected", "failed", "held")


def _timestamp(iso: str | None) -> float:
    if not iso:
        return 0.0
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


INGEST_ERRORS = ("internal_error", "permission_denied", "os_error")


class InboxState(Protocol):
    """What the running inbox knows that no file holds: entries it could not finish, failures."""

    stuck: Mapping[str, object]
    waiting: Mapping[str, str]
    errors: Mapping[str, int]


class StateCollector(Collector):
    def __init__(self, home: Home, in_progress: Callable[[], bool], bytes_ttl: float = 30.0,
                 inbox: InboxState | None = None, active: Callable[[], bool] = lambda: True) -> None:
        self.home = home
        self.active = active
        self.in_progress = in_progress
        self.inbox = inbox
        self._bytes: tuple[float, int] = (0.0, 0)
        self.bytes_ttl = bytes_ttl

    def collect(self) -> Iterator[Metric]:
        from daemon.home import open_registry

        build = GaugeMetricFamily("lifelong_build_info", "lifelong build", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        active = self.active()
        yield GaugeMetricFamily("lifelong_daemon_active", "1 on the daemon that holds the registry's lease (ingests "
                                "and trains), 0 on a standby", value=int(active))
        if not active:  # the rest describe the group's row store, which only the active opens
            return
        with Store(self.home.store_path) as store, open_registry(self.home, recover=False) as registry:
            files = store.file_outcomes()
            totals = store.counts(pending=False)
            pending = store.counts(pending=True)
            updates = store.update_counts()
            last = store.updates(limit=1)
            last_promoted = next((u for u in store.updates(limit=200) if u["decision"] == "promoted"), None)
            rejected_rows = store.rejected_rows()
            champion = registry.champion()
            record = registry.get(champion) if champion else None
            rollbacks = sum(1 for e in registry.audit() if e.action == "rollback")
            if time.monotonic() - self._bytes[0] > self.bytes_ttl:
                self._bytes = (time.monotonic(), registry.total_bytes())
            replay_rows = _replay_rows(registry.artifacts.local_path(champion) / "state" if champion else None)
            pruned = len(registry.pruned())
            kept = len(registry.versions()) - pruned

        info = GaugeMetricFamily("lifelong_champion_info", "the serving champion", labels=["version", "strategy", "base_model"])
        if record is not None:
            info.add_metric([record.version, record.strategy, self.home.config.model.base], 1)
        yield info
        counter = CounterMetricFamily("lifelong_inbox_files", "inbox files by outcome", labels=["outcome"])
        for outcome in ("accepted", "duplicate", "quarantined"):
            counter.add_metric([outcome], files[outcome])
        yield counter
        rows = CounterMetricFamily("lifelong_ingested_rows", "rows ingested by split", labels=["split"])
        for split in ("train", "eval"):
            rows.add_metric([split], totals[split])
        yield rows
        yield CounterMetricFamily("lifelong_rejected_rows", "invalid rows skipped or rejected", value=rejected_rows)
        yield GaugeMetricFamily("lifelong_pending_rows", "rows waiting for the next update", value=pending["train"] + pending["eval"])
        yield GaugeMetricFamily("lifelong_replay_buffer_rows", "rows in the champion's replay buffer", value=replay_rows)
        done = CounterMetricFamily("lifelong_updates", "update cycles by outcome", labels=["outcome"])
        for outcome in OUTCOMES:
            done.add_metric([outcome], updates[outcome])
        yield done
        summary = last[0]["summary"] if last else {}
        train = summary.get("train") or {}
        yield GaugeMetricFamily("lifelong_train_samples_per_second", "training throughput of the last update",
                                value=float(train.get("samples_per_second") or 0.0))
        scores = GaugeMetricFamily("lifelong_eval_score", "scores of the last update, in the gate's metric",
                                   labels=["model", "set"])
        metrics = summary.get("metrics") or {}
        for model in ("champion", "candidate"):
            for name in ("new", "old", "canary"):
                value = (metrics.get(model) or {}).get(name)
                if value is not None:
                    scores.add_metric([model, name], float(value))
        yield scores
        yield _entity_f1(last[0] if last else None)
        yield GaugeMetricFamily("lifelong_forgetting_max", "largest drop on an earlier batch in the last update",
                                value=float(metrics.get("forgetting_max") or 0.0))
        yield CounterMetricFamily("lifelong_rollbacks", "rollbacks of the champion", value=rollbacks)
        yield GaugeMetricFamily("lifelong_last_update_timestamp_seconds", "when the last update finished",
                                value=_timestamp(last[0]["finished_at"]) if last else 0.0)
        yield GaugeMetricFamily("lifelong_last_promotion_timestamp_seconds", "when the last promotion by an update happened",
                                value=_timestamp(last_promoted["finished_at"]) if last_promoted else 0.0)
        yield GaugeMetricFamily("lifelong_disk_free_bytes", "free bytes on the home's file system",
                                value=shutil.disk_usage(self.home.root).free)
        versions = GaugeMetricFamily("lifelong_versions", "versions by whether retention kept their weights",
                                     labels=["state"])
        versions.add_metric(["kept"], kept)
        versions.add_metric(["pruned"], pruned)
        yield versions
        yield GaugeMetricFamily("lifelong_registry_bytes", "bytes under the registry", value=self._bytes[1])
        from registry.retry import COUNTS  # this process's calls to a remote artifact store (registry.artifacts)
        yield CounterMetricFamily("lifelong_artifact_store_retries", "calls to the artifact store tried again after "
                                  "a transient failure (connection, timeout, 5xx), with backoff", value=COUNTS.retries)
        yield CounterMetricFamily("lifelong_artifact_store_failures", "artifact store operations that failed after "
                                  "every retry", value=COUNTS.failures)
        yield GaugeMetricFamily("lifelong_update_in_progress", "1 while an update runs", value=int(self.in_progress()))
        errors = CounterMetricFamily("lifelong_ingest_errors", "inbox entries that failed to ingest or to move, by reason",
                                     labels=["reason"])
        for reason in INGEST_ERRORS:
            errors.add_metric([reason], self.inbox.errors.get(reason, 0) if self.inbox else 0)
        yield errors
        yield GaugeMetricFamily("lifelong_inbox_stuck_files", "inbox entries left in place after a failure, retried with backoff",
                                value=len(self.inbox.stuck) if self.inbox else 0)
        yield GaugeMetricFamily("lifelong_inbox_waiting_files", "inbox files not taken yet: other hard links, or a writer has them open",
                                value=len(self.inbox.waiting) if self.inbox else 0)


def _entity_f1(last: dict | None) -> GaugeMetricFamily:
    """NER: the last update's candidate's entity F1 per entity type on the gate's sets (none for other tasks)."""
    from daemon.update.tagging import by_gate_set

    family = GaugeMetricFamily("lifelong_entity_f1", "entity F1 per entity type of the last update's candidate "
                               "(token_classification)", labels=["set", "type"])
    summary = (last or {}).get("summary") or {}
    per_set = ((summary.get("metrics") or {}).get("candidate") or {}).get("per_type")
    if last and isinstance(per_set, dict):
        for name, table in by_gate_set(per_set, str(last["batch"])).items():
            for kind, row in table.items():
                family.add_metric([name, kind], float(row["f1"]))
    return family


def _replay_rows(state: Path | None) -> int:
    if state is None or not (state / "replay.arrow").is_file():
        return 0
    import pyarrow as pa

    with pa.memory_map(str(state / "replay.arrow")) as source:
        return pa.ipc.open_file(source).read_all().num_rows


class Metrics:
    def __init__(self, home: Home, in_progress: Callable[[], bool] = lambda: False,
                 inbox: InboxState | None = None, active: Callable[[], bool] = lambda: True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.duration = Histogram("lifelong_update_duration_seconds", "update cycle time by stage", ["stage"],
                                  registry=self.registry,
                                  buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")))
        for stage in STAGES:
            self.duration.labels(stage=stage)  # present at zero from the start
        self.registry.register(StateCollector(home, in_progress, inbox=inbox, active=active))

    def observe(self, durations: dict[str, float]) -> None:
        for stage, seconds in durations.items():
            if stage in STAGES and seconds is not None:
                self.duration.labels(stage=stage).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
