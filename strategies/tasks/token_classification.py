"""`token_classification` (NER): each token of a sentence -> a BIO tag, from a linear head per sub-token.

Rows are `{"tokens": [str], "tags": [str]}`; the model's labels are tags (strategies/tasks/bio.py:
`O`, then `B-`/`I-` of each entity type in arrival order, so a new type grows the head by two rows).
A word's first sub-token carries its tag and is what the model predicts for it; the rest are ignored.
Tokens past `max_length` sub-tokens are predicted `O`.

A batch that labels only new entity types marks every old entity `O`, and these are the tokens
where plain fine-tuning un-learns the old types. `lwf` keeps them in two ways: `pseudo_label` gives a
word the batch marks `O` the champion's tag when that names an old type the batch labels nowhere
(so the loss no longer teaches `O` there, as ExtendNER and CFNER avoid), and distillation
(`outputs`) is on the tokens still marked `O`.

Held-out figures (strategies/tasks/bio.py `figures`): entity-level micro precision, recall and F1
(exact span and type, conlleval's reading of BIO; `entity_f1` is None when neither truth nor
predictions hold an entity), and the same per entity type. A row is `correct` when its predicted entities are exactly its true ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from strategies import models
from strategies.data import IGNORE, Encoded, sequential_batches
from strategies.tasks import bio
from strategies.tasks.abc import Prediction, Row, Task


class SlowTokenizer(TypeError):
    """The model's tokenizer cannot map sub-tokens back to words (it is not a "fast" tokenizer)."""


