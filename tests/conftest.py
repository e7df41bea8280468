"""Shared fixtures: real homes on disk, the real CLI, real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import strategies  # noqa: F401  (first: torchvision next to the CPU torch imports, strategies/avalanche_env.py)
from daemon import home as home_mod
from daemon.cli import main

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_config(root: Path, **sections: dict[str, Any]) -> None:
    """Append overrides to a home's lifelong.toml by rewriting the sections' keys."""
    import tomllib

    path = root / "lifelong.toml"
    data = tomllib.loads(path.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(_toml(data))


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = "\n".join(lines) + "\n"
    for name, table in tables:
        text += f"\n[{name}]\n" + _toml(table, f"{name}.")
    return text


@pytest.fixture
def home_root(tmp_path: Path) -> Path:
    """An initialised home whose inbox takes files at once (settle_seconds = 0)."""
    root = tmp_path / "home"
    home_mod.init(root)
    write_config(root, inbox={"settle_seconds": 0}, metrics={"bind": "127.0.0.1:0"})  # any free port
    return root


def open_home(root: Path) -> home_mod.Home:
    return home_mod.open_home(root, environ={})


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run the real CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()
    return runner.invoke(main, list(args), env=env, catch_exceptions=False)


def lifelong_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "daemon.cli", *args]


def spawn(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.Popen(lifelong_cmd(*args), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def archived(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "archive").iterdir())


def quarantined(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "quarantine").iterdir() if not p.name.endswith((".error.json", ".rejected.jsonl")))


def error_doc(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / "quarantine" / f"{name}.error.json").read_text())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny BERT classifier directory (labels neg, pos), made once per session."""
    from tests.tiny import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def stage_full(registry: Any, model_dir: Path, marker: str = "") -> Path:
    """A staging directory holding a full version: a copy of `model_dir` (plus a marker file)."""
    import shutil

    staging = registry.new_staging()
    shutil.copytree(model_dir, staging / "model")
    if marker:
        (staging / "state").mkdir()
        (staging / "state" / "marker.txt").write_text(marker)
    return staging
