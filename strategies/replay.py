"""`replay`: a bounded buffer of earlier rows mixed into every update (experience replay).

Policies: `reservoir` (uniform over everything seen) and `class_balanced` (equal room per label).
The buffer is persisted in each version's state/ as Arrow (never pickled) with its counters.
Rows the daemon set aside (a batch given up after repeated failures) join the buffer, never the new rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.ipc as ipc

from strategies.abc import Context, Strategy
from strategies.data import Example

BUFFER_FILE = "replay.arrow"


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    buffer_rows: int  # rows kept across versions
    policy: Literal["class_balanced", "reservoir"]
    ratio: float  # remembered rows mixed in per new row


class Replay(Strategy):
    name = "replay"
    order = 40
    Options = ReplayOptions

    def prepare(self, ctx: Context) -> None:
        self.capacity = self.options.buffer_rows
        self.policy = self.options.policy
        self.ratio = self.options.ratio
        self.buffer, self.seen = load_buffer(ctx.previous_state)
        # Set-aside rows join before training, so this update already replays a bounded share of
        # them; as new rows they would be trained on at full weight, and their batch made training fail.
        set_aside = ctx.set_aside
        if set_aside:
            self._remember(ctx, set_aside)

    def examples(self, ctx: Context, examples: list[Example]) -> list[Example]:
        if not self.buffer or self.ratio <= 0:
            return examples
        wanted = int(round(self.ratio * len(examples)))
        if wanted >= len(self.buffer):
            replayed = [self.buffer[i % len(self.buffer)] for i in range(wanted)]
        else:
            replayed = ctx.rng.sample(self.buffer, wanted)
        names = ctx.labels
        return examples + [Example(text, names.index(label)) for text, label in replayed if label in names]

    def after_update(self, ctx: Context) -> None:
        self._remember(ctx, [(e.text, ctx.labels[e.label]) for e in ctx.new])

    def _remember(self, ctx: Context, rows: list[tuple[str, str]]) -> None:
        if self.policy == "reservoir":
            self.buffer, self.seen = reservoir(self.buffer, self.seen, rows, self.capacity, ctx.rng)
        else:
            self.buffer, self.seen = class_balanced(self.buffer, self.seen, rows, self.capacity, ctx.rng)

    def save_state(self, ctx: Context, folder: Path) -> None:
        save_buffer(folder, self.buffer, self.seen, self.policy)


def reservoir(buffer: list[tuple[str, str]], seen: int, rows: list[tuple[str, str]], capacity: int, rng) -> tuple:  # type: ignore[no-untyped-def]
    buffer = list(buffer)
    for row in rows:
        seen += 1
        if len(buffer) < capacity:
            buffer.append(row)
        else:
            slot = rng.randrange(seen)
            if slot < capacity:
                buffer[slot] = row
    return buffer, seen


def class_balanced(buffer: list[tuple[str, str]], seen: int, rows: list[tuple[str, str]], capacity: int, rng) -> tuple:  # type: ignore[no-untyped-def]
    """Keep an equal share per label (a label with fewer rows leaves its room to the others)."""
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in list(buffer) + list(rows):
        by_label[row[1]].append(row)
    seen += len(rows)
    if not by_label or capacity <= 0:
        return [], seen
    kept: list[tuple[str, str]] = []
    labels = sorted(by_label, key=lambda label: len(by_label[label]))
    room = capacity
    for i, label in enumerate(labels):
        share = room // (len(labels) - i)
        pool = by_label[label]
        take = pool if len(pool) <= share else rng.sample(pool, share)
        kept += take
        room -= len(take)
    return kept, seen


def load_buffer(state: Path | None) -> tuple[list[tuple[str, str]], int]:
    if state is None or not (state / BUFFER_FILE).is_file():
        return [], 0
    with pa.memory_map(str(state / BUFFER_FILE)) as source:
        table = ipc.open_file(source).read_all()
    meta = json.loads((table.schema.metadata or {}).get(b"lifelong", b"{}"))
    return list(zip(table["text"].to_pylist(), table["label"].to_pylist())), int(meta.get("seen", 0))


def save_buffer(folder: Path, buffer: list[tuple[str, str]], seen: int, policy: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("text", pa.string()), ("label", pa.string())],
                       metadata={"lifelong": json.dumps({"seen": seen, "policy": policy})})
    table = pa.table({"text": [t for t, _ in buffer], "label": [l for _, l in buffer]}, schema=schema)
    with pa.OSFile(str(folder / BUFFER_FILE), "wb") as sink, ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
