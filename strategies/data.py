"""Examples and batches: tokenise once, group by length, pad each batch only to its longest row."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: int


class Encoded:
    """Tokenised examples (token ids without padding) and their labels."""

    def __init__(self, examples: Sequence[Example], tokenizer, max_length: int) -> None:  # type: ignore[no-untyped-def]
        self.examples = list(examples)
        encoded = tokenizer([e.text for e in self.examples], truncation=True, max_length=max_length)
        self.ids: list[list[int]] = encoded["input_ids"]
        self.labels = [e.label for e in self.examples]
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        width = max(len(self.ids[i]) for i in indices)
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            ids = self.ids[i]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention,
                "labels": torch.tensor([self.labels[i] for i in indices], dtype=torch.long),
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
