"""One update cycle, top to bottom:

    close the pending rows into a batch -> build the training set and spec -> train in the child,
    which also scores candidate and champion side by side (strategies/evaluate.py) -> judge: the
    gate over those scores (daemon/update/gate.py) -> register the version -> conclude: promote,
    reject or hold, and record the decision.

A failed run is recorded as `failed` and its batch retried later, until `schedule.max_attempts`
failures give the batch up for good: later batches go on and its train rows join the replay pool.
An interrupted run (SIGTERM) leaves its checkpoint and batch for the next start to resume.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from daemon.home import Home
from daemon.ingest import formats
from daemon.ingest.ingestor import utcnow
from daemon.ingest.rows import LabelSet, Validator
from daemon.ingest.store import Store
from daemon.ingest.chat import ChatValidator
from daemon.ingest.tagged import TaggedValidator
from daemon.update.gate import GateResult, Scores, decide, majority_share, worse
from daemon.update import executors
from daemon.update.launcher import ChildRun, Standby, TrainingInterrupted, train_spec, write_rows
from daemon.update.breakdown import per_label
from daemon.update.tagging import per_type
from registry.registry import Registry
from strategies import embedded
from strategies.spec import DataPaths, TrainSpec
from strategies.tasks import TASKS, bio

log = logging.getLogger(__name__)
Event = Callable[[dict[str, Any]], None]


@dataclass
class Outcome:
    batch: int | None
    decision: str | None  # promoted | rejected | failed | held | None (nothing to do)
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    gave_up: bool = False  # failed for the schedule.max_attempts-th time: the batch is not retried
    skipped: bool = False  # not started: too little free disk (registry.min_free_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "decision": self.decision, "version": self.version, "reasons": self.reasons,
                **self.summary}


class UpdateCycle:
    def __init__(self, home: Home, registry: Registry, *, on_event: Event | None = None,
                 on_child: Callable[[ChildRun | None], None] | None = None, standby: Standby | None = None,
                 executor: executors.Executor | None = None) -> None:
        self.home = home
        self.executor = executor or executors.create(home.config)  # train.executor: where training runs
        self.standby = standby
        self.child_warm = False  # the last run was handed to the standby child
        self.config = home.config
        self.registry = registry
        self.on_event = on_event or (lambda event: None)
        self.on_child = on_child or (lambda run: None)

    def run(self) -> Outcome:
        started, clock = utcnow(), time.monotonic()
        short = self.disk_short()
        if short is not None:  # the pending rows stay pending for a later try
            return Outcome(batch=None, decision=None, reasons=[short], skipped=True)
        with Store(self.home.store_path) as store:
            batch = self.close_batch(store)
            if batch is None:
                return Outcome(batch=None, decision=None, reasons=["no pending rows"])
            log.info("update started", extra={"batch": batch})
            self.on_event({"event": "update_started", "batch": batch})
            try:
                spec = self.build_spec(store, batch)
                child_started = time.monotonic()
                results = self.train(spec)
                child_seconds = time.monotonic() - child_started
                gate, metrics = self.judge(store, batch, spec, results)
                version = self.register(batch, spec, results, metrics)
                decision = self.conclude(version, gate, metrics)
                outcome = Outcome(batch=batch, decision=decision, version=version, reasons=gate.reasons,
                                  summary={"metrics": metrics, "train": results["train"],
                                           "eval_seconds": results.get("eval_seconds"),
                                           "eval_reused": results.get("eval_reused", []),
                                           "child_seconds": round(child_seconds, 3), "child_warm": self.child_warm,
                                           "gate_failures": gate.failures})
                shutil.rmtree(self.workdir(batch), ignore_errors=True)
            except TrainingInterrupted:
                raise
            except Exception as exc:  # every failure is a recorded `failed`, never a promotion
                log.exception("update failed", extra={"batch": batch})
                outcome = self.failed(store, batch, exc)
            outcome.summary["seconds"] = round(time.monotonic() - clock, 3)
            store.record_update(batch_id=batch, started_at=started, finished_at=utcnow(), version=outcome.version,
                                decision=outcome.decision, reasons=outcome.reasons, summary=outcome.summary)  # type: ignore[arg-type]
        if outcome.version is not None:
            self.retain()
        log.info("update %s", outcome.decision, extra={"batch": batch, "version": outcome.version,
                                                        "reasons": outcome.reasons})
        self.on_event({"event": "decision", **outcome.as_dict()})
        return outcome

    # -- disk -------------------------------------------------------------------------------------
    def retain(self) -> None:
        """Apply registry.keep_versions (the registry logs what it pruned); a failure never fails an update."""
        try:
            self.registry.gc(self.config.registry.keep_versions)
        except Exception:
            log.exception("retention failed; old versions keep their weights until the next try")

    def disk_short(self) -> str | None:
        """Why this update must wait, when it would leave less than registry.min_free_bytes free on the
        home's file system; retention makes room first. The update writes about a version of the
        champion's size (the base model's for a first one); the margin covers its checkpoint."""
        limit = self.config.registry.min_free_bytes
        champion = self.registry.champion()
        base = Path(self.config.model.base)
        need = self.registry.disk_bytes(champion) if champion else (
            sum(p.stat().st_size for p in base.rglob("*") if p.is_file()) if base.is_dir() else 0)
        free = shutil.disk_usage(self.home.root).free
        if free - need < limit:
            self.retain()
            free = shutil.disk_usage(self.home.root).free
        if free - need >= limit:
            return None
        reason = (f"skipped: {free} bytes free on the home's file system, the update writes about {need}, "
                  f"registry.min_free_bytes = {limit}")
        log.warning("update %s", reason, extra={"free_bytes": free, "min_free_bytes": limit})
        return reason

    # -- the steps --------------------------------------------------------------------------------
    def close_batch(self, store: Store) -> int | None:
        """The undecided batch (a retry or resume), else the pending rows closed into a new one."""
        return store.undecided_batch() or store.close_batch(utcnow())

    def failed(self, store: Store, batch: int, exc: Exception) -> Outcome:
        """A failed attempt; the `schedule.max_attempts`-th failure of a batch gives it up for good,
        so an update that can never succeed (out of memory on every try) stops blocking the rest."""
        attempt = store.failed_attempts(batch) + 1
        gave_up = attempt >= self.config.schedule.max_attempts
        if gave_up:
            log.error("update of batch %s failed %s times: given up; later batches go on and its train rows"
                      " join the replay pool", batch, attempt, extra={"batch": batch, "error": str(exc)})
            shutil.rmtree(self.workdir(batch), ignore_errors=True)  # its checkpoint is never resumed
            self.executor.forget(batch)  # nor a remote run's, in the store
        return Outcome(batch=batch, decision="failed", reasons=[str(exc)], gave_up=gave_up,
                       summary={"error": type(exc).__name__, "attempt": attempt, "gave_up": gave_up})

    def workdir(self, batch: int) -> Path:
        return self.home.state / "work" / f"batch-{batch:06d}"

    @property
    def tagged(self) -> bool:
        """Token classification: the store's labels are entity types, the model's are their BIO tags."""
        return self.config.model.task == "token_classification"

    @property
    def columns(self) -> tuple[str, ...]:
        return TASKS[self.config.model.task].columns

    def labels(self, store: Store) -> list[str]:
        """The model's labels: the store's (or inbox.labels), as BIO tags for token classification."""
        fixed = [str(label) for label in self.config.inbox.labels]
        names = fixed or store.labels()
        return bio.tag_labels(names) if self.tagged else names

    def build_spec(self, store: Store, batch: int) -> TrainSpec:
        """The batch's training set and held-out sets as Arrow files, and the spec naming them
        (written to the work folder as spec.json for the child)."""
        work = self.workdir(batch)
        data = work / "data"
        data.mkdir(parents=True, exist_ok=True)
        for leftover in ("out", "serving"):
            shutil.rmtree(work / leftover, ignore_errors=True)  # a retry writes them afresh
        champion = self.registry.champion()
        champion_dir = self.registry.model_dir(champion) if champion else None  # verified before use
        # with no champion yet, a first model learns from every batch so far: rows of batches whose
        # first-model candidates were rejected (or failed) would otherwise never be trained on
        batches = store.batches()
        given_up = {entry["batch"] for entry in store.given_up()}
        learn = ([b["batch"] for b in batches if b["batch"] <= batch and b["batch"] not in given_up]
                 if champion is None else [batch])
        columns = self.columns
        train_rows = write_rows(data / "train.arrow", (row for b in learn for row in store.iter_rows(b, "train", columns)),
                                columns)
        # A batch given up after `schedule.max_attempts` failures is not trained on again at full
        # weight, first model or not: whatever made its training fail (an oversized or poisoned
        # batch, rows that break the loss) would fail the update after it too. Its train rows are
        # offered to the replay pool instead, which keeps a bounded, balanced share of them and mixes
        # them in at `replay.ratio`. Every update offers the batches given up since the champion's
        # own batch, so a rejected candidate loses them to no one; once a version trained after them
        # is champion, its buffer holds them. (Without replay no earlier rows are revisited at all.)
        since = self._trained_batch(champion)
        set_aside = sorted(b for b in given_up if since < b < batch)
        set_aside_rows = write_rows(data / "set_aside.arrow",
                                    (row for b in set_aside for row in store.iter_rows(b, "train", columns)), columns)
        # Held-out rows of a given-up batch are still scored as an earlier batch: its rows reach the
        # model through replay, and the gate's forgetting check (candidate and champion on the same
        # rows) guards them like any data the service was given.
        evals, rows = {}, {}
        for earlier in batches:
            if earlier["batch"] > batch:
                continue
            key = str(earlier["batch"])
            rows[key] = write_rows(data / f"eval-{key}.arrow", store.iter_rows(earlier["batch"], "eval", columns), columns)
            evals[key] = str(data / f"eval-{key}.arrow")
        if self.config.gate.canary:
            rows["canary"] = write_rows(data / "canary.arrow", self._canary_rows(store), columns)
            evals["canary"] = str(data / "canary.arrow")
        paths = DataPaths(train=str(data / "train.arrow"), train_rows=train_rows, eval=evals, eval_rows=rows,
                          set_aside=str(data / "set_aside.arrow"), set_aside_rows=set_aside_rows,
                          set_aside_batches=set_aside)
        spec = train_spec(self.config, work, batch=batch, labels=self.labels(store), data=paths, parent=champion,
                          parent_model=champion_dir,
                          base=None if champion else embedded.local_base(self.config.model.base, self.home.models),
                          parent_files=self.registry.artifacts.local_path(champion) if champion else None,
                          old_label_count=len(self.registry.get(champion).info.get("labels", [])) if champion else 0)
        spec.write(self.spec_path(batch))
        return spec

    def spec_path(self, batch: int) -> Path:
        return self.workdir(batch) / "spec.json"

    def _trained_batch(self, champion: str | None) -> int:
        """The batch the champion was trained on (0 with no champion, or one registered by hand)."""
        if champion is None:
            return 0
        data = self.registry.get(champion).info.get("data")
        return int(data.get("experience") or 0) if isinstance(data, dict) else 0

    def _canary_rows(self, store: Store) -> list[tuple]:
        path = Path(self.config.gate.canary)
        path = path if path.is_absolute() else self.home.root / path
        if self.tagged:  # sentences of known entity types only, as (tokens, tags)
            types = LabelSet.of(bio.entity_types(self.labels(store)), bio.entity_types(self.labels(store)))
            tagged = TaggedValidator(types, 0.0)
            return [(row[1], row[2]) for chunk in formats.read(path, self.config.inbox.max_file_bytes, required=formats.TAGGED)
                    for line, record in zip(chunk.lines, chunk.records)
                    if isinstance(record, dict) and isinstance(row := tagged(line, record), tuple)]
        if not TASKS[self.config.model.task].labelled:  # causal_lm: prompts and completions, or chats
            chats = ChatValidator(LabelSet(), 0.0)
            return [(row[1], row[2]) for chunk in formats.read(path, self.config.inbox.max_file_bytes, required=formats.CHAT)
                    for line, record in zip(chunk.lines, chunk.records)
                    if isinstance(record, dict) and isinstance(row := chats(line, record), tuple)]
        validate = Validator(LabelSet.of(self.labels(store)), 0.0)
        rows = []
        for chunk in formats.read(path, self.config.inbox.max_file_bytes):
            for line, record in zip(chunk.lines, chunk.records):
                row = validate(line, record) if isinstance(record, dict) else None
                if isinstance(row, tuple) and row[1] in validate.labels.known:
                    rows.append((row[2], row[1]))
        return rows

    def train(self, spec: TrainSpec) -> dict[str, Any]:
        run = self.executor.start(self.spec_path(spec.batch), self.on_event, self.standby)
        self.child_warm = run.warm
        self.on_child(run)
        try:
            return run.wait()
        finally:
            self.on_child(None)

    def judge(self, store: Store, batch: int, spec: TrainSpec, results: dict[str, Any]) -> tuple[GateResult, dict]:
        """The gate's verdict on the child's scores, and the metrics recorded with the decision (score
        tables in the gate's metric, the batch's floor, changed rows, the accuracy matrix)."""
        metric = self.config.gate.metric
        rows = dict(spec.data.eval_rows)
        new = str(batch)

        def table(who: str) -> Scores | None:
            found = results["scores"].get(who)
            if found is None:
                return None
            per = {k: v.get(metric) for k, v in found.items() if k != "canary"}
            canary = found.get("canary", {}).get(metric) if "canary" in found else None
            return Scores(per_experience=per, canary=canary)

        candidate, champion = table("candidate"), table("champion")
        first_against_base = stops = None
        if not TASKS[self.config.model.task].labelled:  # causal_lm: no labels, no majority class
            baseline, batch_labels, model_labels = None, 0, 0
            first_against_base = spec.parent is None and champion is not None  # the child scored the base model
            stops = {who: {key: sum(int(figures.get(key) or 0) for name, figures in found.items() if name != "canary")
                           for key in ("generated", "stopped")}
                     for who, found in results["scores"].items()}
        elif self.tagged:  # no majority class to beat: the floor is the gate's "better than nothing" (F1 > 0)
            baseline = None
            batch_labels = len({kind for _, tags in store.iter_rows(batch, "eval", self.columns)
                                for kind, _, _ in bio.spans(tags)})
            model_labels = len(bio.entity_types(spec.labels))
        else:
            eval_labels = [label for _, label in store.iter_rows(batch, "eval")]
            baseline = majority_share(eval_labels)
            batch_labels, model_labels = len(set(eval_labels)), len(spec.labels)
        paired = results.get("paired") or {}
        entities = ({k: int(v["entities"]) for k, v in results["scores"].get("candidate", {}).items()
                     if k != "canary" and v.get("entities") is not None} if self.tagged else None)
        gate = decide(new=new, candidate=candidate, champion=champion, rows=rows, config=self.config.gate,  # type: ignore[arg-type]
                      baseline=baseline, canary_rows=rows.get("canary", 0), paired=paired,
                      batch_labels=batch_labels, model_labels=model_labels,
                      first_against_base=bool(first_against_base), stops=stops, entities=entities)
        metrics = {"candidate": _summary(candidate, new, rows), "champion": _summary(champion, new, rows) if champion else None,
                   "baseline": baseline, "batch_labels": batch_labels, "model_labels": model_labels,
                   "metric": metric, "rows": rows, "paired": paired}
        if entities is not None:  # the sets' sizes the gate judged on, for `lifelong promote` to re-check with
            metrics["entities"] = entities
        if stops is not None:  # recorded for `lifelong promote` to re-check the gate on
            metrics.update(first_against_base=first_against_base, stops=stops)
            for who in ("candidate", "champion"):  # every held-out figure per set (exact_match beside the loss)
                if metrics[who]:
                    metrics[who]["figures"] = results["scores"].get(who, {})
        if self.tagged and metrics["candidate"]:  # shown by `lifelong show --json`
            metrics["candidate"]["per_type"] = per_type(spec)
        elif metrics["candidate"]:
            metrics["candidate"]["per_label"] = per_label(spec)
        metrics["forgetting_max"] = _forgetting_max(candidate, champion, new, metric)  # type: ignore[arg-type]
        metrics["accuracy_matrix"] = self._matrix(metrics["candidate"]["per_experience"])
        return gate, metrics

    def _matrix(self, latest: dict[str, float | None]) -> dict[str, Any]:
        """Rows: versions in order (then this candidate); columns: batches; cells: the score then."""
        rows, versions = [], []
        for record in self.registry.versions():
            decision = self.registry.decision_record(record.version)
            per = ((decision.metrics or {}).get("candidate") or {}).get("per_experience") if decision else None
            if per is not None:
                versions.append(record.version)
                rows.append(per)
        versions.append("candidate")
        rows.append(latest)
        batches = sorted({k for row in rows for k in row}, key=int)
        return {"versions": versions, "batches": batches, "values": [[row.get(b) for b in batches] for row in rows]}

    def register(self, batch: int, spec: TrainSpec, results: dict[str, Any], metrics: dict[str, Any]) -> str:
        with Store(self.home.store_path) as store:
            files = store.batch_files(batch)
        info = {"labels": spec.labels, "config": self.config.dump(), "train": results["train"],
                "data": {"experience": batch, "train_rows": spec.data.train_rows,
                         "eval_rows": spec.data.eval_rows.get(str(batch), 0), "files": files}}
        serving = Path(spec.serving)
        record = self.registry.create_version(Path(spec.out), parent=spec.parent, strategy=spec.strategy.name,
                                              info=info, serving=serving if serving.is_dir() else None)
        return record.version

    def conclude(self, version: str, gate: GateResult, metrics: dict[str, Any]) -> str:
        """Promote (the gate passed and nothing is pinned), hold (passed while pinned) or reject; recorded."""
        if not gate.passed:
            decision = "rejected"
        elif self.registry.pinned():
            decision = "held"
        else:
            decision = "promoted"
        if decision == "promoted":  # the decision and the switch in one transaction: both or neither
            self.registry.promote(version, actor="daemon", reason="; ".join(gate.reasons),
                                  decided=(gate.as_dict(), metrics))
        else:
            self.registry.record_decision(version, decision, gate=gate.as_dict(), metrics=metrics)
        return decision


def _summary(scores: Scores | None, new: str, rows: dict[str, int]) -> dict[str, Any]:
    if scores is None:
        return {}
    old = [(scores.per_experience[k], rows.get(k, 0)) for k in scores.per_experience
           if k != new and scores.per_experience[k] is not None]
    total = sum(n for _, n in old)
    return {"new": scores.per_experience.get(new), "old": sum(s * n for s, n in old) / total if total else None,
            "per_experience": scores.per_experience, "canary": scores.canary}


def _forgetting_max(candidate: Scores, champion: Scores | None, new: str, metric: str) -> float | None:
    """The largest worsening on an earlier batch, in the metric's units (a rise, for a loss)."""
    if champion is None:
        return None
    drops = [worse(metric, champion.per_experience[k], candidate.per_experience[k]) for k in candidate.per_experience
             if k != new and candidate.per_experience[k] is not None and champion.per_experience.get(k) is not None]
    return max(drops) if drops else None
