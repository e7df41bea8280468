"""`ewc`: online Elastic Weight Consolidation.

After each update the diagonal empirical Fisher information is estimated on that update's data
(which is "old" from the next update on), one row's squared gradient at a time, added to the decayed earlier estimate, and stored with the version.
The anchor theta* is the weights the next update starts from (the champion's own, or with `lora` the
fresh adapter on the champion's merged weights), taken when it prepares, so the version does not
store a second copy of its weights. The loss then adds (lambda / 2) * sum F * (theta - theta*)^2.
A grown head is compared on its old rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from strategies.abc import Context, Strategy
from strategies.data import sequential_batches

STATE_FILE = "ewc.safetensors"


@dataclass(frozen=True, kw_only=True)
class EWCOptions:
    lambda_: float  # the penalty's weight (config key `lambda`)
    fisher_samples: int  # rows the Fisher is estimated on after each update
    decay: float  # how much of the earlier Fisher carries into the next (online EWC)


class EWC(Strategy):
    name = "ewc"
    order = 30
    Options = EWCOptions

    def prepare(self, ctx: Context) -> None:
        self.lam = float(self.options.lambda_)
        self.samples = self.options.fisher_samples
        self.decay = float(self.options.decay)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        if ctx.previous_state is not None and (ctx.previous_state / STATE_FILE).is_file():
            tensors = load_file(str(ctx.previous_state / STATE_FILE), device=str(ctx.device))
            # states written before the anchor left them also hold "anchor." tensors, not read: for
            # full weights they equal the champion's, this run's start; a lora run's were an adapter
            # since merged into the weights this run starts from
            self.fisher = {k[len("fisher."):]: v for k, v in tensors.items() if k.startswith("fisher.")}
        # prepare runs after lora has wrapped the model and before any step or checkpoint resume
        self.anchor = {n: p.detach().clone() for n, p in _trainable(ctx.model) if n in self.fisher}

    def loss(self, ctx: Context, batch: dict[str, torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        if not self.fisher:
            return loss
        return loss + self.lam / 2 * penalty(ctx.model, self.fisher, self.anchor)

    def after_update(self, ctx: Context) -> None:
        fresh = estimate_fisher(ctx, self.samples)
        merged: dict[str, torch.Tensor] = {}
        for name, value in fresh.items():
            old = self.fisher.get(name)
            if old is not None:
                value = value.clone()
                rows = _common(old, value)
                value[rows] += self.decay * old[rows]
            merged[name] = value
        self.fisher = merged

    def save_state(self, ctx: Context, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"fisher.{k}": v.contiguous().cpu() for k, v in self.fisher.items()}, str(folder / STATE_FILE))


def _trainable(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


def _common(old: torch.Tensor, new: torch.Tensor) -> tuple[slice, ...]:
    """The leading block both tensors share (a grown head keeps its old rows first)."""
    return tuple(slice(0, min(a, b)) for a, b in zip(old.shape, new.shape))


def penalty(model: torch.nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum F * (theta - theta*)^2 over every anchored parameter (old rows of a grown head)."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in _trainable(model):
        if name not in fisher or param.dim() != fisher[name].dim():
            continue
        rows = _common(fisher[name], param)
        total = total + (fisher[name][rows] * (param[rows] - anchor[name][rows]) ** 2).sum()
    return total


def estimate_fisher(ctx: Context, samples: int) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher on up to `samples` of this update's rows: the mean over rows of each
    row's squared gradient of the task's loss (one row per backward pass).

    Per row, not per mini-batch: the square of a batch's summed gradient adds every cross term
    g_i * g_j of its rows, so its scale follows the batch size and how much the rows agree (up to B
    times the per-row figure; Avalanche's EWCPlugin, which squares a batch's mean gradient, gets up
    to B times less). The per-row mean is the textbook estimate and Avalanche's at batch size 1
    (tests/test_avalanche.py), so `lambda` means the same whatever the batch size."""
    model = ctx.model
    rows = ctx.new if len(ctx.new) <= samples else ctx.rng.sample(ctx.new, samples)
    fisher = {n: torch.zeros_like(p) for n, p in _trainable(model)}
    if not rows:
        return fisher
    encoded = ctx.task.encode(rows, ctx.tokenizer, ctx.labels, ctx.max_length)
    was_training = model.training
    model.eval()
    for indices in sequential_batches(encoded.lengths, 1):
        batch = {k: v.to(ctx.device) for k, v in encoded.collate(indices).items()}
        model.zero_grad(set_to_none=True)
        ctx.task.loss(ctx.task.forward(model, batch), batch, reduction="sum").backward()
        for name, param in _trainable(model):
            if param.grad is not None:
                fisher[name] += param.grad.detach() ** 2 / len(rows)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher
