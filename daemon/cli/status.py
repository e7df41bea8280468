"""`lifelong status`: one document describing a home, read without disturbing the daemon."""

from __future__ import annotations

from typing import Any

from daemon.home import Home
from registry.lock import holder_pid
from daemon.ingest.store import Store


def collect(home: Home) -> dict[str, Any]:
    pid = holder_pid(home.state / "daemon.lock")
    daemon_state = _daemon_state(home) if pid else {}
    role = daemon_state.get("role", "active") if pid else None
    rows_skipped = role == "standby" and bool(home.config.failover.state)
    if rows_skipped:
        # the shared row store is the active daemon's, maybe on another host: SQLite's WAL is shared
        # by one host at a time, so a standby's status leaves it alone
        pending = totals = {"train": 0, "eval": 0}
        labels, files, rejected_rows, oldest, last, given_up = [], {"accepted": 0, "duplicate": 0, "quarantined": 0}, 0, None, [], []
    else:
        with Store(home.store_path) as store:
            pending = store.counts(pending=True)
            totals = store.counts(pending=False)
            labels = store.labels()
            files = store.file_outcomes()
            rejected_rows = store.rejected_rows()
            oldest = store.oldest_pending()
            last = store.updates(limit=1)
            given_up = store.given_up()
    from daemon.home import open_registry

    with open_registry(home, recover=False) as registry:
        champion = registry.champion()
        pinned = registry.pinned()
        audit = [entry.as_dict() for entry in registry.audit()[:20]]
        versions = _versions(registry)
    updating = bool(pid and daemon_state.get("updating"))
    return {
        "home": str(home.root),
        "champion": champion,
        "pinned": pinned,
        "rows_skipped": rows_skipped,  # a standby's status: the row figures are the active daemon's to show
        "pending_rows": pending,
        "rows_total": totals,
        "labels": labels,
        "last_update": ({"version": last[0]["version"], "decision": last[0]["decision"],
                         "finished_at": last[0]["finished_at"], "reasons": last[0]["reasons"],
                         # the reasons that failed (a rejection's why; the rest are the checks that passed)
                         "failures": last[0]["summary"].get("gate_failures", [])} if last else None),
        "next_update": daemon_state.get("next_update") if pid else None,
        "failed_for_good": given_up,  # batches given up after schedule.max_attempts failures, newest first
        "versions": versions,
        "update_in_progress": _in_progress(home) if updating else None,
        "daemon": {"pid": pid, "updating": daemon_state.get("updating", False),
                   "metrics_port": daemon_state.get("metrics_port"),
                   "standby": daemon_state.get("standby", False),  # a warm training child
                   "role": role, "active_daemon": daemon_state.get("active_daemon")} if pid else None,
        "audit": audit,
        "inbox": {"path": str(home.inbox), "files": files, "rejected_rows": rejected_rows, "oldest_pending": oldest,
                  **_entries(home, pid)},
        "strategy": home.config.strategy.name,
        "base_model": home.config.model.base,
    }


def _versions(registry: Any) -> dict[str, int]:
    """How many versions there are, by decision, and how many retention pruned (their weights gone)."""
    counts = {"total": 0, "promoted": 0, "rejected": 0, "held": 0, "failed": 0, "rolled_back": 0, "pruned": 0}
    pruned = registry.pruned()
    for record in registry.versions():
        counts["total"] += 1
        decision = registry.decision(record.version)
        if decision in counts:
            counts[decision] += 1
        counts["pruned"] += record.version in pruned
    return counts


