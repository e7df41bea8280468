"""BIO tags, read the same way by both processes (standard library only, so the daemon imports it).

A token classification model's labels are its tags: `O` first, then `B-TYPE`, `I-TYPE` for each
entity type in the order the types arrived, so a new type appends its two rows to the head and
every earlier tag keeps its index. Entities are read as conlleval and seqeval's default mode read
them: a `B-X`, or an `I-X` that does not continue an `X`, starts one; `I-X` continues it.
`figures` scores them (exact span and type; tests/test_seqeval.py checks it against seqeval), here
so that the daemon can break a score down by type too, and `pool` adds up such figures of several sets.
"""

from __future__ import annotations

from typing import Any, Sequence

OUTSIDE = "O"
PREFIXES = ("B-", "I-")

Span = tuple[str, int, int]  # (type, first token, one past the last token)


class BadTag(ValueError):
    """A tag that is neither `O` nor `B-TYPE` / `I-TYPE` with a non-empty type."""

    def __init__(self, tag: object) -> None:
        self.tag = tag
        super().__init__(f"{tag!r} is not a BIO tag (O, B-TYPE or I-TYPE)")


def tag_labels(types: Sequence[str]) -> list[str]:
    """The head's labels for these entity types: O, then B-/I- of each type in order."""
    return [OUTSIDE] + [f"{prefix}{kind}" for kind in types for prefix in PREFIXES]


def entity_types(labels: Sequence[str]) -> list[str]:
    """The entity types of a head's labels, in the order of their rows."""
    found: list[str] = []
    for label in labels:
        kind = type_of(label)
        if kind is not None and kind not in found:
            found.append(kind)
    return found


def type_of(tag: object) -> str | None:
    """The entity type a tag names (None for O); BadTag for anything that is not a BIO tag."""
    if tag == OUTSIDE:
        return None
    if not isinstance(tag, str) or tag[:2] not in PREFIXES or not tag[2:].strip() or tag[2:] != tag[2:].strip():
        raise BadTag(tag)
    return tag[2:]


def spans(tags: Sequence[str]) -> list[Span]:
    """The entities of a tag sequence; a tag that is not BIO reads as O (a model's output is never refused)."""
    found: list[Span] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, name = (tag[:2], tag[2:]) if isinstance(tag, str) and tag[:2] in PREFIXES and tag[2:] else ("", None)
        if kind is not None and (prefix != "I-" or name != kind):
            found.append((kind, start, i))
            kind = None
        if name is not None and kind is None:
            kind, start = name, i
    if kind is not None:
        found.append((kind, start, len(tags)))
    return found


def repair(tags: Sequence[str]) -> tuple[list[str], int]:
    """Well-formed BIO (every entity begins with B-) and how many tags had to change: an `I-X` that
    does not continue an `X` becomes `B-X`. The entities read from the tags stay the same."""
    fixed = list(tags)
    changes = 0
    previous: str | None = None
    for i, tag in enumerate(fixed):
        kind = type_of(tag)
        if tag.startswith("I-") and previous != kind:
            fixed[i] = f"B-{kind}"
            changes += 1
        previous = kind
    return fixed, changes


def figures(truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """rows, entities (the true ones), entity-level micro precision/recall/F1 (`entity_f1`) and per-type
    figures (support: true entities; predicted: entities predicted; correct: those right in span and type)."""
    counts: dict[str, list[int]] = {}  # type -> [true positives, predicted, true]
    for true_tags, found_tags in zip(truth, predicted):
        wanted, got = set(spans(true_tags)), set(spans(found_tags))
        for kind, _, _ in wanted | got:
            counts.setdefault(kind, [0, 0, 0])
        for kind, _, _ in wanted & got:
            counts[kind][0] += 1
        for kind, _, _ in got:
            counts[kind][1] += 1
        for kind, _, _ in wanted:
            counts[kind][2] += 1
    per_type = {kind: _prf(*counts[kind]) for kind in sorted(counts)}
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    micro = _prf(*total)
    nothing = total[1] == 0 and total[2] == 0
    return {"rows": len(truth), "entities": total[2], "entity_f1": None if nothing or not truth else micro["f1"],
            "precision": None if nothing else micro["precision"], "recall": None if nothing else micro["recall"],
            "per_type": per_type}


def pool(tables: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-type figures of several sets' rows together, from each set's per-type figures (a row
    without the counts, recorded before they were kept, is left out)."""
    counts: dict[str, list[int]] = {}
    for table in tables:
        for kind, row in table.items():
            if all(isinstance(row.get(key), int) for key in ("correct", "predicted", "support")):
                total = counts.setdefault(kind, [0, 0, 0])
                for i, key in enumerate(("correct", "predicted", "support")):
                    total[i] += row[key]
    return {kind: _prf(*counts[kind]) for kind in sorted(counts)}


def _prf(hits: int, predicted: int, true: int) -> dict[str, Any]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": true, "predicted": predicted, "correct": hits}
