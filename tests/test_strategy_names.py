"""A strategy is one module `strategies/<name>.py` plus its config section; every other place that
names strategies must agree with them, and this test says where one was forgotten."""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from pathlib import Path

import strategies
from daemon.strategyconfig import STRATEGY_PARTS, StrategyConfig
from strategies.abc import REGISTRY, NoOptions, build

ROOT = Path(__file__).resolve().parents[1]


def registered() -> dict[str, type]:
    for module in pkgutil.iter_modules(strategies.__path__):
        importlib.import_module(f"strategies.{module.name}")
    return dict(REGISTRY)


def test_every_place_that_lists_strategies_agrees_with_their_modules() -> None:
    found = registered()
    # the daemon's list (it never imports torch, so it cannot ask the strategies themselves)
    assert set(STRATEGY_PARTS) == set(found), "daemon/strategyconfig.py STRATEGY_PARTS"
    for name, cls in found.items():
        module = "avalanche" if name.startswith("avalanche:") else name  # Avalanche's plugins share one module
        assert cls.__module__ == f"strategies.{module}", f"{name} must live in strategies/{module}.py"
    orders = [cls.order for cls in found.values()]
    assert len(set(orders)) == len(orders), "two strategies share an order"
    # a config section exactly for the strategies with options, and the template has each
    with_options = {name for name, cls in found.items() if cls.Options is not NoOptions}
    sections = {field.alias or name for name, field in StrategyConfig.model_fields.items()
                if isinstance(field.annotation, type) and (field.alias or name) in found}
    assert sections == with_options, "daemon/strategyconfig.py StrategyConfig sections"
    template = tomllib.loads((ROOT / "daemon" / "lifelong.toml").read_text())
    assert set(template["strategy"]) - set(StrategyConfig.model_fields) == set()
    # the init template spells out our own strategies' sections; the extra's (avalanche:*) are in docs/reference.md
    ours = {name for name in with_options if not name.startswith("avalanche:")}
    assert {k for k, v in template["strategy"].items() if isinstance(v, dict)} == ours, "lifelong.toml"


def test_a_combination_runs_in_each_strategys_order_whatever_the_name_says() -> None:
    config = StrategyConfig().sections()
    one = build("replay+lora", config)
    other = build("lora+replay", config)
    assert [p.name for p in one.parts] == [p.name for p in other.parts] == ["lora", "replay"]  # type: ignore[attr-defined]
