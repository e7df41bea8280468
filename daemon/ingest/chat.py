"""Row checks for causal_lm: a record `{"prompt", "completion"}` or `{"messages": [{"role", "content"},
...]}` becomes a stored row, or a list of `RowError`s naming each field at fault.

Both forms are stored alike (strategies/tasks/causal_lm.py reads them): `prompt`, the conversation
before the answer as messages, and `completion`, the answer. A `{"prompt", "completion"}` row is one
user message and its answer. A `messages` row is a chat: roles `system` (first only), `user` and
`assistant`, at least one user message, every content a non-empty string, and the last message the
assistant's (the answer the model learns; earlier assistant messages are context). A row's text (all
contents together) is capped by `inbox.max_text_chars`; the training truncates to `model.max_length`
tokens. The held-out split hashes the prompt's contents, so a question always lands in one split,
whatever its answer says.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from daemon.ingest import splits
from daemon.ingest.formats import Chunk, RowError
from daemon.ingest.rows import LabelSet, split_and_id

COLUMNS = ("prompt", "completion")
ROLES = ("system", "user", "assistant")
_PLAIN = frozenset(("prompt", "completion", "id", "split"))
_CHAT = frozenset(("messages", "id", "split"))
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# How a causal_lm row is stored (daemon/ingest/segments.py): split, then the task's columns.
SCHEMA = pa.schema([
    ("split", pa.int8()),  # 0 train, 1 eval
    ("prompt", pa.list_(MESSAGE)),
    ("completion", pa.string()),
    ("key", pa.string()),
    ("extra", pa.string()),
])

# A valid row as stored: (split, prompt messages, completion, key, extra)
Row = tuple[int, list[dict[str, str]], str, "str | None", "str | None"]


class ChatValidator:
    """Turns prompt/completion and chat records into rows for one file (causal_lm has no labels)."""

    def __init__(self, labels: LabelSet, eval_fraction: float, *, max_text_chars: int = 100_000,
                 max_label_chars: int = 200) -> None:
        self.labels = labels  # never grows: the task has no labels
        self.eval_fraction = eval_fraction
        self.max_text_chars = max_text_chars

    def fast_chunk(self, chunk: Chunk) -> None:
        """No columnar fast path: every row is checked one by one."""
        return None

    def __call__(self, line: int, record: dict[str, Any]) -> Row | list[RowError]:
        errors: list[RowError] = []
        if "messages" in record and ("prompt" in record or "completion" in record):
            errors.append(RowError(line, "messages", "mixed_forms", "a row has either messages or prompt and completion"))
            messages = None
        elif "messages" in record:
            messages = _messages(line, record["messages"], errors)
            known = _CHAT
        else:
            messages = _plain(line, record, errors)
            known = _PLAIN
        if messages is not None:
            size = sum(len(m["content"]) for m in messages)
            if size > self.max_text_chars:
                errors.append(RowError(line, "messages" if "messages" in record else "prompt", "text_too_long",
                                       f"{size} characters > inbox.max_text_chars = {self.max_text_chars}"))
        split, key = split_and_id(line, record, _CHAT if "messages" in record else _PLAIN, errors)
        if errors or messages is None:
            return errors
        extra = None
        if not known.issuperset(record):
            extra = json.dumps({k: v for k, v in record.items() if k not in known}, ensure_ascii=False, default=str)
        prompt, answer = messages[:-1], messages[-1]["content"]
        is_eval = split == "eval" if split else splits.is_eval("\n".join(m["content"] for m in prompt), self.eval_fraction)
        return int(is_eval), prompt, answer, key, extra


def _plain(line: int, record: dict[str, Any], errors: list[RowError]) -> list[dict[str, str]] | None:
    found = {}
    for field in ("prompt", "completion"):
        value = record.get(field)
        if field not in record:
            errors.append(RowError(line, field, "missing_field"))
        elif not isinstance(value, str):
            errors.append(RowError(line, field, "not_string", value))
        elif not value.strip():
            errors.append(RowError(line, field, "empty_text", value))
        else:
            found[field] = value
    if len(found) < 2:
        return None
    return [{"role": "user", "content": found["prompt"]}, {"role": "assistant", "content": found["completion"]}]


def _messages(line: int, value: Any, errors: list[RowError]) -> list[dict[str, str]] | None:
    if not isinstance(value, list) or not value:
        errors.append(RowError(line, "messages", "not_message_list", value))
        return None
    found: list[dict[str, str]] = []
    for number, message in enumerate(value):
        field = f"messages[{number}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            errors.append(RowError(line, field, "bad_message", "a message is exactly {\"role\", \"content\"}"))
            return None
        role, content = message["role"], message["content"]
        if role not in ROLES:
            errors.append(RowError(line, f"{field}.role", "bad_role", role))
            return None
        if role == "system" and number:
            errors.append(RowError(line, f"{field}.role", "bad_role", "a system message comes first only"))
            return None
        if not isinstance(content, str):
            errors.append(RowError(line, f"{field}.content", "not_string", content))
            return None
        if not content.strip():
            errors.append(RowError(line, f"{field}.content", "empty_content", content))
            return None
        found.append({"role": role, "content": content})
    if found[-1]["role"] != "assistant":
        errors.append(RowError(line, f"messages[{len(found) - 1}].role", "last_not_assistant",
                               "the last message is the answer to learn: the assistant's"))
        return None
    if not any(m["role"] == "user" for m in found):
        errors.append(RowError(line, "messages", "no_user_message", "a chat needs at least one user message"))
        return None
    return found
