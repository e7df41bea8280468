"""`lora`: low-rank adapters (peft) on the champion; only the adapter and the head are trained.

The task names the modules wrapped by default and those trained whole (the head that grows). The
version stores the adapter and those modules; the merged weights are materialised for serving
(see registry and strategies/materialize.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.abc import Context, Strategy


@dataclass(frozen=True, kw_only=True)
class LoraOptions:
    r: int  # the adapters' rank
    alpha: float
    dropout: float
    target_modules: str | list[str]  # "auto": what the task names (attention query and value projections)


class Lora(Strategy):
    name = "lora"
    order = 0
    Options = LoraOptions

    def prepare(self, ctx: Context) -> None:
        from peft import LoraConfig, get_peft_model

        targets = self.options.target_modules
        targets = ctx.task.adapter_targets(ctx.model) if targets == "auto" else ([targets] if isinstance(targets, str) else list(targets))
        config = LoraConfig(r=self.options.r, lora_alpha=float(self.options.alpha),
                            lora_dropout=float(self.options.dropout), target_modules=targets,
                            modules_to_save=ctx.task.adapter_saved_modules(ctx.model))
        ctx.model = get_peft_model(ctx.model, config)
        ctx.lora = True
