"""Tasks: what a model learns from a row, and how a held-out set is scored.

`TASKS` is the description both processes read (standard library only, so the daemon imports it):
each task's row columns, the held-out metrics the gate may use and which way each is better. The
learning side of a task is one module, `strategies/tasks/<name>.py`, defining a `Task` subclass
(strategies/tasks/abc.py) registered under the same name; `load` imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from strategies.tasks.abc import Task

Direction = Literal["higher", "lower"]
MAX_FORGETTING = 0.02  # `gate.max_forgetting` left out, for a metric that is a share of rows or entities


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    name: str
    columns: tuple[str, ...]  # an inbox row's fields, in the Arrow files the daemon writes
    metrics: dict[str, Direction]  # held-out metrics `gate.metric` may name, and which way is better
    labelled: bool  # rows carry labels, and a new label grows the model's head

    figures: tuple[str, ...] = ()  # more held-out figures kept beside the metrics in the score tables
    strategy: str = "replay"  # `strategy.name` left "" or out
    tolerances: dict[str, float] = field(default_factory=dict)  # `gate.max_forgetting` left out, per metric
    training: dict[str, Any] = field(default_factory=dict)  # `strategy.*` settings left out, by section (StrategyConfig's otherwise)
    # a lower-is-better metric that is a per-row figure weighed in the set's figure: the per-row figure
    # of the weights (answer_loss is per answer token: a row weighs its answer tokens)
    weights: dict[str, str] = field(default_factory=dict)

    @property
    def default_metric(self) -> str:
        """The metric the gate judges when `gate.metric` is left "": the first of `metrics`."""
        return next(iter(self.metrics))

    def max_forgetting(self, metric: str) -> float:
        """The forgetting the gate tolerates in `metric` when `gate.max_forgetting` is left out."""
        return self.tolerances.get(metric, MAX_FORGETTING)


TASKS: dict[str, TaskInfo] = {
    "sequence_classification": TaskInfo(name="sequence_classification", columns=("text", "label"),
                                        metrics={"accuracy": "higher", "macro_f1": "higher"}, labelled=True),
    # labels are BIO tags (strategies/tasks/bio.py); the daemon's catalog holds the entity types
    # a held-out set's size for the gate is its true entities (`entities`): what entity F1 resolves.
    # No extra steps for a batch not yet learned (min_steps 0): on the WNUT stream (measured when they
    # followed the training rows' fit) they cost half as many samples again and made F1 swing from
    # seed to seed, for no gain beyond that spread; replayed
    # sentences share the new ones' steps (budget "shared", half a sentence per new one): 38% of
    # retraining's samples there, against 57% when they add to them, F1 within the seeds' spread
    # (BENCHMARKS.md, "Training budget on NER")
    "token_classification": TaskInfo(name="token_classification", columns=("tokens", "tags"),
                                     metrics={"entity_f1": "higher"}, labelled=True, figures=("entities",),
                                     training={"min_steps": 0, "replay": {"budget": "shared", "ratio": 0.5}}),
    # a row is the conversation before the answer (`prompt`: [{"role", "content"}], a plain
    # {"prompt", "completion"} row is one user message) and the answer (`completion`); no labels.
    # LoRA by default: adapter-only versions of a model whose whole weights are hundreds of MB; with
    # replay and LwF (distillation to the champion on the prompts and on replayed rows' answers),
    # which ended 0.2 nats of answer loss below lora+replay over four seeds of eight files (0.18,
    # 0.42 and 0.23 lower where the gate refused most of lora+replay's updates, level where it promoted
    # them all, with a smaller rise of trivia; the same tokens, about 2% more wall time; with
    # distillation on the prompts alone, 0.08 on four files), the replayed answers lowering it or
    # leaving it level on each of three seeds (BENCHMARKS.md, "chat (quick8)"); the forgetting
    # tolerance is in nats per answer token (BENCHMARKS.md, the chat stream). No extra steps for a batch not yet learned
    # (min_steps 0): on the chat stream a batch of new facts does not teach its held-out answers, so
    # the extra epochs overfit it (one update trained 8 epochs, raised its own and the earlier trivia
    # loss by about a nat and was rejected), costing 30% more tokens for lora+replay's same final
    # model and 0.39 nats of final loss for lora+lwf+replay's (BENCHMARKS.md, "chat (quick8)")
    "causal_lm": TaskInfo(name="causal_lm", columns=("prompt", "completion"),
                          metrics={"answer_loss": "lower", "exact_match": "higher"}, labelled=False,
                          figures=("perplexity", "exact_match_rows", "generated", "stopped", "looping"),
                          strategy="lora+lwf+replay", tolerances={"answer_loss": 0.05},
                          weights={"answer_loss": "answer_tokens"}, training={"min_steps": 0}),
}


class UnknownTask(ValueError):
    """`model.task` names no task of TASKS."""


def info(name: str) -> TaskInfo:
    if name not in TASKS:
        raise UnknownTask(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def load(name: str) -> "Task":
    """The task's learning side (imports torch): `strategies/tasks/<name>.py`'s registered class."""
    info(name)
    from strategies.tasks.abc import REGISTRY

    if name not in REGISTRY:
        importlib.import_module(f"strategies.tasks.{name}")
    return REGISTRY[name]()
