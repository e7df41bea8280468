"""The train spec: one typed message from the daemon to the child, checked on load; the daemon's
process stays free of torch, transformers and peft."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import parse
from daemon.update.launcher import loop_settings, train_spec
from strategies.spec import DataPaths, Failure, LoopSettings, SpecError, TrainSpec


def spec(tmp_path: Path, **config: dict) -> TrainSpec:
    data = DataPaths(train=str(tmp_path / "train.arrow"), train_rows=10, eval={"1": str(tmp_path / "eval-1.arrow")},
                     eval_rows={"1": 4}, set_aside=None, set_aside_rows=0, set_aside_batches=[])
    return train_spec(parse(config), tmp_path, batch=1, labels=["a", "b"], data=data)


def test_a_spec_round_trips_through_json_and_carries_every_loop_setting_from_the_config(tmp_path: Path) -> None:
    built = spec(tmp_path, strategy={"name": "lora+replay", "epochs": 3, "lr": 5e-4, "class_weights": "balanced"},
                 train={"precision": "bf16", "seed": 7})
    assert TrainSpec.from_json(built.to_json()) == built
    assert built.loop.lr == parse({}).strategy.lora.lr  # a LoRA run trains at strategy.lora.lr
    assert (built.loop.epochs, built.loop.class_weights, built.loop.precision, built.seed) == (3, "balanced", "bf16", 7)
    avalanche = {f"avalanche:{name}" for name in ("ewc", "si", "mas", "rwalk", "gem", "agem", "lwf")}
    assert set(built.strategy.options) == {"replay", "ewc", "lora", "lwf"} | avalanche
    assert {f.name for f in dataclasses.fields(LoopSettings)} == set(json.loads(built.to_json())["loop"])


def test_no_field_of_the_spec_has_a_default() -> None:
    from strategies.spec import StrategySpec

    for cls in (TrainSpec, LoopSettings, DataPaths, StrategySpec):
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen and cls.__dataclass_fields__  # type: ignore[attr-defined]
        for f in dataclasses.fields(cls):
            assert f.kw_only and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name


@pytest.mark.parametrize(("change", "key", "message"), [
    (lambda d: d.pop("labels"), "labels", "missing"),
    (lambda d: d["data"].pop("set_aside"), "data.set_aside", "missing"),
    (lambda d: d.update(labelz=["a"]), "labelz", "unknown key"),
    (lambda d: d["loop"].update(class_weight="none"), "loop.class_weight", "unknown key"),
    (lambda d: d["loop"].update(epochs=2.5), "loop.epochs", "expected integer"),
    (lambda d: d["loop"].update(epochs=True), "loop.epochs", "expected integer"),
    (lambda d: d["loop"].update(lr="fast"), "loop.lr", "expected float or \"auto\""),
    (lambda d: d["loop"].update(precision="fp16"), "loop.precision", "expected \"auto\" or \"fp32\" or \"bf16\""),
    (lambda d: d["data"].update(eval={"1": 3}), "data.eval", "expected dict"),
    (lambda d: d.update(strategy="replay"), "strategy", "expected an object"),
    (lambda d: d.update(old_label_count=3), "old_label_count", "3 is not between 0 and 2"),
])
def test_a_wrong_spec_is_a_spec_error_naming_the_key(tmp_path: Path, change, key: str, message: str) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(spec(tmp_path).to_json())
    change(document)
    with pytest.raises(SpecError) as info:
        TrainSpec.from_json(json.dumps(document))
    assert info.value.key == key
    assert str(info.value).startswith(f"invalid train spec: {key}: {message}"), str(info.value)
    assert isinstance(info.value, ValueError)


def test_fp16_is_refused_by_the_config_not_ignored() -> None:
    from registry.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 is not supported") as info:
        parse({"train": {"precision": "fp16"}})
    assert info.value.key == "train.precision"
    assert loop_settings(parse({"train": {"precision": "fp32"}})).precision == "fp32"


def test_failure_kinds_are_the_strings_the_child_sends() -> None:
    assert [kind.value for kind in Failure] == ["exception", "out_of_memory", "non_finite_loss", "invalid_spec", "killed"]
    assert Failure.NON_FINITE_LOSS == "non_finite_loss" and str(Failure.KILLED) == "killed"


def test_the_daemons_process_never_imports_torch_transformers_or_peft() -> None:
    # every module of daemon/ (the service, the CLI, the cycle, the child's launcher, ...), found by walking
    # the package so a module added or moved later is checked too; __main__ would run the CLI
    code = ("import json, pkgutil, sys, daemon, strategies.spec\n"
            "names = [m.name for m in pkgutil.walk_packages(daemon.__path__, 'daemon.') if m.name != 'daemon.cli.__main__']\n"
            "for name in names: __import__(name)\n"
            "print(json.dumps(names))\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    imported, heavy = done.stdout.strip().splitlines()
    assert {"daemon.service.loop", "daemon.cli.commands", "daemon.update.cycle", "daemon.update.request",
            "daemon.update.launcher"} <= set(json.loads(imported))
    assert heavy == "[]"
