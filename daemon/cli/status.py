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
    return {
        "home": str(home.root),
        "champion": champion,
        "pinned": pinned,
        "rows_skipped": rows_skipped,  # a standby's status: the row figures are the active daemon's to show
        "pending_rows": pending,
        "rows_total": totals,
        "labels": labels,
        "last_update": ({"version": last[0]["version"], "decision": last[0]["decision"],
                         "finished_at": last[0]["finished_at"], "reasons": last[0]["reasons"]} if last else None),
        "next_update": daemon_state.get("next_update") if pid else None,
        "failed_for_good": given_up,  # batches given up after schedule.max_attempts failures, newest first
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
    last_text = f"{last['version']} {last['decision']} at {last['finished_at']}" if last else "none yet"
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
        reason = " ".join(newest["last_error"].split())
        reason = reason if len(reason) <= 64 else reason[:63] + "…"
        lines.append(f"failed       batch {newest['batch']} gave up after {newest['attempts']} attempts: {reason}"
                     + (f" (and {earlier} earlier)" if earlier else ""))
    return "\n".join(lines)
