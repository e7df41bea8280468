"""The one training loop. Reads top to bottom: prepare -> batches -> forward -> loss -> backward -> step -> validate.

What a row becomes and how outputs become a loss is the task's (ctx.task, strategies/tasks/); the
loop knows neither labels nor logits.

Mini-batches with dynamic padding and length grouping, AdamW with decoupled weight decay (none on
biases and norms), optional L1, linear warmup then linear decay, gradient clipping, early stopping
on a validation slice of the new rows (the best weights are kept), seeded and reproducible.
`class_weights = "balanced"` weighs labels inversely to their frequency (the task counts them). bf16 autocast on CUDA.
Every setting comes from the train spec's `loop` (strategies/spec.py LoopSettings); none has a default here.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from registry.fsutil import fsync_dir, remove
from strategies.abc import Context, Strategy
from strategies.data import length_grouped_batches, sequential_batches
from strategies.distributed import Group
from strategies.spec import LoopSettings
from strategies.tasks.abc import Row

Progress = Callable[[dict], None]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run fails rather than produce a broken model."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False)


def split_validation(examples: list[Row], fraction: float, rng: random.Random) -> tuple[list[Row], list[Row]]:
    if fraction <= 0 or len(examples) < 20:
        return examples, []
    shuffled = examples[:]
    rng.shuffle(shuffled)
    cut = max(1, int(len(shuffled) * fraction))
    return shuffled[cut:], shuffled[:cut]


def planned_epochs(cfg: LoopSettings, steps_per_epoch: int) -> int:
    """The most epochs an update may take: `epochs`, or as many as reach `min_steps` optimizer steps
    when `epochs` take fewer. Past `epochs` training goes on one epoch at a time only while the batch
    is not yet learned (`learned`): a small batch the model has not learned (a new domain, fresh head
    rows) gets the steps it needs, one it learned stops at `epochs`, and a large batch reaches
    min_steps within `epochs` and costs what it did."""
    if steps_per_epoch <= 0 or cfg.min_steps <= cfg.epochs * steps_per_epoch:
        return cfg.epochs
    return math.ceil(cfg.min_steps / steps_per_epoch)


def planned_steps(cfg: LoopSettings, steps_per_epoch: int, budget_steps: int | None = None) -> tuple[int, int]:
    """(base, total): `base`, the optimizer steps of `epochs`, and `total`, the most the update may
    take (past `base` only while the batch is not learned, see `planned_epochs`). `budget_steps`,
    when a strategy shares the new rows' budget (replay.budget = "shared"), is what an epoch of the
    new rows alone takes: `epochs` of it are the update's steps however many rows it mixed in, and
    `min_steps` counts steps, not whole epochs."""
    if budget_steps is None:
        base = max(1, steps_per_epoch * cfg.epochs)
        return base, max(base, steps_per_epoch * planned_epochs(cfg, steps_per_epoch))
    base = max(1, min(steps_per_epoch, budget_steps) * cfg.epochs)
    return base, max(base, cfg.min_steps)


def learned(cfg: LoopSettings, accuracy: float, floor: float) -> bool:
    """The batch is learned: the model gets its own rows right at least `lift_target` of the way from
    the floor (what always saying the rows' most common target scores) to all of them."""
    return accuracy >= floor + cfg.lift_target * (1 - floor)


class Interrupted(RuntimeError):
    """Training stopped on request (SIGTERM) after writing a checkpoint; the next attempt resumes."""


def train(ctx: Context, strategy: Strategy, cfg: LoopSettings, on_progress: Progress | None = None,
          checkpoints: Checkpoints | None = None, group: Group = Group()) -> dict:
    """Train `ctx.model` in place; with a data-parallel `group`, every rank calls this with the same rows."""
    if cfg.lr == "auto":
        raise ValueError("loop.lr = \"auto\" is resolved to a rate before training (strategies/child.py search_lr)")
    seed_everything(ctx.seed)
    ctx.batch_size = cfg.batch_size
    ctx.model = ctx.model.to(ctx.device)  # before prepare: a teacher copy or an adapter lands on the device too
    strategy.prepare(ctx)
    model = ctx.model.to(ctx.device)
    forward = group.wrap(model, ctx.device)
    train_new, validation = split_validation(ctx.new, cfg.val_fraction, ctx.rng)
    examples = strategy.examples(ctx, train_new)
    task = ctx.task
    encoded = task.encode(examples, ctx.tokenizer, ctx.labels, ctx.max_length)
    optimizer = _optimizer(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]  # fixed once the strategy has prepared
    steps_per_epoch = math.ceil(math.ceil(len(encoded) / cfg.batch_size) / group.world)
    budget = None if ctx.budget_rows is None else math.ceil(math.ceil(ctx.budget_rows / cfg.batch_size) / group.world)
    base, total = planned_steps(cfg, steps_per_epoch, budget)
    # past `base`, a round at a time while the batch is not learned: an epoch, or in a shared budget
    # the steps of an epoch of the new rows alone
    cycle = max(1, steps_per_epoch if budget is None else min(steps_per_epoch, budget))
    # the most epochs it may take: a round that ends within an epoch ends that epoch
    epochs = math.ceil(base / steps_per_epoch) + math.ceil((total - base) / cycle) if steps_per_epoch else cfg.epochs
    scheduler = _schedule(optimizer, cfg.warmup_ratio, base, cycle)
    weights = task.class_weights(encoded, len(ctx.labels), ctx.device) if cfg.class_weights == "balanced" else None
    autocast = _autocast(ctx.device, cfg.precision)
    lengths = encoded.lengths

    # `rounds`: the accuracy on the batch's held-out rows (strategies/abc.py Context.learned_on) where
    # `base` ended and after each round past it; each but the one that ended training added a round
    progress = {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "tokens": 0, "best_score": -math.inf, "stale": 0,
                "hits": 0, "scored": 0, "rounds": [], "floor": None}
    best_state = None
    if checkpoints is not None:
        resumed = checkpoints.load(model, optimizer, scheduler)
        if resumed is not None:
            progress, best_state = resumed
            progress = {"hits": 0, "scored": 0, "tokens": 0, "rounds": [], "floor": None, **progress}
            if on_progress:
                on_progress({"event": "resumed", "epoch": progress["epoch"] + 1, "step": progress["step"]})
    started = time.perf_counter()
    done_samples = progress["samples"]

    def until() -> int:  # the steps this update takes unless a round more is needed
        return min(total, base + cycle * len(progress["rounds"])) if progress["rounds"] else base

    for epoch in range(progress["epoch"], epochs):
        model.train()
        # each epoch's batch order depends only on (seed, epoch), so a resumed run repeats it
        batches = list(length_grouped_batches(lengths, cfg.batch_size, random.Random(f"{ctx.seed}:{epoch}")))
        for number, shares in enumerate(group.steps(batches)):
            if number < progress["batch"]:
                continue  # done before the interruption
            if progress["step"] >= until():
                break  # a shared budget, or a round past it, ends within an epoch
            indices = shares[group.rank]
            batch = {k: v.to(ctx.device) for k, v in encoded.collate(indices).items()}
            with autocast:
                logits = task.forward(forward, batch).float()
            loss = strategy.loss(ctx, batch, logits, task.loss(logits, batch, weights))
            hits, scored = task.hits(logits.detach(), batch)
            if cfg.l1:
                loss = loss + cfg.l1 * sum(p.abs().sum() for p in trainable)
            # one collective a step: a non-finite loss on any rank, a stop request on any rank
            stop_requested = checkpoints is not None and checkpoints.stop_requested()
            non_finite, stop = group.any(not torch.isfinite(loss), stop_requested)
            if non_finite:
                raise NonFiniteLoss(f"loss is {loss.item()} at step {progress['step'] + 1}")
            loss.backward()
            strategy.after_backward(ctx)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            strategy.after_step(ctx)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(batch=number + 1, step=progress["step"] + 1,
                            samples=progress["samples"] + sum(len(share) for share in shares),
                            tokens=progress["tokens"] + sum(lengths[i] for share in shares for i in share),
                            hits=progress["hits"] + hits, scored=progress["scored"] + scored)
            if on_progress:
                elapsed = time.perf_counter() - started
                on_progress({"event": "step", "epoch": epoch + 1, "step": progress["step"], "steps": total,
                             "loss": round(loss.item(), 5),
                             "samples_per_second": round((progress["samples"] - done_samples) / elapsed, 2) if elapsed else None})
            if stop and checkpoints is not None:  # after the step, so the checkpoint holds it
                if group.main:
                    checkpoints.save(model, optimizer, scheduler, dict(progress, epoch=epoch), best_state)
                group.barrier()
                raise Interrupted(f"stopped at step {progress['step']}; checkpoint written")
        stopped_early = False
        extra = bool(progress["rounds"])  # past `base`, judged on the batch's rows, not the validation loss
        if validation:
            # validation loss, not accuracy: it keeps telling epochs apart once accuracy saturates
            score = -_loss(model, ctx, validation)
            if on_progress:
                on_progress({"event": "validation", "epoch": epoch + 1, "loss": -score})
            if not extra and score >= progress["best_score"]:
                progress.update(best_score=score, stale=0)
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            elif not extra:
                progress["stale"] += 1
                stopped_early = bool(cfg.early_stopping_patience) and progress["stale"] >= cfg.early_stopping_patience
        hits, scored = group.sum(progress["hits"], progress["scored"])
        fit = hits / scored if scored else None
        if on_progress:
            on_progress({"event": "epoch", "epoch": epoch + 1, "epochs": epochs, "fit": fit})
        progress.update(epoch=epoch + 1, batch=0, hits=0, scored=0, fit=fit)
        finished = stopped_early or progress["step"] >= total == base  # no round past `base` allowed
        if not finished and progress["step"] >= until():
            if not extra and best_state is not None:  # `base` ends here: its best weights go on
                _restore(model, best_state)
            accuracy, floor = _accuracy(model, ctx, ctx.learned_on or ctx.new)
            if round(accuracy, 4) > max(progress["rounds"], default=-1.0):  # the best round's weights are kept
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            progress["rounds"].append(round(accuracy, 4))
            progress["floor"] = round(floor, 4)
            if on_progress:
                on_progress({"event": "learned", "epoch": epoch + 1, "accuracy": accuracy, "floor": floor})
            # every rank judges the same rows; one that finds the batch learned ends it for all
            # no patience here: on a batch of a new source, the score often dips for a round or two
            # (class_weights pulls the model off the majority label) before it rises past the target
            finished, = group.any(learned(cfg, accuracy, floor) or progress["step"] >= total)
        if checkpoints is not None and group.main:
            checkpoints.save(model, optimizer, scheduler, progress, best_state)
        if finished:
            break
    if best_state is not None:
        _restore(model, best_state)
    seconds = time.perf_counter() - started
    model.eval()
    strategy.after_update(ctx)
    samples = progress["samples"] - done_samples
    parallel = {"processes": group.world, "replicas_in_sync": group.in_sync(model)} if group.active else {}
    rounds = {"learned": {"floor": progress["floor"], "accuracy": progress["rounds"]}} if progress["rounds"] else {}
    return {**parallel, "steps": progress["step"], "train_samples": progress["samples"],
            "train_tokens": progress["tokens"], "seconds": round(seconds, 3),
            "samples_per_second": round(samples / seconds, 2) if seconds else None,
            "validation_loss": -progress["best_score"] if validation and progress["best_score"] > -math.inf else None,
            "epochs_planned": epochs, "epochs_run": progress["epoch"], "fit": progress.get("fit"), **rounds}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])


