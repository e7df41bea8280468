"""A causal_lm candidate judged as the daemon judges it, for tests that train outside a daemon: both
models' answer losses on every batch, paired per row as the training child pairs them, through the
gate a causal_lm home runs by default."""

from __future__ import annotations

from typing import Any

import torch

from daemon.config import parse
from daemon.update.gate import GateResult, Scores, decide
from strategies import tasks
from strategies.evaluate import paired_rows

TASK = tasks.load("causal_lm")
CPU = torch.device("cpu")
GATE = parse({"model": {"task": "causal_lm"}}).gate  # the gate a causal_lm home runs by default


def scored(model: torch.nn.Module, tokenizer: Any, rows: list[dict]) -> tuple[dict, list[dict]]:
    """The task's held-out figures on `rows`, and each row's prediction."""
    found = TASK.predict(model, tokenizer, rows, [], CPU, 64)
    return TASK.score(rows, found, []), found


def judge(candidate: torch.nn.Module, champion: torch.nn.Module, tokenizer: Any,
          batches: dict[str, list[dict]], new: str) -> GateResult:
    mine, theirs, paired, rows = {}, {}, {}, {}
    stops: dict[str, dict[str, int]] = {"candidate": {}, "champion": {}}
    for name, batch in batches.items():
        (a, found_a), (b, found_b) = scored(champion, tokenizer, batch), scored(candidate, tokenizer, batch)
        theirs[name], mine[name], rows[name] = a["answer_loss"], b["answer_loss"], len(batch)
        paired[name] = {"answer_loss": paired_rows("causal_lm", "answer_loss", found_a, found_b)}
        for who, figures in (("champion", a), ("candidate", b)):
            for key in ("generated", "stopped"):
                stops[who][key] = stops[who].get(key, 0) + figures[key]
    return decide(new=new, candidate=Scores(per_experience=mine), champion=Scores(per_experience=theirs), rows=rows,
                  config=GATE, paired=paired, stops=stops)
