"""Row checks for token classification (NER): a record `{"tokens": [str], "tags": [str]}` becomes a
stored row, or a list of `RowError`s naming each field at fault.

Tags are BIO (strategies/tasks/bio.py); an `I-X` that does not continue an `X` is repaired to `B-X`
(the entities read the same) and counted in `repaired`, which the ingestor reports as a warning.
The store's labels are entity types: a new type is admitted like a new label of sequence
classification (`inbox.labels` fixes them, `inbox.max_labels` and `max_label_chars` cap them). The
held-out split hashes the tokens joined by single spaces, so one sentence always lands in one split.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from daemon.ingest import splits
from daemon.ingest.formats import Chunk, RowError
from daemon.ingest.rows import LabelSet, split_and_id
from strategies.tasks import bio

COLUMNS = ("tokens", "tags")
_KNOWN = frozenset(("tokens", "tags", "id", "split"))
# How a token classification row is stored (daemon/ingest/segments.py): split, then the task's columns.
SCHEMA = pa.schema([
    ("split", pa.int8()),  # 0 train, 1 eval
    ("tokens", pa.list_(pa.string())),
    ("tags", pa.list_(pa.string())),
    ("key", pa.string()),
    ("extra", pa.string()),
])

# A valid row as stored: (split, tokens, tags, key, extra)
Row = tuple[int, list[str], list[str], "str | None", "str | None"]


class TaggedValidator:
    """Turns `{"tokens", "tags"}` records into rows for one file; `labels` (entity types) grows as it goes."""

    def __init__(self, labels: LabelSet, eval_fraction: float, *, max_text_chars: int = 100_000,
                 max_label_chars: int = 200) -> None:
        self.labels = labels
        self.eval_fraction = eval_fraction
        self.max_text_chars = max_text_chars
        self.max_label_chars = max_label_chars
        self.repaired = 0  # tags changed from I-X to B-X
        self.repaired_rows = 0

    def fast_chunk(self, chunk: Chunk) -> None:
        """No columnar fast path: every sentence is checked row by row."""
        return None

    def __call__(self, line: int, record: dict[str, Any]) -> Row | list[RowError]:
        errors: list[RowError] = []
        tokens, tags = record.get("tokens"), record.get("tags")
        if "tokens" not in record:
            errors.append(RowError(line, "tokens", "missing_field"))
        elif not isinstance(tokens, list) or not tokens:
            errors.append(RowError(line, "tokens", "not_token_list", tokens))
            tokens = None
        else:
            bad = [t for t in tokens if not isinstance(t, str) or not t or len(t.split()) != 1 or t != t.strip()][:1]
            if bad:  # not a string, empty, or holding white space (a token is one word of the text)
                errors.append(RowError(line, "tokens", "bad_token", bad[0]))
                tokens = None
            elif sum(map(len, tokens)) + len(tokens) - 1 > self.max_text_chars:
                errors.append(RowError(line, "tokens", "text_too_long",
                                       f"{sum(map(len, tokens)) + len(tokens) - 1} characters > inbox.max_text_chars = {self.max_text_chars}"))
                tokens = None
        kinds: list[str] = []
        if "tags" not in record:
            errors.append(RowError(line, "tags", "missing_field"))
        elif not isinstance(tags, list) or not tags:
            errors.append(RowError(line, "tags", "not_tag_list", tags))
            tags = None
        else:
            for tag in tags:
                try:
                    kind = bio.type_of(tag)
                except bio.BadTag:
                    errors.append(RowError(line, "tags", "bad_tag", tag))
                    tags = None
                    break
                if kind is not None and kind not in kinds:
                    kinds.append(kind)
        if tokens is not None and tags is not None and len(tokens) != len(tags):
            errors.append(RowError(line, "tags", "length_mismatch", f"{len(tags)} tags for {len(tokens)} tokens"))
        if tags is not None:
            new = [kind for kind in kinds if kind not in self.labels.known]
            for kind in kinds:
                if len(kind) > self.max_label_chars:
                    errors.append(RowError(line, "tags", "label_too_long",
                                           f"{len(kind)} characters > inbox.max_label_chars = {self.max_label_chars}"))
            if new and self.labels.fixed:
                errors.append(RowError(line, "tags", "unknown_label", new[0]))
            elif len(self.labels.known) + len(new) > self.labels.max_labels:
                errors.append(RowError(line, "tags", "too_many_labels",
                                       f"{new[0][:50]!r} would be label {len(self.labels.known) + 1} > inbox.max_labels = {self.labels.max_labels}"))
        split, key = split_and_id(line, record, _KNOWN, errors)
        if errors:
            return errors
        for kind in kinds:
            self.labels.admit(kind)
        fixed, changes = bio.repair(tags)  # type: ignore[arg-type]
        if changes:
            self.repaired += changes
            self.repaired_rows += 1
        extra = None
        if not _KNOWN.issuperset(record):
            extra = json.dumps({k: v for k, v in record.items() if k not in _KNOWN}, ensure_ascii=False, default=str)
        is_eval = split == "eval" if split else splits.is_eval(" ".join(tokens), self.eval_fraction)  # type: ignore[arg-type]
        return int(is_eval), list(tokens), fixed, key, extra  # type: ignore[arg-type]
