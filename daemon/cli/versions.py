"""What `versions` and `show` print: a version's record, decision, metrics and audit, as documents."""

from __future__ import annotations

from typing import Any

import click

from daemon.update.tables import f1_by_set
from registry.abc import VersionRecord
from registry.registry import Registry


def _common(registry: Registry, record: VersionRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields both documents share, and the metrics of the version's decision."""
    decision = registry.decision_record(record.version)
    metrics = (decision.metrics if decision else {}) or {}
    pruned_at = registry.pruned().get(record.version)
    fields = {"version": record.version, "parent": record.parent, "created_at": record.created_at,
              "strategy": record.strategy, "kind": record.kind, "decision": registry.decision(record.version),
              "champion": registry.champion() == record.version,
              # retention (registry.keep_versions) drops old versions' files; their record stays
              "weights": "pruned" if pruned_at else "kept", "pruned_at": pruned_at}
    return fields, metrics


def summary(registry: Registry, record: VersionRecord) -> dict[str, Any]:
    fields, metrics = _common(registry, record)
    candidate = metrics.get("candidate") or {}
    return {**fields, "metrics": {"new": candidate.get("new"), "old": candidate.get("old")}}


def detail(registry: Registry, version: str) -> dict[str, Any]:
    record = registry.get(version)
    fields, metrics = _common(registry, record)
    decision = registry.decision_record(version)
    info = record.info
    return {
        **fields,
        "lineage": _lineage(registry, version),
        "config": info.get("config", {}),
        "data": info.get("data", {"experience": None, "train_rows": None, "eval_rows": None, "files": []}),
        "libraries": info.get("libraries", {}),
        "metrics": {"candidate": metrics.get("candidate"), "champion": metrics.get("champion")},
        "accuracy_matrix": metrics.get("accuracy_matrix"),
        "gate_metric": metrics.get("metric"),
        "gate": decision.gate if decision and decision.gate else {"passed": None, "reasons": []},
        "bytes": registry.size(version),
        "audit": [entry.as_dict() for entry in registry.audit(version)],
    }


def _lineage(registry: Registry, version: str) -> list[str]:
    chain = [version]
    parent = registry.get(version).parent
    while parent is not None:
        chain.append(parent)
        parent = registry.get(parent).parent
    return chain


def render_versions(rows: list[dict[str, Any]], colour: bool = False) -> str:
    if not rows:
        return "no versions yet"
    lines = [f"{'':1} {'version':8} {'parent':8} {'created':24} {'strategy':14} {'decision':12} {'new':>6} {'old':>6}"
             "  weights"]
    for row in rows:
        mark = "*" if row["champion"] else "x" if row["decision"] == "rolled_back" else " "
        new, old = (_fmt(row["metrics"]["new"]), _fmt(row["metrics"]["old"]))
        note = ("  <- champion" if row["champion"] else
                "  <- rolled back: never promoted automatically again" if row["decision"] == "rolled_back" else "")
        line = (f"{mark} {row['version']:8} {row['parent'] or '-':8} {row['created_at']:24} {row['strategy']:14} "
                f"{row['decision'] or '-':12} {new:>6} {old:>6}  {row['weights']:7}{note}")
        style = {"fg": "green", "bold": True} if row["champion"] else {"fg": "red"} if row["decision"] == "rolled_back" else {}
        lines.append(click.style(line, **style) if colour and style else line)
    rolled = [row["version"] for row in rows if row["decision"] == "rolled_back"]
    champion = next((row["version"] for row in rows if row["champion"]), None)
    lines.append(f"* champion: {champion or 'none'}" + (f"; x rolled back: {', '.join(rolled)}" if rolled else ""))
    return "\n".join(lines)


def render_matrix(doc: dict[str, Any], colour: bool = False) -> list[str]:
    """The accuracy matrix as a table: one row per version (the score of each batch's held-out set when
    that version was judged), then the champion it was judged against; this version's cells show their
    change against that champion, green or red on a terminal."""
    matrix = doc.get("accuracy_matrix")
    if not isinstance(matrix, dict) or not matrix.get("versions"):  # none, or an older record's shape
        return []
    batches = [str(b) for b in matrix["batches"]]
    champion = ((doc["metrics"].get("champion") or {}).get("per_experience")) or {}
    width = max(8, *(len(v) for v in matrix["versions"]))
    lines = [f"{'':{width}} " + " ".join(f"{'batch ' + b:>15}" for b in batches)]
    for version, values in zip(matrix["versions"], matrix["values"]):
        mine = version in ("candidate", doc["version"])
        cells = []
        for batch, value in zip(batches, values):
            before = champion.get(batch)
            delta = value - before if mine and value is not None and before is not None else None
            text = _fmt(value) + (f" ({delta:+.3f})" if delta is not None else "")
            cell = f"{text:>15}"
            if colour and delta is not None and abs(delta) >= 0.0005:
                cell = click.style(cell, fg="green" if delta > 0 else "red")
            cells.append(cell)
        lines.append(f"{doc['version'] if version == 'candidate' else version:{width}} " + " ".join(cells))
    if champion:
        lines.append(f"{'champion':{width}} " + " ".join(f"{_fmt(champion.get(b)):>15}" for b in batches))
    return lines


def render_detail(doc: dict[str, Any], colour: bool = False) -> str:
    gate = doc["gate"]
    size = "weights pruned" if doc["weights"] == "pruned" else f"{doc['bytes'] / 1e6:.1f} MB"
    lines = [
        f"version   {doc['version']}{'  (champion)' if doc['champion'] else ''}",
        f"lineage   {' <- '.join(doc['lineage'])}",
        f"created   {doc['created_at']}",
        f"strategy  {doc['strategy']} ({doc['kind']}, {size})",
        f"decision  {doc['decision'] or '-'}",
        *([f"weights   pruned at {doc['pruned_at']} by retention (registry.keep_versions): metadata, scores and "
           "audit kept; it cannot be promoted, rolled back to or exported"] if doc["weights"] == "pruned" else []),
        f"gate      {'passed' if gate.get('passed') else 'failed' if gate.get('passed') is False else '-'}",
    ]
    lines += [f"          - {reason}" for reason in gate.get("reasons", [])]
    data = doc["data"]
    if data.get("experience") is not None:
        lines.append(f"data      batch {data['experience']}: {data['train_rows']} train, {data['eval_rows']} eval rows")
    for name in ("candidate", "champion"):
        scores = doc["metrics"].get(name)
        if scores:
            lines.append(f"{name:9} new {_fmt(scores.get('new'))}  old {_fmt(scores.get('old'))}")
    per_type = (doc["metrics"].get("candidate") or {}).get("per_type")
    if per_type:  # token_classification
        lines.append("per type  entity F1 of this version on each held-out set (in brackets: true entities)")
        lines += ["          " + line for line in f1_by_set(per_type, "type")]
    matrix = render_matrix(doc, colour)
    if matrix:
        metric = (doc.get("gate_metric") or "score")
        lines.append(f"accuracy matrix ({metric} on each batch's held-out rows; in brackets: against the champion)")
        lines += ["          " + line for line in matrix]
    if doc["audit"]:
        lines.append("audit")
        lines += [f"          {e['at']} {e['actor']:6} {e['action']:14} {e['from'] or '-'} -> {e['to'] or '-'}"
                  f"{'  ' + e['reason'] if e['reason'] else ''}" for e in doc["audit"]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
