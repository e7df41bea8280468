"""Continual learning on the real SmolLM2-135M-Instruct (slow): two batches of made-up facts.

The first batch is learned with LoRA and merged into the champion. On the second, fine-tuning every
weight at a high rate learns the new facts and forgets the old ones, and the gate rejects it;
`lora+replay` (causal_lm's default, `lora+lwf+replay`, without its distillation) learns the new
facts and keeps most of the old. The facts are invented (a code per vault), so nothing of them is
in the pretrained weights.

Measured (2 CPU threads shared with other work, 8.5 min): LoRA learns the first facts (exact match
1.00, answer loss 0.001); fine-tuning at 1e-3 answers the second 1.00 and the first 0.00, a rise of
1.926 nats that the gate rejects; lora+replay answers the second 1.00 and the first 0.75. Its answer
loss on the first facts still rises 0.126 nats (2 rows lost, 6 gained), past `max_forgetting`: the
gate rejects that candidate too. Eight rows a batch are far below a held-out set the gate trusts;
the test asserts what each strategy learned and kept, and the gate's rejection of fine-tuning (its
verdict on lora+replay is printed, not asserted).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from daemon.config import parse
from daemon.update.launcher import loop_settings
from strategies import embedded
from strategies.abc import Context, build
from strategies.loop import train
from strategies.replay import save_buffer
from tests.lm_gate import CPU, TASK, judge, scored
from tests.test_smollm2 import BASE, needs_extra

pytestmark = [pytest.mark.slow, needs_extra]

CODES = ["amber", "cobalt", "saffron", "indigo", "jade", "ochre", "teal", "umber", "violet", "crimson", "ivory",
         "mauve", "olive", "coral", "pearl", "slate"]


def facts(vaults: range, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"Which code opens vault {v}?"}], "completion": rng.choice(CODES)}
            for v in vaults]


FIRST, SECOND = facts(range(1, 9), 1), facts(range(11, 19), 2)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return embedded.prepare(BASE, tmp_path_factory.mktemp("models"))


def fit(source: Path, rows: list[dict], strategy: str, state: Path | None = None, **loop: object) -> Context:
    torch.manual_seed(0)
    model, tokenizer = TASK.load(str(source), [])
    ctx = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=rows, previous_state=state)
    config = parse({"model": {"task": "causal_lm"}, "strategy": {"min_steps": 0, "batch_size": 8, "name": strategy}})
    settings = dataclasses.replace(loop_settings(config), val_fraction=0.0, early_stopping_patience=0,
                                   **loop)  # type: ignore[arg-type]
    train(ctx, build(strategy, config.strategy.sections()), settings)
    return ctx


@pytest.mark.timeout(3600)
def test_lora_replay_learns_new_facts_and_keeps_the_old_where_finetune_forgets(smollm2: Path, tmp_path: Path) -> None:
    first = fit(smollm2, FIRST, "lora", epochs=40)
    tokenizer = first.tokenizer
    learned = scored(first.model, tokenizer, FIRST)[0]
    print(f"first facts after lora: exact match {learned['exact_match']:.2f}, answer loss {learned['answer_loss']:.3f}")
    assert learned["exact_match"] >= 0.75
    champion_dir = tmp_path / "champion"
    first.model.merge_and_unload().save_pretrained(champion_dir, safe_serialization=True)
    tokenizer.save_pretrained(champion_dir)
    champion, _ = TASK.load(str(champion_dir), [])
    champion.eval()

    forgot = fit(champion_dir, SECOND, "finetune", epochs=12, lr=1e-3)
    new, old = scored(forgot.model, tokenizer, SECOND)[0], scored(forgot.model, tokenizer, FIRST)[0]
    verdict = judge(forgot.model, champion, tokenizer, {"1": FIRST, "2": SECOND}, "2")
    print(f"finetune at 1e-3: second {new['exact_match']:.2f}, first {old['exact_match']:.2f}; {verdict.reasons}")
    assert old["exact_match"] <= 0.25 and not verdict.passed  # measured 0.00
    assert any(reason.startswith("forgetting on batch 1") for reason in verdict.failures), verdict.reasons
    del forgot

    save_buffer(tmp_path / "state", FIRST, len(FIRST), "reservoir", TASK.columns)  # the champion's replay buffer
    kept = fit(champion_dir, SECOND, "lora+replay", state=tmp_path / "state", epochs=40)
    new, old = scored(kept.model, tokenizer, SECOND)[0], scored(kept.model, tokenizer, FIRST)[0]
    verdict = judge(kept.model, champion, tokenizer, {"1": FIRST, "2": SECOND}, "2")
    print(f"lora+replay: second {new['exact_match']:.2f}, first {old['exact_match']:.2f}; {verdict.reasons}")
    assert new["exact_match"] >= 0.75 and old["exact_match"] >= 0.625  # measured 1.00 and 0.75
