"""`lwf`: Learning without Forgetting, distilling the champion's own predictions on the new data.

The loss adds alpha * T^2 * KL(teacher || student) on the labels the champion knew, with both
softmaxes at temperature T, over the task's predictive outputs: one per row for a classifier; for
token classification the tokens the batch marks `O`; for a language model the prompt positions, and
the answer positions of the rows replay mixed in (`Context.replayed_from`: the champion's answers to
earlier batches; rows of a batch given up after failed attempts, which replay mixes in too, are
distilled as well though the champion never trained on them: their cross-entropy still teaches
them). The KL is a mean over the positions distilled. Before training, what the new rows leave
unlabelled is filled from the champion's predictions (the task's `pseudo_label`): a batch labelling
only new entity types marks the old ones `O`, and a hard `O` there would outweigh any distillation
(at alpha 1 the two pull a token half each way); a classifier's rows are left as they are.

The teacher is the model the update starts from. Combined with `lora`, that is the adapted model with
its adapters switched off, run in evaluation mode: the weights under the adapters, and the original of
each module peft trains a copy of (a grown head), are the champion's and never train. No second copy
of the model, which for a language model is most of the memory an update takes. Otherwise the
teacher is a frozen copy made before training.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strategies.abc import Context, Strategy
from strategies.tasks import TASKS


@dataclass(frozen=True, kw_only=True)
class LwFOptions:
    alpha: float  # the distillation term's weight
    temperature: float  # both softmaxes' temperature T


class LwF(Strategy):
    name = "lwf"
    order = 20
    Options = LwFOptions

    def prepare(self, ctx: Context) -> None:
        self.alpha = float(self.options.alpha)
        self.temperature = float(self.options.temperature)
        self.known = ctx.old_label_count
        # a task without labels (causal_lm) distils the model it starts from (champion or base) over
        # its whole vocabulary, on the positions its `outputs` names (the prompts, and replayed rows'
        # answers)
        self.distil = bool(self.known or not TASKS[ctx.task.name].labelled)
        self.teacher, self.adapted = None, None
        if self.distil and ctx.lora:
            self.adapted = ctx.model  # the champion under its adapters (lora prepares first)
        elif self.distil:
            self.teacher = copy.deepcopy(ctx.model).eval()
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        if self.distil:
            with self._champion() as teacher:
                ctx.new = ctx.task.pseudo_label(teacher, ctx.tokenizer, ctx.new, ctx.labels[: self.known], ctx.device,
                                                ctx.max_length)

    @contextmanager
    def _champion(self) -> Iterator[torch.nn.Module]:
        """The teacher, in evaluation mode: the frozen copy, or the adapted model with its adapters off."""
        if self.adapted is None:
            yield self.teacher  # type: ignore[misc]
            return
        model, was = self.adapted, self.adapted.training
        model.eval()
        try:
            with model.disable_adapter():
                yield model
        finally:
            model.train(was)

    def loss(self, ctx: Context, batch: dict[str, torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        if not self.distil:
            return loss
        replayed = None if ctx.replayed_from is None else batch["index"] >= ctx.replayed_from
        with torch.no_grad(), self._champion() as model:
            teacher = ctx.task.outputs(ctx.task.forward(model, batch).float(), batch, self.known, replayed)
        student = ctx.task.outputs(logits, batch, self.known, replayed)
        if not student.shape[0]:
            return loss  # no position to distil in this batch (a batch of sentences tagged all through)
        t = self.temperature
        distill = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                           reduction="batchmean", log_target=True) * t * t
        return loss + self.alpha * distill

    def after_update(self, ctx: Context) -> None:
        self.teacher, self.adapted = None, None  # free the copy