class TokenClassification(Task):
    name = "token_classification"

    def load(self, source: str, labels: list[str]) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoModelForTokenClassification

        return models.load_labelled(AutoModelForTokenClassification, source, labels)

    def adapter_targets(self, model: torch.nn.Module) -> list[str]:
        return models.attention_projections(model)

    def adapter_saved_modules(self, model: torch.nn.Module) -> list[str]:
        heads = [name for name in ("classifier", "score") if hasattr(model, name)]
        if not heads:
            raise ValueError(f"{type(model).__name__}: no token classification head to train alongside the adapter")
        return heads

    def encode(self, rows: Sequence[Row], tokenizer: Any, labels: list[str], max_length: int,
               targets: bool = True) -> Encoded:
        index = {label: i for i, label in enumerate(labels)}
        if targets:
            unknown = sorted({tag for row in rows for tag in row["tags"]} - set(index))
            if unknown:
                raise ValueError(f"rows tagged {', '.join(map(repr, unknown[:5]))}, not in labels")
        ids, firsts = _tokenize(rows, tokenizer, max_length)
        found = []
        for row, row_ids, first in zip(rows, ids, firsts):
            target = [IGNORE] * len(row_ids)
            for word, position in enumerate(first):
                if position is not None:
                    target[position] = index[row["tags"][word]] if targets else 0
            found.append(target)
        return Encoded(ids, found, tokenizer.pad_token_id or 0)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
        targets = batch["labels"]
        if not bool((targets != IGNORE).any()):
            return logits.float().sum() * 0.0  # nothing labelled (every word truncated away): no signal, not NaN
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), weight=weights,
                               ignore_index=IGNORE, reduction=reduction)

    def hits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """Words right among those tagged or predicted as part of an entity: O predicted O is left out,
        or a model that tags nothing would look fitted on sentences that are mostly O."""
        targets, found = batch["labels"], logits.argmax(-1)
        mask = (targets != IGNORE) & ((targets != 0) | (found != 0))
        return int((found[mask] == targets[mask]).sum()), int(mask.sum())

    def targets(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every tagged word, O included: its floor is then the share of O, which a model that
        tags nothing reaches."""
        mask = batch["labels"] != IGNORE
        return logits.argmax(-1)[mask], batch["labels"][mask]

    def outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], known: int,
                replayed: torch.Tensor | None = None) -> torch.Tensor:
        return logits[batch["labels"] == 0][:, :known]  # tag 0 is O (bio.tag_labels)

    def pseudo_label(self, teacher: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], known: list[str],
                     device: torch.device, max_length: int) -> list[Row]:
        """A word tagged O takes the teacher's tag when it names an old entity type that no row of these
        labels: where the batch labels a type itself, its O is taken at its word."""
        labelled = {kind for row in rows for kind, _, _ in bio.spans(row["tags"])}
        found = self.predict(teacher, tokenizer, rows, known, device, max_length)
        filled = []
        for row, prediction in zip(rows, found):
            tags = [guess if tag == bio.OUTSIDE and bio.type_of(guess) not in labelled else tag
                    for tag, guess in zip(row["tags"], prediction["tags"])]
            filled.append({**row, "tags": bio.repair(tags)[0]})
        return filled

    def class_weights(self, encoded: Encoded, count: int, device: torch.device) -> torch.Tensor | None:
        seen = Counter(t for target in encoded.targets for t in target if t != IGNORE)  # type: ignore[union-attr]
        total = sum(seen.values())
        weights = [total / (len(seen) * seen[i]) if seen.get(i) else 0.0 for i in range(count)]
        return torch.tensor(weights, dtype=torch.float, device=device)

    def balance_key(self, row: Row) -> str:
        kinds = sorted({kind for kind, _, _ in bio.spans(row["tags"])})
        return "+".join(kinds) if kinds else bio.OUTSIDE

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], labels: list[str],
                device: torch.device, max_length: int, batch_size: int = 64) -> list[Prediction]:
        was_training = model.training
        model.eval()
        ids, firsts = _tokenize(rows, tokenizer, max_length)
        encoded = Encoded(ids, [[IGNORE] * len(row) for row in ids], tokenizer.pad_token_id or 0)
        found: list[Prediction] = [{}] * len(rows)
        for indices in sequential_batches(encoded.lengths, batch_size):
            batch = {k: v.to(device) for k, v in encoded.collate(indices).items()}
            # over `labels` only: a teacher predicts with the labels it knew, not its grown head's new rows
            best = self.forward(model, batch)[..., : len(labels)].float().softmax(-1).cpu().max(-1)
            for row, i in enumerate(indices):
                tags, scores = [], []
                for position in firsts[i]:
                    tags.append(bio.OUTSIDE if position is None else labels[int(best.indices[row, position])])
                    scores.append(1.0 if position is None else float(best.values[row, position]))
                found[i] = {"tags": tags, "entities": entities(list(rows[i]["tokens"]), tags, scores)}
        model.train(was_training)
        return found

    def score(self, rows: Sequence[Row], predictions: Sequence[Prediction], labels: list[str]) -> dict[str, Any]:
        known = set(bio.entity_types(labels))
        unknown = Counter(kind for row in rows for kind, _, _ in bio.spans(row["tags"]) if kind not in known)
        return {**bio.figures([row["tags"] for row in rows], [p["tags"] for p in predictions]),
                "unknown_types": dict(unknown)}

    def correct(self, row: Row, prediction: Prediction) -> bool:
        return set(bio.spans(row["tags"])) == set(bio.spans(prediction["tags"]))

    def judged(self, rows: Sequence[Row], predictions: Sequence[Prediction]) -> list[Prediction]:
        """Entities only of the types the set's rows label. A batch that labels some types marks every
        other entity `O`, so a model that (rightly) still finds those would be charged a false
        positive on each: learning the next group's types would read as forgetting this one."""
        types = {kind for row in rows for kind, _, _ in bio.spans(row["tags"])}
        return [{**found, "tags": [tag if tag[2:] in types else bio.OUTSIDE for tag in found["tags"]],
                 "entities": [e for e in found.get("entities", []) if e["type"] in types]}
                for found in predictions]


def _tokenize(rows: Sequence[Row], tokenizer: Any, max_length: int) -> tuple[list[list[int]], list[list[int | None]]]:
    """Token ids of each row and, per word, the position of its first sub-token (None: truncated away,
    or a word the tokenizer makes nothing of)."""
    if not getattr(tokenizer, "is_fast", False):
        raise SlowTokenizer(f"{type(tokenizer).__name__} is not a fast tokenizer: token classification needs word_ids")
    if not rows:
        return [], []
    encoded = tokenizer([list(row["tokens"]) for row in rows], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    firsts = []
    for i, row in enumerate(rows):
        first: list[int | None] = [None] * len(row["tokens"])
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and first[word] is None:
                first[word] = position
        firsts.append(first)
    return encoded["input_ids"], firsts


def entities(tokens: list[str], tags: Sequence[str], scores: Sequence[float]) -> list[dict[str, Any]]:
    """The entities of one sentence with character offsets in its tokens joined by single spaces
    (`text` of `lifelong predict`), each scored by the mean probability of its words' tags."""
    starts, at = [], 0
    for token in tokens:
        starts.append(at)
        at += len(token) + 1
    text = " ".join(tokens)
    found = []
    for kind, first, last in bio.spans(tags):
        start, end = starts[first], starts[last - 1] + len(tokens[last - 1])
        found.append({"type": kind, "start": start, "end": end, "text": text[start:end],
                      "score": sum(scores[first:last]) / (last - first), "token_start": first, "token_end": last})
    return found