class Checkpoints:
    """Resumable training state in a folder, replaced so that a kill at any instant leaves one whole
    checkpoint: trainable and best weights as safetensors, optimizer and scheduler state (tensors and
    numbers only, read back with weights_only=True), and progress as JSON, written last.

    A save writes `<folder>.tmp` in full and fsyncs it, moves the previous checkpoint aside to
    `<folder>.old`, renames the new one into place, then drops the old. Killed between the two
    renames, `load` finds the previous checkpoint under `.old`."""

    def __init__(self, folder: Path, stop: Callable[[], bool] = lambda: False,
                 on_save: Callable[[Path], None] | None = None) -> None:
        self.folder = folder
        self.stop_requested = stop
        self.on_save = on_save  # after each whole save (a remote run copies it to its store)

    @property
    def _old(self) -> Path:
        return self.folder.with_name(self.folder.name + ".old")

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, progress: dict,  # type: ignore[no-untyped-def]
             best_state: dict | None) -> None:
        from safetensors.torch import save_file

        tmp = self.folder.with_name(self.folder.name + ".tmp")
        remove(tmp)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad},
                  str(tmp / "weights.safetensors"))
        if best_state:
            save_file({n: t.contiguous().cpu() for n, t in best_state.items()}, str(tmp / "best.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps({k: (None if v == -math.inf else v) for k, v in progress.items()}))
        for written in tmp.iterdir():
            with open(written, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(tmp)
        old = self._old
        if (self.folder / "progress.json").is_file():
            remove(old)
            os.replace(self.folder, old)
        else:
            remove(self.folder)  # a partial folder never loads; `.old`, if any, is the last whole one
        os.replace(tmp, self.folder)
        fsync_dir(self.folder.parent)
        remove(old)
        if self.on_save is not None:
            self.on_save(self.folder)

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> tuple[dict, dict | None] | None:  # type: ignore[no-untyped-def]
        from safetensors.torch import load_file

        folder = next((f for f in (self.folder, self._old) if (f / "progress.json").is_file()), None)
        if folder is None:
            return None
        weights = load_file(str(folder / "weights.safetensors"))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in weights:
                    param.copy_(weights[name].to(param.device))
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = json.loads((folder / "progress.json").read_text())
        progress["best_score"] = -math.inf if progress["best_score"] is None else progress["best_score"]
        best = folder / "best.safetensors"
        return progress, (load_file(str(best)) if best.is_file() else None)


def _optimizer(model: torch.nn.Module, cfg: LoopSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _schedule(optimizer: torch.optim.Optimizer, warmup_ratio: float, base: int, cycle: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear decay to zero over the `base` steps of `epochs`; each round of
    `cycle` steps past them, taken while a small batch is not learned, warms up and decays to zero
    again. An update that stops at `epochs` so follows exactly the schedule it always had."""
    def shape(step: int, length: int) -> float:
        warmup = int(warmup_ratio * length)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (length - step) / max(1, length - warmup))

    def factor(step: int) -> float:
        return shape(step, base) if step < base else shape((step - base) % cycle, cycle)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    use_bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


@torch.no_grad()
def _evaluated(model: torch.nn.Module, ctx: Context, examples: list[Row]):  # type: ignore[no-untyped-def]
    """(batch, logits) over `examples` in evaluation mode, 64 rows at a time."""
    was_training = model.training
    model.eval()
    encoded = ctx.task.encode(examples, ctx.tokenizer, ctx.labels, ctx.max_length)
    try:
        for indices in sequential_batches(encoded.lengths, 64):
            batch = {k: v.to(ctx.device) for k, v in encoded.collate(indices).items()}
            yield batch, ctx.task.forward(model, batch).float()
    finally:
        model.train(was_training)


def _loss(model: torch.nn.Module, ctx: Context, examples: list[Row]) -> float:
    """The mean loss per row (unweighted) on `examples`."""
    total = sum(ctx.task.loss(logits, batch, reduction="sum").item() for batch, logits in _evaluated(model, ctx, examples))
    return total / len(examples)


def _accuracy(model: torch.nn.Module, ctx: Context, examples: list[Row]) -> tuple[float, float]:
    """(accuracy, floor) on `examples`: the share of their targets the model gets right, and the
    share of the most common one (with a single target value, a uniform guess over the outputs)."""
    right, wanted, classes = 0, [], 1
    for batch, logits in _evaluated(model, ctx, examples):
        predicted, targets = ctx.task.targets(logits, batch)
        right += int((predicted == targets).sum())
        wanted.append(targets.cpu())
        classes = logits.size(-1)
    counts = torch.bincount(torch.cat(wanted)) if wanted else torch.zeros(0)
    count = int(counts.sum())
    if not count:
        return 1.0, 0.0
    floor = int(counts.max()) / count if int((counts > 0).sum()) > 1 else 1 / classes
    return right / count, floor
