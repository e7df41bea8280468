"""The train spec: the one message from the daemon to the training child, and the failures sent back.

Frozen, keyword-only dataclasses without defaults, written as JSON by the daemon and checked by the
child on load: a missing, unknown or mistyped key is a `SpecError` naming it, never a `.get()`
fallback. Standard library only: this is the one module of `strategies/` the daemon imports.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from registry.errors import LifelongError
from strategies.tasks import TASKS

# -- what crosses back: exit codes and the kinds of a "failed" event ---------------------------------
EXIT_FAILED = 1  # a "failed" line says why
EXIT_INTERRUPTED = 75  # stopped by SIGTERM after a checkpoint: running the same spec again resumes


class Failure(str, enum.Enum):
    """The `kind` of a training failure: the child's "failed" event, or what the daemon saw happen."""

    EXCEPTION = "exception"
    OUT_OF_MEMORY = "out_of_memory"
    NON_FINITE_LOSS = "non_finite_loss"
    INVALID_SPEC = "invalid_spec"
    KILLED = "killed"  # by a signal, seen by the daemon (the child cannot report it)

    def __str__(self) -> str:
        return self.value


def failed_event(exc: BaseException, kind: Failure | None = None) -> dict[str, str]:
    """The "failed" line a child process prints for `exc` (out of memory told apart from the rest)."""
    import traceback

    if kind is None:
        oom = "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
        kind = Failure.OUT_OF_MEMORY if oom else Failure.EXCEPTION
    return {"event": "failed", "kind": kind.value, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:]}


class SpecError(LifelongError, ValueError):
    """The spec is not a valid TrainSpec. `key` is the dotted key at fault."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"invalid train spec: {key}: {message}")


# -- what crosses over: the spec ----------------------------------------------------------------------
Precision = Literal["auto", "fp32", "bf16"]  # fp16 would need a GradScaler; it is refused, not ignored
ClassWeights = Literal["none", "balanced"]


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """Everything the training loop reads (strategies/loop.py); the values come from the daemon's config."""

    epochs: int
    min_steps: int  # past `epochs`, train up to this many steps while the batch is not learned
    lift_target: float  # how far above its floor the model must score on the new rows to stop at `epochs`
    batch_size: int
    lr: float | Literal["auto"]  # "auto": the child searches a grid first
    weight_decay: float
    l1: float
    warmup_ratio: float
    max_grad_norm: float
    early_stopping_patience: int
    class_weights: ClassWeights
    val_fraction: float
    precision: Precision

    def __post_init__(self) -> None:
        _check(self, "loop")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SpecError(f"loop.{name}", f"must be at least 1, not {getattr(self, name)}")
        if self.lr != "auto" and not self.lr > 0:
            raise SpecError("loop.lr", f"must be positive or \"auto\", not {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise SpecError("loop.val_fraction", f"must be in [0, 1), not {self.val_fraction}")


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    name: str  # "replay", "lora+replay", ...
    options: dict[str, dict[str, Any]]  # every strategy's config section, each key present

    def __post_init__(self) -> None:
        _check(self, "strategy")


@dataclass(frozen=True, kw_only=True)
class DataPaths:
    """Arrow files (text, label) written by the daemon, and how many rows each holds."""

    train: str
    train_rows: int
    eval: dict[str, str]  # held-out set name (a batch number, "canary") -> file
    eval_rows: dict[str, int]
    set_aside: str | None  # train rows of batches given up after schedule.max_attempts: replay pool only
    set_aside_rows: int
    set_aside_batches: list[int]

    def __post_init__(self) -> None:
        _check(self, "data")


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    task: str  # a key of strategies/tasks TASKS
    batch: int
    labels: list[str]
    seed: int
    device: str  # auto | cpu | cuda[:N] | mps
    num_processes: int  # > 1: torchrun starts that many data-parallel ranks
    max_length: int
    base: str  # the model to start from (the champion's model directory, or model.base)
    old_label_count: int  # labels the base already knows (a prefix of `labels`)
    parent: str | None  # the champion's version
    parent_state: str | None  # its state/ folder
    champion: str | None  # its model directory, scored side by side with the candidate
    champion_predictions: str | None  # its predictions kept from when it was the candidate
    strategy: StrategySpec
    loop: LoopSettings
    data: DataPaths
    out: str  # the new version's files
    serving: str  # merged weights of a LoRA candidate
    checkpoint: str | None
    results: str

    def __post_init__(self) -> None:
        _check(self, "")
        if self.task not in TASKS:
            raise SpecError("task", f"{self.task!r} is not one of {', '.join(TASKS)}")
        if not self.labels and TASKS[self.task].labelled:
            raise SpecError("labels", "empty")
        if not 0 <= self.old_label_count <= len(self.labels):
            raise SpecError("old_label_count", f"{self.old_label_count} is not between 0 and {len(self.labels)}")
        if self.num_processes < 1:
            raise SpecError("num_processes", f"must be at least 1, not {self.num_processes}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise SpecError("(document)", f"not JSON: {exc}") from None
        return _build(cls, document, "")

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> "TrainSpec":
        return cls.from_json(Path(path).read_text())


# -- validation -----------------------------------------------------------------------------------------
def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, document: Any, prefix: str) -> Any:
    if not isinstance(document, dict):
        raise SpecError(prefix or "(document)", f"expected an object, got {type(document).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(document) - set(names))
    if unknown:
        raise SpecError(_key(prefix, unknown[0]), "unknown key")
    missing = [name for name in names if name not in document]
    if missing:
        raise SpecError(_key(prefix, missing[0]), "missing")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in names:
        hint = hints[name]
        value = document[name]
        values[name] = _build(hint, value, _key(prefix, name)) if dataclasses.is_dataclass(hint) else value
    return cls(**values)


def _check(instance: Any, prefix: str) -> None:
    """Every field of `instance` has its declared type (a nested spec is checked when it is built)."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if not _matches(value, hints[f.name]):
            raise SpecError(_key(prefix, f.name), f"expected {_describe(hints[f.name])}, got {value!r:.80}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return " or ".join(json.dumps(arg) for arg in args)
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint)).replace("str", "string").replace("int", "integer")
