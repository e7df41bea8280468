"""The one training loop. Reads top to bottom: prepare -> batches -> forward -> loss -> step -> validate.

Mini-batches with dynamic padding and length grouping, AdamW with decoupled weight decay (none on
biases and norms), optional L1, linear warmup then linear decay, gradient clipping, early stopping
on a validation slice of the new rows (the best weights are kept), seeded and reproducible.
`class_weights = "balanced"` weighs labels inversely to their frequency. bf16 autocast on CUDA.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from strategies.abc import Context, Strategy
from strategies.data import Encoded, Example, length_grouped_batches, sequential_batches

Progress = Callable[[dict], None]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run fails rather than produce a broken model."""


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    epochs: int = 2
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    l1: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    early_stopping_patience: int = 2
    class_weights: str = "none"
    val_fraction: float = 0.1
    precision: str = "auto"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False)


def split_validation(examples: list[Example], fraction: float, rng: random.Random) -> tuple[list[Example], list[Example]]:
    if fraction <= 0 or len(examples) < 20:
        return examples, []
    shuffled = examples[:]
    rng.shuffle(shuffled)
    cut = max(1, int(len(shuffled) * fraction))
    return shuffled[cut:], shuffled[:cut]


def train(ctx: Context, strategy: Strategy, cfg: LoopConfig, on_progress: Progress | None = None) -> dict:
    seed_everything(ctx.seed)
    strategy.prepare(ctx)
    model = ctx.model.to(ctx.device)
    train_new, validation = split_validation(ctx.new, cfg.val_fraction, ctx.rng)
    examples = strategy.examples(ctx, train_new)
    encoded = Encoded(examples, ctx.tokenizer, ctx.max_length)
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = max(1, steps_per_epoch * cfg.epochs)
    scheduler = _schedule(optimizer, int(cfg.warmup_ratio * total), total)
    weights = _class_weights(encoded.labels, len(ctx.labels), ctx.device) if cfg.class_weights == "balanced" else None
    autocast = _autocast(ctx.device, cfg.precision)
    lengths = [len(ids) for ids in encoded.ids]

    best_score, best_state, stale, step, samples = -math.inf, None, 0, 0, 0
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        for indices in length_grouped_batches(lengths, cfg.batch_size, ctx.rng):
            batch = {k: v.to(ctx.device) for k, v in encoded.collate(indices).items()}
            with autocast:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits.float(), batch["labels"], weight=weights)
            loss = strategy.loss(ctx, batch, logits.float(), loss)
            if cfg.l1:
                loss = loss + cfg.l1 * sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} at step {step + 1}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += len(indices)
            if on_progress:
                elapsed = time.perf_counter() - started
                on_progress({"event": "step", "epoch": epoch + 1, "step": step, "steps": total, "loss": round(loss.item(), 5),
                             "samples_per_second": round(samples / elapsed, 2) if elapsed else None})
        if validation:
            # validation loss, not accuracy: it keeps telling epochs apart once accuracy saturates
            score = -_loss(model, ctx, validation)
            if on_progress:
                on_progress({"event": "validation", "epoch": epoch + 1, "loss": -score})
            if score >= best_score:
                best_score, stale = score, 0
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            else:
                stale += 1
                if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                    break
    if best_state is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in best_state:
                    param.copy_(best_state[name])
    seconds = time.perf_counter() - started
    model.eval()
    strategy.after_update(ctx)
    return {"steps": step, "train_samples": samples, "seconds": round(seconds, 3),
            "samples_per_second": round(samples / seconds, 2) if seconds else None,
            "validation_loss": -best_score if validation else None, "epochs_run": epoch + 1}


def _optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _class_weights(labels: list[int], count: int, device: torch.device) -> torch.Tensor:
    seen = Counter(labels)
    total = len(labels)
    weights = [total / (len(seen) * seen[i]) if seen.get(i) else 0.0 for i in range(count)]
    return torch.tensor(weights, dtype=torch.float, device=device)


def _autocast(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    use_bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


@torch.no_grad()
def _loss(model: torch.nn.Module, ctx: Context, examples: list[Example]) -> float:
    was_training = model.training
    model.eval()
    encoded = Encoded(examples, ctx.tokenizer, ctx.max_length)
    total = 0.0
    for indices in sequential_batches([len(ids) for ids in encoded.ids], 64):
        batch = {k: v.to(ctx.device) for k, v in encoded.collate(indices).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total += F.cross_entropy(logits.float(), batch["labels"], reduction="sum").item()
    model.train(was_training)
    return total / len(examples)
