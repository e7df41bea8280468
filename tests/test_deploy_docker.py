"""The Dockerfile, checked without an engine: it parses, runs as a non-root user, and its entry
point and command exist in the package."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from daemon.cli import main

ROOT = Path(__file__).resolve().parents[1]


def parsed(build_args: dict[str, str] | None = None) -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"), build_args=build_args or {})
    return parser


def instructions(parser: DockerfileParser) -> list[tuple[str, str]]:
    return [(i["instruction"], i["value"]) for i in parser.structure]


@pytest.mark.parametrize("base", [None, "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"])
def test_parses_for_both_bases(base: str | None) -> None:
    parser = parsed({"BASE": base} if base else None)
    assert parser.baseimage == (base or "python:3.11-slim-bookworm")
    kinds = [kind for kind, _ in instructions(parser)]
    assert kinds.count("FROM") == 1 and kinds[-2:] == ["ENTRYPOINT", "CMD"]
    if base:  # the CUDA variant is documented with this exact base in the file's header
        assert base in parser.content


def test_runs_as_a_non_root_user_from_the_end_of_the_build() -> None:
    steps = instructions(parsed())
    users = [(n, value) for n, (kind, value) in enumerate(steps) if kind == "USER"]
    assert users, "no USER instruction: the container would run as root"
    last_index, user = users[-1]
    uid = user.split(":")[0]
    assert uid not in ("0", "root")
    assert all(kind not in ("RUN", "COPY", "ADD") for kind, _ in steps[last_index:]), "build steps after USER"
    useradd = next(value for kind, value in steps if kind == "RUN" and "useradd" in value)
    assert f"--uid {uid}" in useradd


def test_entrypoint_and_command_exist_in_the_package() -> None:
    parser = parsed()
    steps = dict((kind, value) for kind, value in instructions(parser))
    entrypoint = json.loads(steps["ENTRYPOINT"])
    command = json.loads(steps["CMD"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["lifelong"] and scripts["lifelong"] == "daemon.cli:main"
    assert command[0] == "run" and command[0] in main.commands
    options = {opt for param in main.commands["run"].params for opt in param.opts}
    assert set(arg for arg in command[1:] if arg.startswith("--")) <= options
    home = command[command.index("--home") + 1]
    assert home in parser.content.split("VOLUME")[1].splitlines()[0]
    assert int(next(v for k, v in instructions(parser) if k == "EXPOSE")) == 9717


def test_copies_every_package_and_keeps_the_build_context_small() -> None:
    parser = parsed()
    for kind, value in instructions(parser):
        if kind == "COPY":
            *sources, _ = shlex.split(value)
            for source in sources:
                assert (ROOT / source).exists(), source
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = " ".join(value for kind, value in instructions(parser) if kind == "COPY")
    for package in packages:
        assert package.rstrip("*") in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
