"""docs/reference.md stays true: every config key, command, option and metric of the product is in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from daemon import config as config_mod
from daemon import home as home_mod
from daemon.cli import main
from daemon.config import Config
from daemon.service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"


def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under `heading` (a markdown heading line) up to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, start + len(heading))
    return text[start:end.start() if end else len(text)]


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every leaf key as spelled in lifelong.toml (aliases such as `lambda` included), dotted."""
    keys = []
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += config_keys(annotation, key + ".")
        else:
            keys.append(key)
    return keys


def test_every_config_key_is_documented_in_the_config_section() -> None:
    config = section(reference(), "## Config")
    keys = config_keys()
    assert "strategy.ewc.lambda" in keys and "strategy.replay.ratio" in keys  # the walk reaches nested sections
    missing = [key for key in keys if f"| `{key}` |" not in config]
    assert not missing, f"config keys without a row in docs/reference.md, Config: {missing}"


def test_every_documented_default_is_the_real_one() -> None:
    """The defaults column, read as TOML and validated, is exactly the config a missing file gets."""
    config = section(reference(), "## Config")
    tree: dict = {}
    for key in config_keys():
        row = re.search(rf"^\| `{re.escape(key)}` \| `([^`]*)` \|", config, re.M)
        assert row, f"{key}: no default in docs/reference.md"
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = config_mod.tomllib.loads(f"v = {row.group(1)}")["v"]
    assert config_mod.parse(tree).dump() == Config().dump()


def commands() -> dict[str, click.Command]:
    return dict(main.commands)


def test_every_command_has_a_section_with_every_option() -> None:
    text = reference()
    commands_text = section(text, "## Commands")
    assert {"init", "run", "ingest", "update", "status", "versions", "show", "promote", "rollback", "unpin",
            "export", "gc"} <= set(commands())
    for name, command in sorted(commands().items()):
        heading = f"### lifelong {name}"
        assert heading + "\n" in commands_text, f"no '{heading}' section in docs/reference.md"
        body = section(commands_text, heading)
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    if opt.startswith("--"):
                        assert opt in body, f"lifelong {name} {opt} is not in its section of docs/reference.md"
    for param in main.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in commands_text, opt


def test_every_metric_is_documented_with_its_type_and_labels(tmp_path: Path) -> None:
    home, _ = home_mod.init(tmp_path / "home")
    families = list(text_string_to_metric_families(Metrics(home).exposition().decode()))
    histograms = {f.name for f in families if f.type == "histogram"}
    exposed: dict[str, tuple[str, dict[str, set[str]]]] = {}
    for family in families:
        if family.name.endswith("_created") and family.name.removesuffix("_created") in histograms:
            continue  # the histogram's own _created series
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: dict[str, set[str]] = {}
        for sample in family.samples:
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
        exposed[name] = (family.type, labels)

    metrics = section(reference(), "## Metrics")
    rows = {}
    for line in metrics.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)]  # a cell may hold escaped pipes
        if len(cells) == 6 and re.fullmatch(r"`lifelong_\w+`", cells[1]):
            rows[cells[1].strip("`")] = (cells[2], cells[3])
    assert set(rows) == set(exposed), (f"exposed but not documented: {sorted(set(exposed) - set(rows))}; "
                                       f"documented but not exposed: {sorted(set(rows) - set(exposed))}")
    for name, (kind, labels) in exposed.items():
        documented_kind, documented_labels = rows[name]
        assert documented_kind == kind, (name, documented_kind, kind)
        for label, values in labels.items():
            if label == "le":
                continue
            assert f"`{label}`" in documented_labels, (name, label)
            if label != "version":  # the build's version is not a fixed list
                for value in values:
                    assert f"`{value}`" in documented_labels, (name, label, value)


def test_the_readme_links_the_reference() -> None:
    assert "(docs/reference.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_no_tracked_file_cites_the_spec_users_do_not_have() -> None:
    word = "CONTRACT"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode != 0:  # not a git checkout (an sdist): look at the product's folders instead
        files = [p.relative_to(ROOT) for folder in ("daemon", "strategies", "registry", "deploy", "docs", "bench")
                 for p in (ROOT / folder).rglob("*") if p.is_file()]
        files += [Path(n) for n in ("README.md", "BENCHMARKS.md", "Makefile", "Dockerfile", "pyproject.toml")]
    else:
        files = [Path(n) for n in listed.stdout.decode().split("\0") if n]
    here = Path(__file__).resolve().relative_to(ROOT)
    citing = [str(path) for path in files  # licence texts use the legal word ("IN CONTRACT, STRICT LIABILITY")
              if path != here and path.name != "LICENSE" and (ROOT / path).is_file()
              and word.encode() in (ROOT / path).read_bytes()]
    assert not citing, f"files naming {word}: {citing}"
