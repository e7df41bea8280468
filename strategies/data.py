"""Batches: rows tokenised once, grouped by length, each batch padded only to its longest row."""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import torch

IGNORE = -100  # a target position that does not count (padding, a sub-token, a prompt token)


class Encoded:
    """Rows tokenised once by their task: token ids without padding and each row's targets, either
    one label index per row or one per token (IGNORE where a token has none)."""

    def __init__(self, ids: list[list[int]], targets: Sequence[int] | Sequence[Sequence[int]], pad_id: int) -> None:
        if len(ids) != len(targets):
            raise ValueError(f"{len(ids)} rows of ids but {len(targets)} of targets")
        self.ids = ids
        self.targets = list(targets)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A batch padded to its longest row: input_ids, attention_mask, labels and each row's `index`."""
        width = max(len(self.ids[i]) for i in indices)
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(indices), width), dtype=torch.long)
        per_token = bool(self.targets) and not isinstance(self.targets[0], int)
        labels = torch.full((len(indices), width), IGNORE, dtype=torch.long) if per_token else None
        for row, i in enumerate(indices):
            ids = self.ids[i]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            if labels is not None:
                target = self.targets[i]
                labels[row, : len(target)] = torch.tensor(target, dtype=torch.long)  # type: ignore[arg-type]
        if labels is None:
            labels = torch.tensor([self.targets[i] for i in indices], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                "index": torch.tensor(list(indices), dtype=torch.long)}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           group: int = 50) -> Iterator[list[int]]:
    """Shuffled batches of indices with similar lengths (little padding), in random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * group
    for start in range(0, len(order), span):
        block = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [block[i:i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(batches)
    yield from batches


def sequential_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Batches for evaluation: sorted by length, order restored by the caller via `index`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]
