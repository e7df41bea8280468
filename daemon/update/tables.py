"""The tables `lifelong eval` and `lifelong show` print: precision, recall, F1 and support per label
(text classification) or per entity type (NER), and the note on rows that were not scored."""

from __future__ import annotations

from typing import Any, Mapping

from daemon.ingest.names import clipped

NAME_WIDTH = 30  # a label or an entity type is cut to this many characters in a table


def figures(rows: Mapping[str, Mapping[str, Any]], heading: str) -> list[str]:
    """One line per label (or type): precision, recall, F1 and support, under a header naming `heading`."""
    width = max([len(heading)] + [len(clipped(name, NAME_WIDTH)) for name in rows])
    lines = [f"{heading:<{width}}  precision  recall      f1  support"]
    lines += [f"{clipped(name, NAME_WIDTH):<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
              f"{row['f1']:6.4f}  {row['support']:7d}" for name, row in rows.items()]
    return lines


def f1_by_set(per_set: Mapping[str, Mapping[str, Mapping[str, Any]]], heading: str) -> list[str]:
    """F1 (and support) of each label (or type) on each held-out set: one line per name, one column per
    set ("1", "2", ... are batches, then "canary"); "-" where the set has none of it."""
    sets = sorted(per_set, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    names = sorted({name for s in sets for name in per_set[s]})
    width = max([len(heading)] + [len(clipped(name, NAME_WIDTH)) for name in names])
    lines = [f"{heading:<{width}}  " + "  ".join(f"{'batch ' + s if s.isdigit() else s:>14}" for s in sets)]
    for name in names:
        cells = []
        for s in sets:
            row = per_set[s].get(name)
            text = "-" if row is None else f"{row['f1']:.3f} ({row['support']})"
            cells.append(f"{text:>14}")
        lines.append(f"{clipped(name, NAME_WIDTH):<{width}}  " + "  ".join(cells))
    return lines


def invalid_rows(doc: Mapping[str, Any], listed: int) -> list[str]:
    """The note under `eval`'s table when rows of the file failed validation (not scored)."""
    if not doc["invalid_rows"]:
        return []
    first = doc["errors"][0]
    return [f"{doc['invalid_rows']} invalid rows not scored; first: line {first['line']}, "
            f"{first['field']}: {first['reason']} (--json lists up to {listed})"]
