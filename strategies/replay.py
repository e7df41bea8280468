"""`replay`: a bounded buffer of earlier rows mixed into every update (experience replay).

Policies: `reservoir` (uniform over everything seen) and `class_balanced` (equal room per label,
or whatever key the task balances on). The buffer holds rows in the task's columns and is persisted
in each version's state/ as Arrow (never pickled) with its counters.
Rows the daemon set aside (a batch given up after repeated failures) join the buffer, never the new rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.ipc as ipc

from strategies.abc import Context, Strategy
from strategies.tasks.abc import Row

BUFFER_FILE = "replay.arrow"


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    buffer_rows: int  # rows kept across versions
    policy: Literal["class_balanced", "reservoir"]
    ratio: float  # remembered rows mixed in per new row
    budget: Literal["added", "shared"]  # replayed rows add steps, or share the new rows' steps


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

    def examples(self, ctx: Context, examples: list[Row]) -> list[Row]:
        ctx.budget_rows = len(examples) if self.options.budget == "shared" else None
        ctx.replayed_from = len(examples)
        if not self.buffer or self.ratio <= 0:
            return examples
        wanted = int(round(self.ratio * len(examples)))
        if wanted >= len(self.buffer):
            replayed = [self.buffer[i % len(self.buffer)] for i in range(wanted)]
        else:
            replayed = ctx.rng.sample(self.buffer, wanted)
        return examples + replayed

    def after_update(self, ctx: Context) -> None:
        self._remember(ctx, ctx.new)

    def _remember(self, ctx: Context, rows: list[Row]) -> None:
        if self.policy == "reservoir":
            self.buffer, self.seen = reservoir(self.buffer, self.seen, rows, self.capacity, ctx.rng)
        else:
            self.buffer, self.seen = class_balanced(self.buffer, self.seen, rows, self.capacity, ctx.rng,
                                                    ctx.task.balance_key)

    def save_state(self, ctx: Context, folder: Path) -> None:
        save_buffer(folder, self.buffer, self.seen, self.policy, ctx.task.columns)


def reservoir(buffer: list[Row], seen: int, rows: list[Row], capacity: int, rng) -> tuple:  # type: ignore[no-untyped-def]
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


def class_balanced(buffer: list[Row], seen: int, rows: list[Row], capacity: int, rng,  # type: ignore[no-untyped-def]
                   key: Callable[[Row], str]) -> tuple:
    """Keep an equal share per key (a label; one with fewer rows leaves its room to the others)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in list(buffer) + list(rows):
        by_label[key(row)].append(row)
    seen += len(rows)
    if not by_label or capacity <= 0:
        return [], seen
    kept: list[Row] = []
    labels = sorted(by_label, key=lambda label: len(by_label[label]))
    room = capacity
    for i, label in enumerate(labels):
        share = room // (len(labels) - i)
        pool = by_label[label]
        take = pool if len(pool) <= share else rng.sample(pool, share)
        kept += take
        room -= len(take)
    return kept, seen


def load_buffer(state: Path | None) -> tuple[list[Row], int]:
    if state is None or not (state / BUFFER_FILE).is_file():
        return [], 0
    with pa.memory_map(str(state / BUFFER_FILE)) as source:
        table = ipc.open_file(source).read_all()
    meta = json.loads((table.schema.metadata or {}).get(b"lifelong", b"{}"))
    return table.to_pylist(), int(meta.get("seen", 0))


def save_buffer(folder: Path, buffer: list[Row], seen: int, policy: str, columns: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = (pa.Table.from_pylist([{c: row[c] for c in columns} for row in buffer]) if buffer
             else pa.table({c: pa.array([], pa.string()) for c in columns}))
    table = table.replace_schema_metadata({"lifelong": json.dumps({"seen": seen, "policy": policy})})
    schema = table.schema
    with pa.OSFile(str(folder / BUFFER_FILE), "wb") as sink, ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
