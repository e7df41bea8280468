"""`lora`: low-rank adapters (peft) on the champion; only the adapter and the head are trained.

The version stores the adapter and the (grown) head; the merged weights are materialised for
serving (see registry and strategies/materialize.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies.abc import Context, Strategy

AUTO_TARGETS = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "c_attn")


def auto_targets(model: torch.nn.Module) -> list[str]:
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in AUTO_TARGETS})
    if not found:
        raise ValueError("no attention projections found for LoRA; set strategy.lora.target_modules")
    return found


def head_modules(model: torch.nn.Module) -> list[str]:
    """The head, and the pooler in front of it when there is one (sentence-embedding checkpoints such
    as all-MiniLM-L6-v2 ship none, so it starts random and must be trained like the head)."""
    heads = [name for name in ("classifier", "score") if hasattr(model, name)]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no classification head to train alongside the adapter")
    poolers = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.endswith(".pooler")}
    return heads + sorted(poolers)


@dataclass(frozen=True, kw_only=True)
class LoraOptions:
    r: int  # the adapters' rank
    alpha: float
    dropout: float
    target_modules: str | list[str]  # "auto": the attention query and value projections


class Lora(Strategy):
    name = "lora"
    order = 0
    Options = LoraOptions

    def prepare(self, ctx: Context) -> None:
        from peft import LoraConfig, get_peft_model

        targets = self.options.target_modules
        targets = auto_targets(ctx.model) if targets == "auto" else ([targets] if isinstance(targets, str) else list(targets))
        config = LoraConfig(r=self.options.r, lora_alpha=float(self.options.alpha),
                            lora_dropout=float(self.options.dropout), target_modules=targets,
                            modules_to_save=head_modules(ctx.model))
        ctx.model = get_peft_model(ctx.model, config)
        ctx.lora = True
