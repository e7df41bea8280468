"""The `[strategy]` section of lifelong.toml and its per-strategy sections: where the strategies'
defaults are defined in code (the lifelong.toml template repeats them, commented); the child's
strategies take their options from here, whole."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from daemon.configbase import Section

# Avalanche's plugins (lifelong[avalanche], strategies/avalanche.py), each with its section [strategy."avalanche:NAME"]
AVALANCHE_PARTS = ("avalanche:ewc", "avalanche:si", "avalanche:mas", "avalanche:rwalk", "avalanche:gem",
                   "avalanche:agem", "avalanche:lwf")
STRATEGY_PARTS = ("finetune", "replay", "ewc", "lora", "lwf") + AVALANCHE_PARTS


class ReplayConfig(Section):
    buffer_rows: int = Field(default=2000, ge=0)
    policy: Literal["class_balanced", "reservoir"] = "class_balanced"
    ratio: float = Field(default=0.75, ge=0.0)  # 0.5 learned less; see the template
    # "shared": an update costs `epochs` of its new rows whatever the ratio (replayed rows take a share)
    budget: Literal["added", "shared"] = "added"


class EwcConfig(Section):
    lambda_: float = Field(default=1000.0, ge=0.0, alias="lambda")
    fisher_samples: int = Field(default=512, ge=1)
    decay: float = Field(default=0.9, ge=0.0, le=1.0)


class LoraConfig(Section):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "auto"
    # the rate of runs whose strategy includes lora (adapters and classifier head), which learn
    # slowly at strategy.lr, the rate for training every weight
    lr: float = Field(default=2e-3, gt=0.0, lt=1.0)


class LwfConfig(Section):
    alpha: float = Field(default=1.0, ge=0.0)
    temperature: float = Field(default=2.0, gt=0.0)


# Avalanche's options by their Avalanche names, with Avalanche's defaults where it has them; where it
# has none: ewc_lambda 500 is our ewc's lambda 1000 (Avalanche adds lambda * penalty, ours lambda / 2 *
# penalty), si_lambda, GEM's and A-GEM's sizes are those of Avalanche's examples (not measured here)
class AvalancheEwcConfig(Section):
    ewc_lambda: float = Field(default=500.0, ge=0.0)
    mode: Literal["online", "separate"] = "online"
    decay_factor: float = Field(default=0.9, ge=0.0, le=1.0)  # online mode only


class AvalancheSiConfig(Section):
    si_lambda: float = Field(default=0.0001, ge=0.0)
    eps: float = Field(default=1e-7, gt=0.0)
    excluded_parameters: list[str] = Field(default_factory=list)


class AvalancheMasConfig(Section):
    lambda_reg: float = Field(default=1.0, ge=0.0)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)


class AvalancheRwalkConfig(Section):
    ewc_lambda: float = Field(default=0.1, ge=0.0)
    ewc_alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    delta_t: int = Field(default=10, ge=1)


class AvalancheGemConfig(Section):
    patterns_per_experience: int = Field(default=256, ge=1)
    memory_strength: float = Field(default=0.5, ge=0.0)


class AvalancheAgemConfig(Section):
    patterns_per_experience: int = Field(default=256, ge=1)
    sample_size: int = Field(default=64, ge=1)


class AvalancheLwfConfig(Section):
    alpha: float = Field(default=1.0, ge=0.0)
    temperature: float = Field(default=2.0, gt=0.0)


class StrategyConfig(Section):
    name: str = "replay"  # lora+replay learned less; see the template
    epochs: int = Field(default=2, ge=1)
    min_steps: int = Field(default=100, ge=0)  # a hard small batch trains more epochs; see the template
    lift_target: float = Field(default=0.2, ge=0.0, le=1.0)  # learned enough to stop at `epochs`; see the template
    batch_size: int = Field(default=16, ge=1)
    lr: float | Literal["auto"] = 1e-4  # 5e-4 was unstable; see the template
    early_stopping_patience: int = Field(default=2, ge=0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    l1: float = Field(default=0.0, ge=0.0)  # L1 on the trained weights; 0 = off
    class_weights: Literal["none", "balanced"] = "balanced"  # "none" did worse; see the template
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    ewc: EwcConfig = Field(default_factory=EwcConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lwf: LwfConfig = Field(default_factory=LwfConfig)
    avalanche_ewc: AvalancheEwcConfig = Field(default_factory=AvalancheEwcConfig, alias="avalanche:ewc")
    avalanche_si: AvalancheSiConfig = Field(default_factory=AvalancheSiConfig, alias="avalanche:si")
    avalanche_mas: AvalancheMasConfig = Field(default_factory=AvalancheMasConfig, alias="avalanche:mas")
    avalanche_rwalk: AvalancheRwalkConfig = Field(default_factory=AvalancheRwalkConfig, alias="avalanche:rwalk")
    avalanche_gem: AvalancheGemConfig = Field(default_factory=AvalancheGemConfig, alias="avalanche:gem")
    avalanche_agem: AvalancheAgemConfig = Field(default_factory=AvalancheAgemConfig, alias="avalanche:agem")
    avalanche_lwf: AvalancheLwfConfig = Field(default_factory=AvalancheLwfConfig, alias="avalanche:lwf")

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "fit_target" in data:
            raise ValueError("strategy.fit_target was replaced by strategy.lift_target (a batch is learned when "
                             "the model scores lift_target of the way from its floor to all of the batch's rows "
                             "right; default 0.2): drop fit_target")
        return data

    @field_validator("name")
    @classmethod
    def _known_parts(cls, value: str) -> str:
        parts = [part.strip() for part in value.split("+")]
        unknown = [part for part in parts if part not in STRATEGY_PARTS]
        if unknown or not parts:
            raise ValueError(f"unknown strategy {'+'.join(unknown)!r}; use {' | '.join(STRATEGY_PARTS)} joined by '+'")
        if len(set(parts)) != len(parts):
            raise ValueError("a strategy is named twice")
        needs_extra = [part for part in parts if part in AVALANCHE_PARTS]
        if needs_extra:
            from registry.backends import _installed
            from registry.errors import MissingExtra

            if not _installed("avalanche"):  # exit 2, passed through as itself
                raise MissingExtra("avalanche", f"strategy.name = \"{value}\" needs avalanche-lib")
        return "+".join(parts)

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float | str) -> float | str:
        if value != "auto" and not (0 < float(value) < 1):
            raise ValueError("lr must be in (0, 1) or \"auto\"")
        return value

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("+"))

    def sections(self) -> dict[str, dict[str, Any]]:
        """Every strategy's section, each key present, as the child's strategies read them (their
        options carry no defaults of their own). `lora.lr` stays here: it picks the loop's rate."""
        with_options = {name for name, info in type(self).model_fields.items()
                        if (info.alias or name) in STRATEGY_PARTS}  # finetune has none
        return self.model_dump(by_alias=True, include=with_options, exclude={"lora": {"lr"}})
