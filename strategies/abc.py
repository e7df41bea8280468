"""The Strategy interface: a small, fixed set of hooks around the one training loop.

A strategy is registered under its config name (`replay`, `ewc`, ...) and overrides only hooks
named in HOOKS; a public method with any other name is refused when the class is defined, so a
misspelt hook can never be silently skipped. Combinations (`lora+replay`) are a `Composite`.

Each strategy reads its `strategy.<name>` section into a frozen `Options` dataclass whose fields have
no defaults: the defaults live once, in the daemon's config (daemon/strategyconfig.py), which hands the child
every key; a missing or unknown key is a ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import keyword
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from registry.errors import ConfigError
from strategies.hooks import refuse_unknown
from strategies.tasks.abc import Row, Task

HOOKS = ("prepare", "examples", "loss", "after_backward", "after_step", "after_update", "save_state")
REGISTRY: dict[str, type["Strategy"]] = {}


@dataclass(kw_only=True)
class Context:
    """What hooks see and may change: the model (LoRA wraps it), the data, where state lives. The
    task (strategies/tasks/) is how rows become inputs and outputs become a loss."""

    task: Task
    model: torch.nn.Module
    tokenizer: Any
    labels: list[str]
    new: list[Row]
    device: torch.device
    max_length: int = 128
    previous_state: Path | None = None  # the parent version's state/ folder
    seed: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    old_label_count: int = 0  # labels the model knew before this update (a prefix of `labels`): LwF distils those
    set_aside: list[Row] = field(default_factory=list)  # rows for the replay pool only
    # the rows the loop checks a small batch was learned on (strategies/loop.py): the batch's held-out
    # rows; None: its new rows
    learned_on: list[Row] | None = None
    lora: bool = False  # set by the lora strategy once it has wrapped `model` in adapters
    batch_size: int = 16  # the loop's mini-batch size, set by the loop before `prepare`
    # set by replay with budget = "shared": the new rows an epoch's steps are counted from, so the
    # rows mixed in take a share of the update's steps instead of adding to them (strategies/loop.py)
    budget_rows: int | None = None
    # set by replay: the training rows from this index on are replayed ones (a batch's `index` says
    # which rows it holds); None: no row is
    replayed_from: int | None = None


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    """A strategy without options (`finetune`)."""


O = TypeVar("O")


def read_options(cls: type[O], section: str, config: Mapping[str, Any]) -> O:
    """`strategy.<section>` as the frozen dataclass `cls`; a key named like a Python keyword
    (`lambda`) fills the field with a trailing underscore (`lambda_`)."""
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {}
    for key, value in config.items():
        name = f"{key}_" if keyword.iskeyword(key) else key
        if name not in fields:
            known = ", ".join(f.rstrip("_") for f in fields) or "none"
            raise ConfigError(f"strategy.{section}.{key}", f"not an option of {section} (options: {known})")
        values[name] = value
    missing = [f.rstrip("_") for f in fields if f not in values]
    if missing:
        raise ConfigError(f"strategy.{section}.{missing[0]}", "missing (the daemon's config passes every key)")
    return cls(**values)


class Strategy:
    """One strategy = one module `strategies/<name>.py` defining a subclass with `name` (its config
    name), `order` (its place in a combination) and `Options` (its config section, if any)."""

    name: ClassVar[str] = ""
    # where the strategy's hooks run in a combination, lowest first: lora wraps the model before
    # the others look at it; replay changes the examples last
    order: ClassVar[int] = 50
    Options: ClassVar[type] = NoOptions

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.options = read_options(self.Options, self.name, config or {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_unknown(cls, HOOKS, "strategy")
        if cls.name:
            REGISTRY[cls.name] = cls

    def prepare(self, ctx: Context) -> None:
        """Before training (wrap the model, snapshot a teacher, load state)."""

    def examples(self, ctx: Context, examples: list[Row]) -> list[Row]:
        """The training rows (replay adds remembered ones)."""
        return examples

    def loss(self, ctx: Context, batch: dict[str, torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """The loss to minimise for a batch (penalties are added here); `logits` are the task's forward outputs."""
        return loss

    def after_backward(self, ctx: Context) -> None:
        """After each backward pass, before clipping and the optimizer step (project the gradients: GEM)."""

    def after_step(self, ctx: Context) -> None:
        """After each optimizer step, the gradients still set (path integrals: SI, RWalk)."""

    def after_update(self, ctx: Context) -> None:
        """After training (estimate importances, update buffers)."""

    def save_state(self, ctx: Context, folder: Path) -> None:
        """Write what the next update needs into the new version's state/ folder (safetensors, JSON)."""


class Composite(Strategy):
    """Several strategies at once; each hook runs on every part, in order."""

    def __init__(self, parts: list[Strategy]) -> None:
        super().__init__()
        self.parts = parts

    def prepare(self, ctx: Context) -> None:
        for part in self.parts:
            part.prepare(ctx)

    def examples(self, ctx: Context, examples: list[Row]) -> list[Row]:
        for part in self.parts:
            examples = part.examples(ctx, examples)
        return examples

    def loss(self, ctx: Context, batch: dict[str, torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            loss = part.loss(ctx, batch, logits, loss)
        return loss

    def after_backward(self, ctx: Context) -> None:
        for part in self.parts:
            part.after_backward(ctx)

    def after_step(self, ctx: Context) -> None:
        for part in self.parts:
            part.after_step(ctx)

    def after_update(self, ctx: Context) -> None:
        for part in self.parts:
            part.after_update(ctx)

    def save_state(self, ctx: Context, folder: Path) -> None:
        for part in self.parts:
            part.save_state(ctx, folder)


def build(name: str, config: Mapping[str, Any]) -> Strategy:
    """`"lora+replay"` -> a Composite of the registered strategies, each with its config section
    (`config["replay"]`, ...; sections of parts not in `name` are ignored). Each part is imported
    from its own module, `strategies/<part>.py`, which registers it (`avalanche:<plugin>`:
    strategies/avalanche.py)."""
    import importlib

    parts = name.split("+")
    for part in parts:
        module = "avalanche" if part.startswith("avalanche:") else part
        if part not in REGISTRY and module.isidentifier():
            try:
                importlib.import_module(f"strategies.{module}")
            except ModuleNotFoundError:
                pass
    unknown = [p for p in parts if p not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown strategy {'+'.join(unknown)}; known: {', '.join(sorted(REGISTRY))}")
    ordered = sorted(parts, key=lambda part: REGISTRY[part].order)
    built = [REGISTRY[p](config.get(p, {}) if isinstance(config.get(p), dict) else {}) for p in ordered]
    return built[0] if len(built) == 1 else Composite(built)
