"""`lifelong eval` and `lifelong predict` for token classification (NER), the parent's side: rows
are `{"tokens", "tags"}` in JSONL or CoNLL files (checked as the inbox checks them), a text to
label is split into tokens on white space, and each entity comes back with character offsets into
the text as given. One of daemon/update/inference.py's TASKS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from daemon.ingest import formats
from daemon.ingest.names import clipped
from daemon.ingest.rows import LabelSet
from daemon.ingest.tagged import COLUMNS, TaggedValidator
from daemon.update import tables
from daemon.update.evalfile import MAX_ERRORS, Labeled, read_valid
from daemon.update.launcher import write_rows
from strategies.tasks import bio

if TYPE_CHECKING:
    from daemon.home import Home
    from strategies.spec import TrainSpec

_WORD = re.compile(r"\S+")


class TokenClassification:
    """Rows are {"tokens", "tags"}; predictions are the entities of each text."""

    name = "token_classification"

    @staticmethod
    def read_labeled(home: "Home", path: Path, labels: list[str], on_progress: Callable[[int], None] | None) -> "Labeled":
        """Every valid sentence of the file (BIO repaired as the inbox repairs it). An entity type the
        version does not know is kept (never predicted, so its entities count as missed)."""
        inbox = home.config.inbox
        types = bio.entity_types(labels)
        known = LabelSet(known={kind: i for i, kind in enumerate(types)}, max_labels=max(inbox.max_labels, len(types)))
        validate = TaggedValidator(known, 0.0, max_text_chars=inbox.max_text_chars, max_label_chars=inbox.max_label_chars)
        return read_valid(home, path, validate, lambda found: (found[1], found[2]), on_progress,
                          required=formats.TAGGED)

    @staticmethod
    def write(path: Path, rows: list[tuple[list[str], list[str]]]) -> None:
        write_rows(path, rows, COLUMNS)

    @staticmethod
    def predict_rows(texts: list[str]) -> list[tuple[list[str], list[str]]]:
        return [([m.group() for m in _WORD.finditer(text)], []) for text in texts]

    @staticmethod
    def present(texts: list[str], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """{"text", "entities": [{"type", "start", "end", "text", "score"}]} per text, offsets into the text given."""
        shown = []
        for text, item in zip(texts, found):
            words = [m.span() for m in _WORD.finditer(text)]
            entities = []
            for entity in item["entities"]:
                start, end = words[entity["token_start"]][0], words[entity["token_end"] - 1][1]
                entities.append({"type": entity["type"], "start": start, "end": end, "text": text[start:end],
                                 "score": entity["score"]})
            shown.append({"text": text, "entities": entities})
        return shown

    @staticmethod
    def render_eval(doc: dict[str, Any]) -> str:

        f1 = doc["entity_f1"]
        lines = [f"{doc['version']} on {doc['data']}: {doc['rows']} sentences",
                 f"entity F1  {f1:.4f}" if f1 is not None else "entity F1  - (no entity in the rows or the predictions)", ""]
        lines += tables.figures(doc["per_type"], "type")
        if doc.get("unknown_types"):
            named = ", ".join(f"{clipped(kind, tables.NAME_WIDTH)} ({n})" for kind, n in doc["unknown_types"].items())
            lines.append(f"entity types {doc['version']} does not know (counted as missed): {named}")
        return "\n".join(lines + tables.invalid_rows(doc, MAX_ERRORS))

    @staticmethod
    def render_predict(items: list[dict[str, Any]]) -> str:
        lines = []
        for item in items:
            lines.append(clipped(item["text"], 80))
            lines += [f"  {clipped(e['type'], tables.NAME_WIDTH)}  {e['score']:.4f}  {e['start']}-{e['end']}  "
                      f"{clipped(e['text'], 60)}" for e in item["entities"]] or ["  (no entities)"]
        return "\n".join(lines)


def per_type(spec: "TrainSpec") -> dict[str, dict[str, Any]]:
    """The candidate's figures per entity type on each held-out set of an update ({set: {type:
    {precision, recall, f1, support}}}), from the predictions the child kept with it; {} when they
    cannot be read (the gate never depends on them)."""
    import pyarrow as pa

    try:
        kept = json.loads((Path(spec.out) / "predictions.json").read_text())
        found = {}
        for name, path in spec.data.eval.items():
            with pa.memory_map(path) as source:
                tags = pa.ipc.open_file(source).read_all().column("tags").to_pylist()
            predicted = [p["tags"] for p in kept[name]["predictions"]]
            found[name] = bio.figures(tags, predicted)["per_type"]
        return found
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return {}


def by_gate_set(per_set: dict[str, dict[str, dict[str, Any]]], new: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-type figures on the sets the gate judges (`lifelong_entity_f1`): "new" (this batch's held-out
    sentences), "old" (every earlier batch's pooled), "canary"; a set with nothing recorded is left out."""
    found = {"new": per_set[new]} if per_set.get(new) else {}
    earlier = [table for name, table in per_set.items() if name not in (new, "canary")]
    if earlier and any(earlier):
        found["old"] = bio.pool(earlier)
    if per_set.get("canary"):
        found["canary"] = per_set["canary"]
    return found
