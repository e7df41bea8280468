"""`avalanche:<plugin>`: Avalanche's strategy plugins (EWC, SI, MAS, RWalk, GEM, A-GEM, LwF) driven from
our one loop, composable with ours (`lora+avalanche:si`, `replay+avalanche:mas`). Needs the extra
`lifelong[avalanche]` (avalanche-lib 0.6), imported in the training child only (strategies/avalanche_env.py).

Avalanche calls a plugin's events duck-typed, `plugin.<event>(strategy)`. `Template` is the strategy
a plugin sees: `model` (the task's model behind `Stacked`, which takes one tensor, input ids and
attention mask stacked, because Avalanche's plugins call `x.to(device)` and `model(x)`), `loss`,
`mbatch`/`mb_x`/`mb_y`/`mb_output`, `clock` (Avalanche's own Clock, the last plugin as in its
templates), `device`, `optimizer` (zero_grad only), `_criterion` (the task's loss), `train_mb_size`
and `experience.dataset` (the update's new rows, as an Avalanche tensor dataset). One update is one
experience. The loop's hooks fire the events of Avalanche's SGD template in its order:

    prepare        -> before_training, before_training_exp
    loss           -> before_training_iteration (then the gradients its reference passes left are
                      cleared), before_forward, after_forward (mb_output = the loop's logits), before_backward
    after_backward -> after_backward, before_update     (before the loop clips the gradients)
    after_step     -> after_update, after_training_iteration
    after_update   -> after_training_exp, after_training

State between updates (importances, anchors, GEM's memories, A-GEM's buffers, the clock's counters)
is written to the version's state/ as `avalanche-<plugin>.safetensors` + `.json`
(strategies/avalanche_state.py), never dill. The anchors a penalty pulls towards (EWC's saved
parameters, MAS's, RWalk's) are set to the weights the update starts from, which are the champion's
own: the same values Avalanche keeps for a full-weight run, and the right ones with `lora`, whose
fresh adapter starts from the champion's merged weights. LwF's teacher is the champion itself.

Avalanche's SynapticIntelligencePlugin computes zero importance on CPU: it stores
`param.detach().cpu().flatten()`, on CPU a view of the live parameter, so "old" and "new" weights
are the same tensor. `_SI` stores copies (tests/test_avalanche.py shows the bug and the fix).
Avalanche's RWalkPlugin divides by the largest score, zero after an update of fewer than `delta_t`
steps (NaN penalties): `_GuardedRWalkMixin` counts such a term zero and is Avalanche's otherwise.
A resumed update (after SIGTERM) restarts SI's and RWalk's path integrals at the resume point: the
steps before it count for the weights, not for the importances.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from strategies import avalanche_env, avalanche_state
from strategies.abc import Context, Strategy


# -- options: Avalanche's constructor arguments, by their Avalanche names -------------------------------
@dataclass(frozen=True, kw_only=True)
class EWCOptions:
    ewc_lambda: float
    mode: str  # "online" | "separate"
    decay_factor: float  # online mode only


@dataclass(frozen=True, kw_only=True)
class SIOptions:
    si_lambda: float
    eps: float
    excluded_parameters: list[str]


@dataclass(frozen=True, kw_only=True)
class MASOptions:
    lambda_reg: float
    alpha: float


@dataclass(frozen=True, kw_only=True)
class RWalkOptions:
    ewc_lambda: float
    ewc_alpha: float
    delta_t: int


@dataclass(frozen=True, kw_only=True)
class GEMOptions:
    patterns_per_experience: int
    memory_strength: float


@dataclass(frozen=True, kw_only=True)
class AGEMOptions:
    patterns_per_experience: int
    sample_size: int


@dataclass(frozen=True, kw_only=True)
class LwFOptions:
    alpha: float
    temperature: float


# -- the model and the strategy as Avalanche's plugins see them -------------------------------------------
class Stacked(torch.nn.Module):
    """The task's model taking one tensor: input ids and attention mask stacked on dimension 1."""

    def __init__(self, model: torch.nn.Module, task: Any) -> None:
        super().__init__()
        self.model = model
        self._task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._task.forward(self.model, {"input_ids": x[:, 0], "attention_mask": x[:, 1]}).float()


