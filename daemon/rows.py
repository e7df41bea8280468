"""Row validation and the stable train/eval split.

A record (a dict from `formats`) becomes a `Row` ready for the store, or a list of `RowError`s
naming each field at fault.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable

from daemon.formats import RowError

SPLITS = ("train", "eval")
_KNOWN = frozenset(("text", "label", "id", "split"))
_HASH_SPACE = float(1 << 64)


def eval_by_hash(text: str, eval_fraction: float) -> bool:
    """True when `text` belongs to the held-out split: a stable hash, the same on every machine."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE < eval_fraction


@dataclass(slots=True)
class LabelSet:
    """The labels rows may carry: fixed by config, or growing as new labels arrive."""

    known: dict[str, int] = field(default_factory=dict)
    fixed: bool = False
    added: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, known: Iterable[str], fixed: Iterable[str | int] = ()) -> "LabelSet":
        fixed_names = [str(label) for label in fixed]
        if fixed_names:
            return cls(known={name: i for i, name in enumerate(fixed_names)}, fixed=True)
        return cls(known={name: i for i, name in enumerate(known)})

    def admit(self, label: str) -> bool:
        if label in self.known:
            return True
        if self.fixed:
            return False
        self.known[label] = len(self.known)
        self.added.append(label)
        return True


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    text: str
    label: str
    split: int  # 0 train, 1 eval
    key: str | None
    extra: str | None  # JSON of fields beyond text/label/id/split, kept but unused


def validate(line: int, record: dict[str, object], labels: LabelSet, eval_fraction: float) -> Row | list[RowError]:
    errors: list[RowError] = []
    text = record.get("text")
    if "text" not in record:
        errors.append(RowError(line, "text", "missing_field"))
    elif not isinstance(text, str):
        errors.append(RowError(line, "text", "not_string", text))
    elif not text.strip():
        errors.append(RowError(line, "text", "empty_text", text))

    label = _label(line, record, errors)
    if label is not None and labels.fixed and label not in labels.known:
        errors.append(RowError(line, "label", "unknown_label", label))

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

    if errors:
        return errors
    labels.admit(label)  # type: ignore[arg-type]
    extra = None
    if len(record) > 2 and not _KNOWN.issuperset(record):
        extra = json.dumps({k: v for k, v in record.items() if k not in _KNOWN}, ensure_ascii=False, default=str)
    is_eval = split == "eval" if split else eval_by_hash(text, eval_fraction)  # type: ignore[arg-type]
    return Row(line, text, label, int(is_eval), key, extra)  # type: ignore[arg-type]


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
