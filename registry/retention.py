"""Retention: which versions keep their weights under `registry.keep_versions`, as a pure function.

The order of priority: the champion; then its rollback history, the order in which automatic
rollbacks would walk back; then the newest other versions (rejected, held: kept for inspection).
The first `keep_versions` of that order keep their weights. Always kept besides: the newest
version (the candidate being decided) and every ancestor a kept LoRA version is merged onto, as an
adapter is useless without the weights it adapts. Everything else keeps its record, decisions and
audit, and loses its files (`Registry.gc`).
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.abc import CHAMPION_ACTIONS, AuditEntry, VersionRecord


@dataclass(frozen=True, kw_only=True)
class Retention:
    """What a gc did (or, on a dry run, would do)."""

    keep_versions: int
    dry_run: bool
    kept: list[str]  # versions whose weights stay, oldest first
    pruned: list[str]  # pruned by this gc, oldest first
    bytes_freed: dict[str, int]  # version -> bytes its files (and serving copy) took
    pruned_before: list[str]  # pruned by earlier gcs


def rollback_order(audit: list[AuditEntry], current: str | None) -> list[str]:
    """Former champions, newest first, as automatic rollbacks would return to them."""
    rolled_back = {e.from_ for e in audit if e.action == "rollback" and e.from_}
    order: list[str] = []
    for entry in reversed(audit):
        version = entry.to
        if entry.action in CHAMPION_ACTIONS and version and version != current and version not in rolled_back \
                and version not in order:
            order.append(version)
    return order


def to_keep(records: list[VersionRecord], audit: list[AuditEntry], pruned: set[str], keep_versions: int) -> set[str]:
    """The versions whose weights stay; every other version not yet pruned is to be pruned."""
    if keep_versions < 1:
        raise ValueError("keep_versions must be at least 1")
    champion = next((e.to for e in reversed(audit) if e.action in CHAMPION_ACTIONS), None)
    newest_first = [r.version for r in reversed(records)]
    priority = ([champion] if champion else []) + rollback_order(audit, champion) + newest_first
    keep: list[str] = []
    for version in priority:
        if len(keep) == keep_versions:
            break
        if version not in pruned and version not in keep:
            keep.append(version)
    if newest_first and newest_first[0] not in pruned:
        keep.append(newest_first[0])
    by_name = {r.version: r for r in records}
    needed = set(keep)
    for version in keep:
        record = by_name.get(version)
        while record is not None and record.kind == "lora" and record.parent is not None:
            needed.add(record.parent)
            record = by_name.get(record.parent)
    return needed