def _in_progress(home: Home) -> dict[str, Any] | None:
    """The running update from the daemon's state/progress.json: batch, stage, step of steps,
    samples/s and seconds since it started; None when the file is unreadable."""
    import json
    import time

    try:
        progress = json.loads((home.state / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    events = progress.get("events") or {}
    started = events.get("update_started") or {}
    kind = progress.get("event")
    stage = ("evaluating" if kind == "evaluating" else "judging" if kind == "done" else
             "training" if kind in ("step", "epoch", "validation", "resumed", "lr_search", "lr_chosen") else "starting")
    step = progress if progress.get("event") == "step" else {}
    return {"batch": started.get("batch"), "stage": stage, "step": step.get("step"), "steps": step.get("steps"),
            "epoch": step.get("epoch"), "samples_per_second": step.get("samples_per_second"),
            "elapsed_seconds": round(time.time() - started["at"], 1) if "at" in started else None}


def _entries(home: Home, pid: int | None) -> dict[str, list[dict[str, Any]]]:
    """Inbox entries the running daemon could not ingest or quarantine ("stuck"), and those it leaves
    until they are alone ("waiting"): names already escaped."""
    import json

    found = {"stuck": [], "waiting": []}
    if pid:
        try:
            found.update(json.loads((home.state / "inbox-entries.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    return found


def _daemon_state(home: Home) -> dict[str, Any]:
    import json

    try:
        return json.loads((home.state / "daemon.json").read_text())
    except (OSError, ValueError):
        return {}


def render(doc: dict[str, Any]) -> str:
    pending, totals = doc["pending_rows"], doc["rows_total"]
    daemon = f"running (pid {doc['daemon']['pid']})" if doc["daemon"] else "not running"
    if doc["daemon"] and doc["daemon"].get("role") == "standby":
        daemon += f", standby: {doc['daemon'].get('active_daemon') or 'no daemon'} is active"
        daemon += " (row figures: lifelong status on its host)" if doc.get("rows_skipped") else ""
    if doc["daemon"] and doc["daemon"].get("standby"):
        daemon += ", a training child on standby"
    last = doc["last_update"]
    last_text = f"{last['version'] or '(no version)'} {last['decision']} at {last['finished_at']}" if last else "none yet"
    if last and last["decision"] in ("rejected", "failed") and (last.get("failures") or last.get("reasons")):
        last_text += f": {_short((last.get('failures') or last['reasons'])[0], 90)}"
    lines = [
        f"home         {doc['home']}",
        f"daemon       {daemon}",
        f"champion     {doc['champion'] or 'none yet'}{'  (pinned: automatic promotion paused)' if doc['pinned'] else ''}",
        f"strategy     {doc['strategy']} on {doc['base_model']}",
        f"pending rows {pending['train']} train, {pending['eval']} eval",
        f"total rows   {totals['train']} train, {totals['eval']} eval",
        f"labels       {', '.join(doc['labels']) or 'none yet'}",
        f"files        {doc['inbox']['files']['accepted']} accepted, {doc['inbox']['files']['duplicate']} duplicate,"
        f" {doc['inbox']['files']['quarantined']} quarantined ({doc['inbox']['rejected_rows']} rows skipped)",
        f"versions     {_versions_text(doc['versions'])}",
        *([f"updating     {_progress_text(doc['update_in_progress'])}"] if doc["daemon"] and doc["daemon"]["updating"] else []),
        f"last update  {last_text}",
        f"next update  {doc['next_update'] or 'not scheduled'}",
    ]
    stuck, waiting = doc["inbox"]["stuck"], doc["inbox"]["waiting"]
    if stuck:
        first = stuck[0]
        lines.append(f"stuck files  {len(stuck)} left in the inbox after failures, e.g. {first['file']}: "
                     f"{first['message'][:80]} (retried with backoff)")
    if waiting:
        first = waiting[0]
        lines.append(f"waiting      {len(waiting)} not taken yet, e.g. {first['file']}: {first['why']}")
    if doc["failed_for_good"]:
        newest, earlier = doc["failed_for_good"][0], len(doc["failed_for_good"]) - 1
        reason = _short(newest["last_error"], 64)
        lines.append(f"failed       batch {newest['batch']} gave up after {newest['attempts']} attempts: {reason}"
                     + (f" (and {earlier} earlier)" if earlier else ""))
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _versions_text(counts: dict[str, int]) -> str:
    if not counts["total"]:
        return "none yet"
    parts = [f"{counts[k]} {k.replace('_', ' ')}" for k in ("promoted", "rejected", "held", "failed", "rolled_back")
             if counts[k]]
    pruned = f"; weights of {counts['pruned']} pruned by retention" if counts["pruned"] else ""
    return f"{counts['total']} ({', '.join(parts)}){pruned}"


def _progress_text(progress: dict[str, Any] | None) -> str:
    if progress is None:
        return "an update is running"
    batch = f"batch {progress['batch']}" if progress["batch"] is not None else "an update"
    text = f"{batch}: {progress['stage']}"
    if progress["step"] is not None:
        text += f", step {progress['step']} of {progress['steps']}"
    if progress["samples_per_second"]:
        text += f", {progress['samples_per_second']:.1f} samples/s"
    if progress["elapsed_seconds"] is not None:
        minutes, seconds = divmod(int(progress["elapsed_seconds"]), 60)
        text += f", {minutes}:{seconds:02d} elapsed"
    return text