def stack(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1)


class _ZeroGrad:
    """The optimizer as plugins use it: to clear gradients (the loop owns the real one)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._model.zero_grad(set_to_none=set_to_none)


class Template:
    """The attributes of Avalanche's SupervisedTemplate that its plugins read and write."""

    def __init__(self, ctx: Context, model: Stacked, clock: Any, dataset: Any, batch_size: int) -> None:
        self.model = model
        self.device = ctx.device
        self.clock = clock
        self.optimizer = _ZeroGrad(model)
        self.train_mb_size = batch_size
        self.experience = SimpleNamespace(dataset=dataset, current_experience=clock.train_exp_counter,
                                          task_label=0, task_labels=[0])
        self.is_training = True
        self.mbatch: list[torch.Tensor] | None = None
        self.mb_output: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        task, weights = ctx.task, None
        self._criterion = lambda out, y: task.loss(out.float(), {"labels": y}, weights)

    @property
    def mb_x(self) -> torch.Tensor:
        return self.mbatch[0]  # type: ignore[index]

    @property
    def mb_y(self) -> torch.Tensor:
        return self.mbatch[1]  # type: ignore[index]

    @property
    def mb_task_id(self) -> torch.Tensor:
        return self.mbatch[-1]  # type: ignore[index]

    def criterion(self) -> torch.Tensor:
        return self._criterion(self.mb_output, self.mb_y)


def experience_dataset(ctx: Context) -> Any:
    """The update's new rows as an Avalanche dataset of (stacked ids and mask, label, task 0), every row
    padded to `max_length`: A-GEM draws one mini-batch from the memories of several updates, whose rows
    must then be of one length (padded to each update's longest row, they were not)."""
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    encoded = ctx.task.encode(ctx.new, ctx.tokenizer, ctx.labels, ctx.max_length)
    batch = encoded.collate(list(range(len(ctx.new))))
    rows = fixed_length(stack(batch), ctx.max_length, ctx.tokenizer.pad_token_id or 0)
    return _make_taskaware_tensor_classification_dataset(rows, batch["labels"], task_labels=0)


def fixed_length(rows: torch.Tensor, length: int, pad_id: int) -> torch.Tensor:
    """Stacked (ids, mask) rows [n, 2, L] right-padded (mask 0) or cut to `length` tokens."""
    if rows.shape[-1] >= length:
        return rows[..., :length].contiguous()
    pad = rows.new_zeros((*rows.shape[:-1], length - rows.shape[-1]))
    pad[:, 0] = pad_id
    return torch.cat([rows, pad], dim=-1)


