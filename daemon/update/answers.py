"""`lifelong eval` and `lifelong predict` for causal_lm, the parent's side: rows are JSONL
`{"prompt", "completion"}` or `{"messages"}` (checked as the inbox checks them); a text to answer is
one user message, answered greedily with at most `--max-new-tokens` new tokens. One of
daemon/update/inference.py's TASKS.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

from daemon.ingest import formats
from daemon.ingest.chat import ChatValidator
from daemon.ingest.names import clipped
from daemon.ingest.rows import LabelSet
from daemon.update.evalfile import MAX_ERRORS, Labeled, read_valid
from daemon.update.launcher import MESSAGES

if TYPE_CHECKING:
    from daemon.home import Home

DEFAULT_MAX_NEW_TOKENS = 64  # strategies/tasks/causal_lm.py has the same default for rows without one


class CausalLM:
    """Rows are a prompt (messages) and its completion; predictions are generated completions."""

    name = "causal_lm"

    @staticmethod
    def read_labeled(home: "Home", path: Path, labels: list[str], on_progress: Callable[[int], None] | None) -> "Labeled":
        """Every valid row of the file (prompt messages, completion)."""
        inbox = home.config.inbox
        validate = ChatValidator(LabelSet(), 0.0, max_text_chars=inbox.max_text_chars)
        return read_valid(home, path, validate, lambda found: (found[1], found[2], None), on_progress,
                          required=formats.CHAT)

    @staticmethod
    def write(path: Path, rows: list[tuple[Any, ...]]) -> None:
        """(prompt messages, completion or None, max_new_tokens or None) rows as the child reads them."""
        table = pa.table({"prompt": pa.array([r[0] for r in rows], MESSAGES),
                          "completion": pa.array([r[1] for r in rows], pa.string()),
                          "max_new_tokens": pa.array([r[2] for r in rows], pa.int32())})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    @staticmethod
    def predict_rows(texts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[tuple[Any, ...]]:
        return [([{"role": "user", "content": text}], None, max_new_tokens) for text in texts]

    @staticmethod
    def present(texts: list[str], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """{"prompt", "completion", "stopped"} per text (stopped: the answer ended with the end token)."""
        return [{"prompt": text, "completion": item["completion"], "stopped": item["stopped"]}
                for text, item in zip(texts, found)]

    @staticmethod
    def render_eval(doc: dict[str, Any]) -> str:
        def shown(value: float | None, digits: int = 4) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        lines = [f"{doc['version']} on {doc['data']}: {doc['rows']} rows",
                 f"answer loss  {shown(doc['answer_loss'])} nats per answer token",
                 f"perplexity   {shown(doc['perplexity'], 2)}",
                 f"exact match  {shown(doc['exact_match'])} (of {doc['exact_match_rows']} rows with a short completion)",
                 f"stopped      {doc['stopped']} of {doc['generated']} generated answers ended with the end token"]
        if doc["invalid_rows"]:
            first = doc["errors"][0]
            lines.append(f"{doc['invalid_rows']} invalid rows not scored; first: line {first['line']}, "
                         f"{first['field']}: {first['reason']} (--json lists up to {MAX_ERRORS})")
        return "\n".join(lines)

    @staticmethod
    def render_predict(items: list[dict[str, Any]]) -> str:
        lines = []
        for item in items:
            lines.append(f"> {clipped(item['prompt'], 100)}")
            lines.append(item["completion"] + ("" if item["stopped"] else " […]"))
        return "\n".join(lines)
