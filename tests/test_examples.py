"""The example stories in examples/ (what `make demo` and the README's quick start drop) are files the
inbox takes whole: every row valid, no text in two files, and the rows and labels examples/README.md
gives for each."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, archived, cli, quarantined, write_config

EXAMPLES = ROOT / "examples"
STORIES = {"sentiment": ("sequence_classification", "text"), "chat": ("causal_lm", "prompt")}


def files(story: str) -> list[Path]:
    return sorted((EXAMPLES / story).glob("*.jsonl"))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("story", sorted(STORIES))
def test_every_example_file_is_taken_whole_by_the_inbox(home_root: Path, story: str) -> None:
    write_config(home_root, model={"task": STORIES[story][0]})
    for path in files(story):
        shutil.copyfile(path, home_root / "inbox" / path.name)
    assert cli("ingest", "--once", "--home", str(home_root)).exit_code == 0
    assert quarantined(home_root) == [] and archived(home_root) == [path.name for path in files(story)]
    status = json.loads(cli("status", "--home", str(home_root), "--json").stdout)
    assert sum(status["rows_total"].values()) == sum(len(rows(path)) for path in files(story))


def test_no_sentence_of_the_sentiment_story_is_in_two_files() -> None:
    seen = Counter(row["text"] for path in files("sentiment") for row in rows(path))
    assert [text for text, count in seen.items() if count > 1] == []


def test_the_readme_gives_each_files_rows_and_labels() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in files("sentiment"):
        line = next(line for line in readme.splitlines() if line.startswith(f"| `{path.name}` |"))
        _, _, count, labels, *_ = (cell.strip() for cell in line.split("|"))
        found = rows(path)
        assert int(count) == len(found), path.name
        said = {name: int(n) for name, n in re.findall(r"(\w+) (\d+)", labels)}
        assert said == dict(Counter(row["label"] for row in found)), path.name
    for path in files("chat"):
        line = next(line for line in readme.splitlines() if line.startswith(f"| `{path.name}` |"))
        assert int(line.split("|")[2]) == len(rows(path)), path.name
