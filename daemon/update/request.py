"""`lifelong update`: hand an update request to the running daemon, or run the cycle here.

With a daemon, a request file is dropped in state/requests/ and, with --wait, its result file is
awaited while state/progress.json shows the training progress. Without one, this process takes
the daemon lock (so no daemon starts meanwhile), ingests what is in the inbox (a file dropped just
before asking for an update counts, as it would with a daemon watching) and runs the cycle itself.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import click

from daemon.home import Home
from daemon.ingest.store import Store
from daemon.service.loop import requests_dir
from registry.fsutil import atomic_write
from registry.lock import PidLock, holder_pid


INGEST_MAX_WAIT = 60.0  # seconds to wait for inbox files still being written (as `lifelong ingest`)


def request_update(home: Home, *, now: bool, wait: bool, as_json: bool) -> dict[str, Any]:
    pid = holder_pid(home.state / "daemon.lock")
    if pid is None:
        return _run_here(home, now=now, as_json=as_json)
    too_few = _too_few_rows(home, now=now, as_json=as_json)
    if too_few is not None:
        return too_few
    return _ask_daemon(home, pid, wait=wait, as_json=as_json)


def _too_few_rows(home: Home, *, now: bool, as_json: bool) -> dict[str, Any] | None:
    """The answer when fewer than schedule.min_new_rows rows wait (and no batch is undecided), unless --now."""
    with Store(home.store_path) as store:
        pending = store.counts(pending=True)
        undecided = store.undecided_batch()
    rows = pending["train"] + pending["eval"]
    minimum = home.config.schedule.min_new_rows
    if now or undecided or rows >= minimum:
        return None
    message = f"not enough new rows: {rows} < schedule.min_new_rows {minimum} (use --now to update anyway)"
    if not as_json:
        click.echo(message)
    return {"decision": None, "reasons": [message]}


def _ask_daemon(home: Home, pid: int, *, wait: bool, as_json: bool) -> dict[str, Any]:
    folder = requests_dir(home)
    folder.mkdir(exist_ok=True)
    request_id = uuid.uuid4().hex
    atomic_write(folder / f"{request_id}.request.json", json.dumps({"at": time.time()}))
    if not wait:
        if not as_json:
            click.echo(f"update requested; the daemon (pid {pid}) runs it next")
        return {"requested": True, "daemon": {"pid": pid}}
    result_path = folder / f"{request_id}.result.json"
    show = _Progress(enabled=not as_json and sys.stderr.isatty())
    seen = 0.0
    while not result_path.exists():
        if holder_pid(home.state / "daemon.lock") is None:
            raise click.ClickException("the daemon stopped before deciding the update")
        try:
            event = json.loads((home.state / "progress.json").read_text())
            if event.get("at", 0) > seen:
                seen = event["at"]
                show.event(event)
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    show.close()
    result = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    if not as_json:
        _print_decision(result)
    return result


def _run_here(home: Home, *, now: bool, as_json: bool) -> dict[str, Any]:
    from daemon.service.hooks import champion_hook
    from daemon.update.cycle import UpdateCycle
    from daemon.home import open_registry
    from daemon.update.launcher import spawn_materializer

    show = _Progress(enabled=not as_json and sys.stderr.isatty())
    lock = PidLock(home.state / "daemon.lock", "lifelong run").acquire(timeout=0)
    try:
        ingested = _ingest(home, as_json=as_json)
        too_few = _too_few_rows(home, now=now, as_json=as_json)
        if too_few is not None:
            return {**too_few, "ingested": ingested}
        with open_registry(home, on_switch=champion_hook(home.config.hooks.on_champion_change),
                           materializer=spawn_materializer) as registry:
            outcome = UpdateCycle(home, registry, on_event=show.event).run()
    finally:
        lock.release()
        show.close()
    result = {**outcome.as_dict(), "ingested": ingested}
    if not as_json:
        _print_decision(result)
    return result


def _ingest(home: Home, *, as_json: bool) -> list[dict[str, Any]]:
    """Ingest what is in the inbox now, as the daemon would have; what each file gave, also printed."""
    from daemon.ingest.inbox import Inbox
    from daemon.ingest.names import display

    inbox = Inbox(home)
    outcomes, unsettled = inbox.drain(max_wait=INGEST_MAX_WAIT)
    files = [{"file": display(o.name), "outcome": o.outcome, "reason": o.reason,
              "rows": {"train": o.rows_train, "eval": o.rows_eval, "rejected": o.rows_rejected}} for o in outcomes]
    if not as_json:
        for doc in files:
            detail = (f"reason {doc['reason']}" if doc["outcome"] == "quarantined" else
                      f"{doc['rows']['train']} train + {doc['rows']['eval']} eval rows")
            click.echo(f"ingested {doc['file']} ({doc['outcome']}): {detail}")
        for name in unsettled:
            click.echo(f"not ingested {display(name)}: {inbox.waiting.get(name, 'still being written')}")
        for name, entry in sorted(inbox.stuck.items()):
            click.echo(f"not ingested {display(name)}: {entry.message}")
    return files


def _print_decision(result: dict[str, Any]) -> None:
    decision = result.get("decision")
    if decision is None:
        click.echo("; ".join(result.get("reasons", [])) or "nothing to do")
        return
    click.echo(f"{decision}: {result.get('version') or '(no version)'} from batch {result.get('batch')}")
    for reason in result.get("reasons", []):
        click.echo(f"  - {reason}")


class _Progress:
    """Live step/loss/samples-per-second on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._live = None

    def event(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event.get("event")
        if kind == "step":
            line = (f"training: epoch {event.get('epoch')} step {event['step']}/{event.get('steps')} "
                    f"loss {event.get('loss'):.4f} {event.get('samples_per_second') or 0:.1f} samples/s")
        elif kind == "evaluating":
            line = "evaluating candidate and champion..."
        elif kind == "update_started":
            line = f"update of batch {event.get('batch')} started"
        else:
            return
        click.echo(f"\r\x1b[2K{line}", nl=False, err=True)
        self._live = True

    def close(self) -> None:
        if self._live:
            click.echo("", err=True)