# -- the strategies -----------------------------------------------------------------------------------------
class AvalancheStrategy(Strategy):
    """One Avalanche plugin as a strategy; subclasses name the plugin, its options and what it keeps."""

    plugin: ClassVar[str] = ""  # the class in avalanche.training.plugins
    kept: ClassVar[tuple[str, ...]] = ()  # the plugin's attributes carried from one update to the next
    anchors: ClassVar[tuple[str, ...]] = ()  # of those, the parameter copies set to the starting weights

    def _make_plugin(self, plugins: Any) -> Any:
        return getattr(plugins, self.plugin)(**asdict(self.options))

    @property
    def _stem(self) -> str:
        return self.name.replace(":", "-")

    def prepare(self, ctx: Context) -> None:
        avalanche_env.load()
        from avalanche.training import plugins
        from avalanche.training.plugins.clock import Clock

        self.clock = Clock()
        self.impl = self._make_plugin(plugins)
        state = avalanche_state.load(ctx.previous_state, self._stem, ctx.device) if ctx.previous_state else None
        if state is not None:
            for key, value in state["clock"].items():
                setattr(self.clock, key, value)
            self._restore(state["plugin"], ctx)
        self.wrapper = Stacked(ctx.model, ctx.task)
        self.template = Template(ctx, self.wrapper, self.clock, experience_dataset(ctx), _batch_size(ctx))
        if self.clock.train_exp_counter > 0:
            self._anchor(ctx)
        self._fire("before_training", "before_training_exp")

    def loss(self, ctx: Context, batch: dict[str, torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        t = self.template
        t.mbatch = [stack(batch), batch["labels"], torch.zeros(len(batch["labels"]), dtype=torch.long, device=ctx.device)]
        training = ctx.model.training
        self._fire("before_training_iteration")
        ctx.model.zero_grad(set_to_none=True)  # GEM, A-GEM and RWalk backpropagate reference batches there
        ctx.model.train(training)
        t.mb_output = logits
        self._fire("before_forward", "after_forward")
        t.loss = loss.clone()  # plugins add their terms in place
        self._fire("before_backward")
        return t.loss

    def after_backward(self, ctx: Context) -> None:
        self._fire("after_backward", "before_update")

    def after_step(self, ctx: Context) -> None:
        self._fire("after_update", "after_training_iteration")

    def after_update(self, ctx: Context) -> None:
        training = ctx.model.training
        self._fire("after_training_exp", "after_training")
        ctx.model.train(training)
        self.template.mbatch = self.template.mb_output = self.template.loss = None

    def save_state(self, ctx: Context, folder: Path) -> None:
        clock = {k: getattr(self.clock, k) for k in ("train_exp_counter", "train_iterations", "total_iterations")}
        avalanche_state.save(folder, self._stem, {"clock": clock, "plugin": self._kept()})

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _fire(self, *events: str) -> None:
        for event in events:
            for part in (self.impl, self.clock):  # the clock last, as in Avalanche's templates
                getattr(part, event)(self.template)

    def _kept(self) -> dict[str, Any]:
        return {name: getattr(self.impl, name) for name in self.kept}

    def _restore(self, kept: dict[str, Any], ctx: Context) -> None:
        for name, value in kept.items():
            current = getattr(self.impl, name)
            if isinstance(current, dict) and isinstance(value, dict):
                current.clear()  # keeps a defaultdict's factory
                current.update(value)
            else:
                setattr(self.impl, name, value)

    def _anchor(self, ctx: Context) -> None:
        """Point the penalty's anchors at the weights this update starts from (see the module's doc)."""
        from avalanche.training.utils import copy_params_dict

        for name in self.anchors:
            anchors = getattr(self.impl, name)
            latest = self.clock.train_exp_counter - 1
            fresh = copy_params_dict(self.wrapper)
            if isinstance(anchors, dict) and latest in anchors:  # EWC keeps one dict per experience
                anchors[latest] = fresh
            elif anchors is not None:
                setattr(self.impl, name, fresh)


def _batch_size(ctx: Context) -> int:
    return int(getattr(ctx, "batch_size", 0) or 16)


class AvalancheEWC(AvalancheStrategy):
    name = "avalanche:ewc"
    order = 31
    Options = EWCOptions
    plugin = "EWCPlugin"
    kept = ("saved_params", "importances")
    anchors = ("saved_params",)

    def _make_plugin(self, plugins: Any) -> Any:
        o = self.options
        online = o.mode == "online"
        return plugins.EWCPlugin(ewc_lambda=o.ewc_lambda, mode=o.mode, decay_factor=o.decay_factor if online else None)


class _FixedSIMixin:
    """Copies where Avalanche's SI keeps views of the live parameters on CPU (see the module's doc)."""

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_exp(strategy, **kwargs)  # type: ignore[misc]
        _own(self.ewc_data[0])  # type: ignore[attr-defined]

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_iteration(strategy, **kwargs)  # type: ignore[misc]
        _own(self.syn_data["old_theta"])  # type: ignore[attr-defined]


def _own(params: dict) -> None:
    for value in params.values():
        value.data = value.data.clone()


class AvalancheSI(AvalancheStrategy):
    name = "avalanche:si"
    order = 32
    Options = SIOptions
    plugin = "SynapticIntelligencePlugin"
    kept = ("ewc_data", "syn_data")

    def _make_plugin(self, plugins: Any) -> Any:
        fixed = type("FixedSynapticIntelligencePlugin", (_FixedSIMixin, plugins.SynapticIntelligencePlugin), {})
        o = self.options
        return fixed(si_lambda=o.si_lambda, eps=o.eps, excluded_parameters=list(o.excluded_parameters))


class AvalancheMAS(AvalancheStrategy):
    name = "avalanche:mas"
    order = 33
    Options = MASOptions
    plugin = "MASPlugin"
    kept = ("params", "importance")
    anchors = ("params",)


class _GuardedRWalkMixin:
    """RWalk's penalties without its division by zero: an update of fewer than `delta_t` steps scores
    nothing, and Avalanche's RWalkPlugin then divides the zero scores by their zero maximum (NaN). Here
    a term whose maximum is zero counts zero; otherwise the penalties are Avalanche's own."""

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, *args, **kwargs)  # type: ignore[misc]
        import torch.nn.functional as F
        from avalanche.training.utils import ParamData

        scores, importance = self.exp_scores, self.exp_importance  # type: ignore[attr-defined]
        max_score = max(float(x.data.max()) for x in scores.values())
        max_imp = max(float(x.data.max()) for x in importance.values())
        penalties = {}
        for k, score in scores.items():
            if k not in importance:
                continue
            imp = importance[k]
            term = imp.data / max_imp if max_imp > 0 else torch.zeros_like(imp.data)
            if max_score > 0:
                term = term + F.relu(score.expand(imp.data.shape)) / max_score
            penalties[k] = ParamData(k, device=imp.device, init_tensor=term)
        self.exp_penalties = penalties  # type: ignore[attr-defined]


class AvalancheRWalk(AvalancheStrategy):
    name = "avalanche:rwalk"
    order = 34
    Options = RWalkOptions
    plugin = "RWalkPlugin"
    kept = ("exp_importance", "exp_params", "exp_scores", "exp_penalties", "iter_importance")
    anchors = ("exp_params",)

    def _make_plugin(self, plugins: Any) -> Any:
        guarded = type("GuardedRWalkPlugin", (_GuardedRWalkMixin, plugins.RWalkPlugin), {})
        return guarded(**asdict(self.options))


class AvalancheGEM(AvalancheStrategy):
    name = "avalanche:gem"
    order = 35
    Options = GEMOptions
    plugin = "GEMPlugin"
    kept = ("memory_x", "memory_y", "memory_tid")


class AvalancheAGEM(AvalancheStrategy):
    name = "avalanche:agem"
    order = 36
    Options = AGEMOptions
    plugin = "AGEMPlugin"

    def _kept(self) -> dict[str, Any]:
        buffers = []
        for dataset in self.impl.buffers:
            items = [dataset[i] for i in range(len(dataset))]
            buffers.append((torch.stack([item[0] for item in items]), torch.stack([torch.as_tensor(item[1]) for item in items])))
        return {"buffers": buffers}

    def _restore(self, kept: dict[str, Any], ctx: Context) -> None:
        from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
        from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader

        impl = self.impl
        length, pad_id = ctx.max_length, ctx.tokenizer.pad_token_id or 0  # memories of updates with another max_length
        impl.buffers = [_make_taskaware_tensor_classification_dataset(fixed_length(x, length, pad_id), y, task_labels=0)
                        for x, y in kept["buffers"]]
        if impl.buffers:  # as AGEMPlugin.update_memory leaves them
            impl.buffer_dataloader = GroupBalancedInfiniteDataLoader(
                impl.buffers, batch_size=impl.sample_size // len(impl.buffers), num_workers=0, pin_memory=False,
                persistent_workers=False)
            impl.buffer_dliter = iter(impl.buffer_dataloader)


class AvalancheLwF(AvalancheStrategy):
    name = "avalanche:lwf"
    order = 37
    Options = LwFOptions
    plugin = "LwFPlugin"

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        lwf = self.impl.lwf
        lwf.expcount = self.clock.train_exp_counter
        if ctx.old_label_count:  # the champion is the teacher, on the labels it knew
            teacher = copy.deepcopy(ctx.model).eval()
            for param in teacher.parameters():
                param.requires_grad_(False)
            lwf.prev_model = Stacked(teacher, ctx.task)
            lwf.prev_classes_by_task[0] = set(range(ctx.old_label_count))

    def after_update(self, ctx: Context) -> None:
        super().after_update(ctx)
        self.impl.lwf.prev_model = None  # free the copies (the next update's teacher is its champion)
