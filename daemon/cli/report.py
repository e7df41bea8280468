"""`lifelong report`: one self-contained HTML page about a home's versions (every plot embedded as
a PNG data URI, no script, no network), made from the registry alone, so it works while the daemon
runs. The figures are drawn by plots.py (matplotlib, the `report` extra)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry.errors import UsageError
from registry.fsutil import atomic_write
from registry.registry import Registry

EXTRA = "pip install 'lifelong[report]'"
# (id, title, what it shows): every figure of the page, in order; the test checks each one is there
FIGURES = (
    ("scores", "Scores of every version", "Each candidate's score on the newest batch's held-out rows (new) and on "
     "all earlier batches' (old), in the gate's metric, marked by the gate's decision."),
    ("matrix", "Accuracy matrix", "Row: a version; column: a batch's held-out rows; cell: that version's score "
     "there when it was judged. The row label says the gate's decision."),
    ("forgetting", "Forgetting per batch", "For each update, how far the candidate fell below the champion of the "
     "day on each earlier batch (above zero: forgotten); the dashed line is gate.max_forgetting."),
    ("training", "Training per update", "Samples the candidate trained on (replayed rows included) and the "
     "training time of each update."),
    ("champion", "Champion history", "Which version served when: promotions, manual promotions and rollbacks "
     "from the audit log."),
    ("labels", "Champion per label", "The current champion's F1 per label (per entity type for NER) on each "
     "batch's held-out rows, as scored when it was judged."),
)


def collect(registry: Registry, home_root: Path, max_forgetting: float) -> dict[str, Any]:
    """Everything the page shows, as one document (also the test's view of it)."""
    versions = []
    pruned = registry.pruned()
    champion = registry.champion()
    for record in registry.versions():
        decided = registry.decision_record(record.version)
        metrics = (decided.metrics if decided else {}) or {}
        candidate, before = metrics.get("candidate") or {}, metrics.get("champion") or {}
        train = record.info.get("train") or {}
        data = record.info.get("data") or {}
        versions.append({
            "version": record.version, "parent": record.parent, "created_at": record.created_at,
            "strategy": record.strategy, "decision": registry.decision(record.version),
            "champion": record.version == champion, "pruned": record.version in pruned,
            "batch": data.get("experience"), "train_rows": data.get("train_rows"), "eval_rows": data.get("eval_rows"),
            "files": data.get("files") or [], "metric": metrics.get("metric") or "accuracy",
            "new": candidate.get("new"), "old": candidate.get("old"),
            "per_batch": candidate.get("per_experience") or {}, "champion_per_batch": before.get("per_experience") or {},
            "per_label": candidate.get("per_label") or candidate.get("per_type") or {},
            "train_samples": train.get("train_samples"), "train_seconds": train.get("seconds"),
            "reasons": (decided.gate or {}).get("reasons", []) if decided else [],
        })
    audit = [entry.as_dict() for entry in reversed(registry.audit())]  # oldest first
    return {"home": str(home_root), "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "champion": champion, "pinned": registry.pinned(), "max_forgetting": max_forgetting,
            "versions": versions, "audit": audit}


def write(doc: dict[str, Any], out: Path) -> Path:
    """Draw every figure and write OUT/report.html (atomically); returns its path."""
    try:
        from daemon.cli import plots
    except ImportError as exc:
        raise UsageError(f"lifelong report needs matplotlib ({exc}): {EXTRA}") from None
    images = plots.draw_all(doc)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    atomic_write(path, page(doc, images))
    return path


def page(doc: dict[str, Any], images: dict[str, bytes | None]) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>lifelong report: {esc(doc['home'])}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>lifelong report</h1><p class=meta>home <code>{esc(doc['home'])}</code> &middot; generated "
             f"{esc(doc['generated_at'])} &middot; champion <b>{esc(doc['champion'] or 'none yet')}</b>"
             f"{' &middot; <b>pinned</b>: automatic promotion paused' if doc['pinned'] else ''} &middot; "
             f"{len(doc['versions'])} versions</p>"]
    if not doc["versions"]:
        parts.append("<p>No versions yet: drop a labeled file into the inbox.</p>")
    for key, title, caption in FIGURES:
        image = images.get(key)
        body = (f"<img alt='{esc(title)}' src='data:image/png;base64,{base64.b64encode(image).decode()}'>"
                if image else "<p class=empty>nothing to show yet</p>")
        parts.append(f"<figure id='{key}'><h2>{esc(title)}</h2>{body}<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append(_versions_table(doc))
    parts.append(_audit_table(doc))
    parts.append("</body></html>")
    return "\n".join(parts)


def _versions_table(doc: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for v in doc["versions"]:
        mark = " (champion)" if v["champion"] else ""
        rows.append(f"<tr class='{esc(v['decision'] or '')}'><td>{esc(v['version'])}{mark}</td><td>{esc(v['parent'] or '-')}</td>"
                    f"<td>{esc(v['created_at'])}</td><td>{v['batch'] if v['batch'] is not None else '-'}</td>"
                    f"<td>{esc(', '.join(v['files']))}</td><td>{esc(v['strategy'])}</td>"
                    f"<td>{esc(v['decision'] or '-')}</td><td>{_num(v['new'])}</td><td>{_num(v['old'])}</td>"
                    f"<td>{'pruned' if v['pruned'] else 'kept'}</td>"
                    f"<td>{'<br>'.join(esc(r) for r in v['reasons'])}</td></tr>")
    return ("<section id='versions'><h2>Versions and the gate's reasons</h2><table><tr><th>version</th><th>parent</th>"
            "<th>created</th><th>batch</th><th>files</th><th>strategy</th><th>decision</th><th>new</th><th>old</th>"
            "<th>weights</th><th>reasons</th></tr>" + "".join(rows) + "</table></section>")


def _audit_table(doc: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(f"<tr class='{esc(e['action'])}'><td>{esc(e['at'])}</td><td>{esc(e['actor'])}</td><td>{esc(e['action'])}</td>"
                   f"<td>{esc(e['from'] or '-')}</td><td>{esc(e['to'] or '-')}</td><td>{esc(e['reason'])}</td></tr>"
                   for e in doc["audit"])
    return ("<section id='audit'><h2>Audit log</h2><table><tr><th>at</th><th>actor</th><th>action</th><th>from</th>"
            "<th>to</th><th>reason</th></tr>" + rows + "</table></section>")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def default_out(home_root: Path) -> Path:
    return home_root / "report"


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: not a directory")


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#555} figure{margin:2em 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:.9em} table{border-collapse:collapse;font-size:.85em;width:100%}
td,th{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top} th{background:#f4f4f4}
tr.rejected td{background:#fff0f0} tr.rolled_back td{background:#fff6e6} tr.rollback td{background:#fff6e6}
.empty{color:#888;font-style:italic} code{background:#f4f4f4;padding:0 .2em}
"""
