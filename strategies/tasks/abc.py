"""The Task interface: everything the loop, the strategies and the evaluation need to know about a
kind of model, as a fixed set of hooks.

A row is a dict of the task's columns (strategies/tasks/__init__.py TASKS), labels as strings. The
loop asks the task to encode rows once (token ids and targets, padded per batch by
strategies/data.py), to run the forward pass and the loss; strategies ask it for the outputs to
distil (LwF), the loss whose gradients estimate a Fisher (EWC), the modules an adapter wraps and
the ones it trains whole (LoRA), the key rows are balanced on (replay); the evaluation asks it to
predict, to score and to say whether one prediction is right. A subclass defines only hooks named in
HOOKS, and every one of them but those of DEFAULTED: a misspelt or a missing hook is a TypeError when
the class is defined.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from strategies.data import Encoded
from strategies.hooks import refuse_unknown
from strategies.tasks import TASKS

Row = dict[str, Any]
Prediction = dict[str, Any]  # JSON-able: what `lifelong predict` shows for one row

HOOKS = ("load", "encode", "forward", "loss", "hits", "targets", "outputs", "class_weights", "predict", "score", "correct",
         "balance_key", "adapter_targets", "adapter_saved_modules", "pseudo_label", "judged")
DEFAULTED = ("hits", "pseudo_label", "judged")  # hooks whose base version is right for a task that has nothing to add
REGISTRY: dict[str, type["Task"]] = {}


class Task:
    """One task = one module `strategies/tasks/<name>.py` defining a subclass with `name` (a key of TASKS)."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_unknown(cls, HOOKS, "task")
        if not cls.name:
            return
        if cls.name not in TASKS:
            raise TypeError(f"{cls.__name__}.name {cls.name!r} is not described in strategies/tasks TASKS")
        missing = [hook for hook in HOOKS if hook not in DEFAULTED and getattr(cls, hook) is getattr(Task, hook)]
        if missing:
            raise TypeError(f"{cls.__name__} does not define {', '.join(missing)}")
        REGISTRY[cls.name] = cls

    @property
    def metrics(self) -> dict[str, str]:
        return dict(TASKS[self.name].metrics)

    @property
    def columns(self) -> tuple[str, ...]:
        return TASKS[self.name].columns

    # -- the model -------------------------------------------------------------------------------
    def load(self, source: str, labels: list[str]) -> tuple[torch.nn.Module, Any]:
        """(model, tokenizer) from a model directory (or `embedded:*`), its head sized for `labels`:
        labels the model knows keep their weights, new ones are added after them."""
        raise NotImplementedError

    def adapter_targets(self, model: torch.nn.Module) -> list[str]:
        """The module names LoRA wraps when `strategy.lora.target_modules = "auto"`."""
        raise NotImplementedError

    def adapter_saved_modules(self, model: torch.nn.Module) -> list[str]:
        """Modules trained whole next to the adapter and saved with it (a head that grows)."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------------
    def encode(self, rows: Sequence[Row], tokenizer: Any, labels: list[str], max_length: int,
               targets: bool = True) -> Encoded:
        """Rows tokenised once; `targets=False` for rows without labels (predicting)."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's raw outputs (logits) for a collated batch."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None,
             reduction: str = "mean") -> torch.Tensor:
        """The training loss of a batch (`reduction="sum"`: summed over rows, for validation and Fisher)."""
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """How many of the batch's targets the outputs got right, of how many (the loop's fit). By
        default every one of `targets`."""
        predicted, wanted = self.targets(logits, batch)
        return int((predicted == wanted).sum()), len(wanted)

    def targets(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted, wanted): every target of the batch the loss scores, flattened, beside the
        outputs' most likely value there (the loop's check that a batch was learned, against the
        share of its most common target: strategies/loop.py `learned`)."""
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], known: int,
                replayed: torch.Tensor | None = None) -> torch.Tensor:
        """The predictive distributions to distil, as (positions, classes) logits over the `known`
        labels the teacher had; `replayed` marks the batch's rows replayed from earlier batches."""
        raise NotImplementedError

    def pseudo_label(self, teacher: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], known: list[str],
                     device: torch.device, max_length: int) -> list[Row]:
        """The rows with what they leave unlabelled filled in from the teacher's predictions over the
        `known` labels it had (`lwf`). By default nothing: every row's label is given."""
        return list(rows)

    def class_weights(self, encoded: Encoded, count: int, device: torch.device) -> torch.Tensor | None:
        """Loss weights inversely proportional to each label's frequency (`class_weights = "balanced"`)."""
        raise NotImplementedError

    def balance_key(self, row: Row) -> str:
        """What class-balanced replay keeps an equal share of."""
        raise NotImplementedError

    # -- evaluation ------------------------------------------------------------------------------
    def predict(self, model: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], labels: list[str],
                device: torch.device, max_length: int, batch_size: int = 64) -> list[Prediction]:
        """One prediction per row, in order; `labels` names the model's outputs."""
        raise NotImplementedError

    def score(self, rows: Sequence[Row], predictions: Sequence[Prediction], labels: list[str]) -> dict[str, Any]:
        """The held-out figures: `rows`, every metric of TASKS[name], and detail for people."""
        raise NotImplementedError

    def correct(self, row: Row, prediction: Prediction) -> bool:
        """Whether one prediction is right: the gate's sign test counts rows that changed."""
        raise NotImplementedError

    def judged(self, rows: Sequence[Row], predictions: Sequence[Prediction]) -> list[Prediction]:
        """The predictions as a held-out set can judge them, before `score` and `correct`: a set
        scores only what its rows label. By default all of it: every row carries its whole answer."""
        return list(predictions)
