"""Row validation and the stable train/eval split.

A record (a dict from `formats`) becomes a `Row` ready for the store, or a list of `RowError`s
naming each field at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from daemon.ingest import splits
from daemon.ingest.formats import Chunk, RowError

SPLITS = ("train", "eval")
_KNOWN = frozenset(("text", "label", "id", "split"))
# Extra fields are kept as JSON; deeper nesting than this is refused (serialisers recurse).
MAX_EXTRA_DEPTH = 32


@dataclass(slots=True)
class LabelSet:
    """The labels rows may carry: fixed by config, or growing as new labels arrive."""

    known: dict[str, int] = field(default_factory=dict)
    fixed: bool = False
    added: list[str] = field(default_factory=list)
    max_labels: int = 1000

    @classmethod
    def of(cls, known: Iterable[str], fixed: Iterable[str | int] = (), max_labels: int = 1000) -> "LabelSet":
        fixed_names = [str(label) for label in fixed]
        if fixed_names:
            return cls(known={name: i for i, name in enumerate(fixed_names)}, fixed=True, max_labels=max_labels)
        return cls(known={name: i for i, name in enumerate(known)}, max_labels=max_labels)

    @property
    def full(self) -> bool:
        return len(self.known) >= self.max_labels

    def admit(self, label: str) -> bool:
        if label in self.known:
            return True
        if self.fixed or self.full:
            return False
        self.known[label] = len(self.known)
        self.added.append(label)
        return True


# A valid row as stored: (split, label, text, key, extra); split 0 train, 1 eval; extra is JSON of
# the fields beyond text/label/id/split, kept but unused.
Row = tuple[int, str, str, "str | None", "str | None"]


class Validator:
    """Turns records into rows for one file; `labels` grows (or not) as it goes."""

    def __init__(self, labels: LabelSet, eval_fraction: float, *, max_text_chars: int = 100_000,
                 max_label_chars: int = 200) -> None:
        self.labels = labels
        self.eval_fraction = eval_fraction
        self.max_text_chars = max_text_chars
        self.max_label_chars = max_label_chars
        self._threshold = int(splits.threshold(eval_fraction))

    def __call__(self, line: int, record: dict[str, object], *, _hash=splits.text_hash) -> Row | list[RowError]:
        """A stored row, or every error of the record."""
        text = record.get("text")
        label = record.get("label")
        # the common case, kept cheap: exactly {"text": str, "label": str} with a known label
        if len(record) == 2 and type(text) is str and type(label) is str and label in self.labels.known \
                and len(text) <= self.max_text_chars and text.strip() and label.strip() == label:
            return int(_hash(text) < self._threshold), label, text, None, None
        return _validate_fully(line, record, self)


    def fast_chunk(self, chunk: Chunk) -> tuple[pa.Array, pa.Array, pa.Array] | None:
        """(splits, labels, texts) when every record of the chunk is plainly valid, else None.

        Plainly valid: a dict of exactly a str text containing a letter or digit (so never blank,
        whatever the definition of white space) and a label that is known, or new, clean and
        welcome. New labels are admitted in order of first appearance, as the exact check does.
        Anything else goes through the exact row-by-row check, the only authority on errors.
        """
        if chunk.columns is not None:
            texts, labels = chunk.columns
        else:
            records = chunk.records
            if set(map(type, records)) != {dict} or set(map(len, records)) != {2}:
                return None
            texts = [record.get("text") for record in records]  # type: ignore[attr-defined]
            labels = [record.get("label") for record in records]  # type: ignore[attr-defined]
        try:
            text_array = pa.array(texts, pa.string())
            label_array = pa.array(labels, pa.string())
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            return None
        if text_array.null_count or label_array.null_count:
            return None
        if not pc.all(pc.match_substring_regex(text_array, r"[\pL\pN]")).as_py():
            return None
        if len(text_array) and pc.max(pc.utf8_length(text_array)).as_py() > self.max_text_chars:
            return None
        known = pa.array(list(self.labels.known), pa.string())
        unknown = pc.invert(pc.is_in(label_array, value_set=known))
        if pc.any(unknown).as_py():
            new = pc.unique(label_array.filter(unknown)).to_pylist()  # in order of first appearance
            if self.labels.fixed or len(self.labels.known) + len(new) > self.labels.max_labels or \
                    not all(label and label.strip() == label and len(label) <= self.max_label_chars for label in new):
                return None
            for label in new:
                self.labels.admit(label)
        held_out = splits.eval_mask(texts, self.eval_fraction)
        return pa.array(held_out.astype(np.int8)), label_array, text_array


def validate(line: int, record: dict[str, object], labels: LabelSet, eval_fraction: float) -> Row | list[RowError]:
    return Validator(labels, eval_fraction)(line, record)


def _validate_fully(line: int, record: dict[str, object], validator: Validator) -> Row | list[RowError]:
    labels, eval_fraction = validator.labels, validator.eval_fraction
    errors: list[RowError] = []
    text = record.get("text")
    if "text" not in record:
        errors.append(RowError(line, "text", "missing_field"))
    elif not isinstance(text, str):
        errors.append(RowError(line, "text", "not_string", text))
    elif len(text) > validator.max_text_chars:
        errors.append(RowError(line, "text", "text_too_long", f"{len(text)} characters > inbox.max_text_chars = {validator.max_text_chars}"))
    elif not text.strip():
        errors.append(RowError(line, "text", "empty_text", text))

    label = _label(line, record, errors)
    if label is not None and len(label) > validator.max_label_chars:
        errors.append(RowError(line, "label", "label_too_long", f"{len(label)} characters > inbox.max_label_chars = {validator.max_label_chars}"))
        label = None
    if label is not None and labels.fixed and label not in labels.known:
        errors.append(RowError(line, "label", "unknown_label", label))
    elif label is not None and label not in labels.known and labels.full:
        errors.append(RowError(line, "label", "too_many_labels", f"{label[:50]!r} would be label {len(labels.known) + 1} > inbox.max_labels = {labels.max_labels}"))

    split, key = split_and_id(line, record, _KNOWN, errors)
    if errors:
        return errors
    labels.admit(label)  # type: ignore[arg-type]
    extra = None
    if not _KNOWN.issuperset(record):
        extra = json.dumps({k: v for k, v in record.items() if k not in _KNOWN}, ensure_ascii=False, default=str)
    is_eval = split == "eval" if split else splits.is_eval(text, eval_fraction)  # type: ignore[arg-type]
    return int(is_eval), label, text, key, extra  # type: ignore[return-value]


def split_and_id(line: int, record: dict[str, object], known: frozenset[str],
                 errors: list[RowError]) -> tuple[str | None, str | None]:
    """The fields every task's row may carry: `split` and `id` (checked), and extra fields (capped in
    depth); each problem is appended to `errors`."""
    too_deep = next((k for k, v in record.items() if k not in known and _deeper_than(v, MAX_EXTRA_DEPTH)), None)
    if too_deep is not None:
        errors.append(RowError(line, str(too_deep)[:200], "too_deeply_nested", f"nested deeper than {MAX_EXTRA_DEPTH} levels"))
    split = record.get("split")
    if split in (None, ""):
        split = None
    elif split not in SPLITS:
        errors.append(RowError(line, "split", "bad_split", split))
    key = record.get("id")
    if key in (None, ""):
        key = None
    elif isinstance(key, bool) or not isinstance(key, (str, int)):
        errors.append(RowError(line, "id", "bad_id", key))
    else:
        key = str(key)
    return split, key  # type: ignore[return-value]


def _deeper_than(value: object, limit: int) -> bool:
    """Whether lists and dicts nest deeper than `limit` in `value`; iterative, linear in its size."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _label(line: int, record: dict[str, object], errors: list[RowError]) -> str | None:
    if "label" not in record:
        errors.append(RowError(line, "label", "missing_field"))
        return None
    value = record["label"]
    if value is None or value == "":
        errors.append(RowError(line, "label", "null_label", value))
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        errors.append(RowError(line, "label", "bad_label", value))
        return None
    label = str(value).strip()
    if not label:
        errors.append(RowError(line, "label", "null_label", value))
        return None
    return label
