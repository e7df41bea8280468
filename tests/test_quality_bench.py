"""The learning-quality benchmark's engine: one contender through a real daemon, read back, pruned."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.quality import run_strategy
from bench.streams import Part, write
from tests.test_learning import toy


@pytest.mark.slow  # a benchmark contender through the real daemon (make test-slow)
def test_a_contender_runs_through_the_real_daemon_and_its_home_keeps_its_records_without_weights(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [Part(name=f"toy-{n}.jsonl", group=str(n), rows=[{"text": t, "label": l} for t, l in toy(labels, 60, seed=n)])
             for n, labels in ((1, ["sport", "food"]), (2, ["music", "tech"]))]
    files = write(parts, tmp_path / "stream")
    profile = {"max_length": 32, "eval_fraction": 0.3, "epochs": 4}
    monkeypatch.setenv("LIFELONG_STRATEGY__LR", "0.003")  # the daemons inherit it: a tiny random model needs it
    run = run_strategy("replay", files, 0, profile, str(tiny_model), tmp_path / "runs")
    home = tmp_path / "runs" / "replay-seed0"
    assert run["promoted"] + run["rejected"] == 2 and run["train_samples"] > 0
    assert run["promoted"] >= 1 and len(run["matrix"]) == 2 and None not in run["matrix"][-1]  # the final champion's row
    # the figures were read, then the weights deleted: a full table's homes would hold about 20 GB
    assert not (home / "registry" / "versions").exists() and not (home / "state" / "work").exists()
    assert (tmp_path / "runs" / "replay-seed0.log").is_file()  # the daemon's log stays
