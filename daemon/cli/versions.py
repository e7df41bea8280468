"""What `versions` and `show` print: a version's record, decision, metrics and audit, as documents."""

from __future__ import annotations

from typing import Any

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


def render_versions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no versions yet"
    lines = [f"{'':1} {'version':8} {'parent':8} {'created':24} {'strategy':14} {'decision':12} {'new':>6} {'old':>6}"
             "  weights"]
    for row in rows:
        mark = "*" if row["champion"] else " "
        new, old = (_fmt(row["metrics"]["new"]), _fmt(row["metrics"]["old"]))
        lines.append(f"{mark} {row['version']:8} {row['parent'] or '-':8} {row['created_at']:24} {row['strategy']:14} "
                     f"{row['decision'] or '-':12} {new:>6} {old:>6}  {row['weights']}")
    return "\n".join(lines)


def render_detail(doc: dict[str, Any]) -> str:
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
    if doc["audit"]:
        lines.append("audit")
        lines += [f"          {e['at']} {e['actor']:6} {e['action']:14} {e['from'] or '-'} -> {e['to'] or '-'}"
                  f"{'  ' + e['reason'] if e['reason'] else ''}" for e in doc["audit"]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
