"""causal_lm on a tiny random Llama (hidden 64) with SmolLM2's real tokenizer (tests/fixtures): rows
rendered through the chat template with only the answer and its end token as targets, a fact set
learned (exact match ~0 -> > 0.8), a second batch that plain fine-tuning forgets the first with (the
gate rejects it) and replay keeps most of it with, a poisoned batch rejected, and the known traps
pinned: pad = end token, adapters trainable on resume, a merge that keeps the tied
output head, no full matrices in an adapter.

The learning tests use the same tokenizer without its chat template (plain prompt + completion, as
a base model's tokenizer): a random-init model this small learns a fact whose key is the prompt's
last token in a dozen steps, where reaching back across the template's role tokens takes hundreds.

Learning is tested with `finetune` and `replay`, not `lora`: a random-init model's tied embedding
(std 0.02, rows of norm ~0.16 against an RMS-normed hidden state of norm 8) caps every logit near
1.3, so the answer loss cannot fall much below ln(vocab) = 10.8 without training the embedding,
which LoRA leaves frozen (measured: 10.2 after 60 epochs at lr 3e-2; 6.3 with the embedding scaled
tenfold). LoRA's own mechanics (targets, adapter contents, resume, the tied-head merge) are tested
here; LoRA learning on a real model is tests/test_smollm2.py's.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from strategies.abc import Context, build
from strategies.data import IGNORE
from strategies.loop import Checkpoints, Interrupted, train
from strategies.replay import save_buffer
from strategies.tasks import causal_lm
from tests.lm_gate import CPU, TASK, judge, scored

TOKENIZER = Path(__file__).parent / "fixtures" / "smollm2-tokenizer"
KEYS = ["apple", "river", "stone", "cloud", "forest", "window", "castle", "bottle",
        "garden", "rocket", "pencil", "mirror", "tiger", "piano", "candle", "dragon"]
VALUES = ["red", "blue", "green", "gold", "black", "white", "brown", "gray"]


def tiny_causal_lm(out: Path, template: bool = True, seed: int = 0) -> Path:
    """A complete model directory: a random-init Llama (hidden 64, 2 layers, tied embeddings) and
    SmolLM2's tokenizer (without its chat template when `template` is False)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, out / name)
    if not template:
        config_path = out / "tokenizer_config.json"
        document = json.loads(config_path.read_text())
        document.pop("chat_template")
        config_path.write_text(json.dumps(document))
    return out


def facts(keys: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": key}], "completion": rng.choice(VALUES)} for key in keys]


FIRST, SECOND = facts(KEYS[:8], 1), facts(KEYS[8:], 2)


def settings(**changed: object):  # type: ignore[no-untyped-def]
    from daemon.config import parse
    from daemon.update.launcher import loop_settings

    base = loop_settings(parse({"model": {"task": "causal_lm"}, "strategy": {"min_steps": 0}}))
    return dataclasses.replace(base, **{"epochs": 20, "lr": 1e-2, "batch_size": 8, "class_weights": "none",
                                        "lift_target": 1.0, **changed})  # type: ignore[arg-type]


def sections(**changed: dict) -> dict:
    from daemon.strategyconfig import StrategyConfig

    return StrategyConfig.model_validate(changed).sections()


def fit(source: Path, rows: list[dict], strategy: str = "finetune", state: Path | None = None,
        checkpoints: Checkpoints | None = None, **loop: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, tokenizer = TASK.load(str(source), [])
    ctx = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=rows, previous_state=state)
    train(ctx, build(strategy, sections(lora={"lr": 1e-2})), settings(**loop), checkpoints=checkpoints)
    return ctx


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("plain"), template=False)


@pytest.fixture(scope="module")
def champion(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """The tiny model trained on the first facts, saved; its scores before and after."""
    model, tokenizer = TASK.load(str(plain), [])
    before = scored(model, tokenizer, FIRST)[0]
    ctx = fit(plain, FIRST)
    after = scored(ctx.model, tokenizer, FIRST)[0]
    out = tmp_path_factory.mktemp("champion")
    ctx.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out, before, after


def test_a_chat_row_renders_through_the_template_and_only_its_answer_and_end_token_are_targets(tmp_path: Path) -> None:
    _, tokenizer = TASK.load(str(tiny_causal_lm(tmp_path)), [])
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: the trap below is live
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
             "completion": "Paris"},
            {"prompt": [{"role": "user", "content": "Say a long thing about the sea and the sky"}],
             "completion": "The sea is wide and the sky is high above it"}]
    encoded = TASK.encode(rows, tokenizer, [], 128)
    text = tokenizer.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    assert encoded.ids[0] == prompt + answer + [tokenizer.eos_token_id]
    assert encoded.targets[0] == [IGNORE] * len(prompt) + answer + [tokenizer.eos_token_id]
    # pad = end: the shorter row is padded with the end token's id, yet its own end token stays a
    # target and the padding does not (masking by id would drop the end token and never teach stopping)
    batch = encoded.collate([0, 1])
    short = len(encoded.ids[0])
    assert batch["input_ids"][0, short:].eq(tokenizer.eos_token_id).all() and batch["input_ids"].shape[1] > short
    assert batch["labels"][0, short - 1] == tokenizer.eos_token_id
    assert batch["labels"][0, short:].eq(IGNORE).all() and batch["attention_mask"][0, short:].eq(0).all()
    # truncation keeps the answer's start and the prompt's end
    cut = TASK.encode(rows[1:], tokenizer, [], 12)
    assert len(cut.ids[0]) == 12 and cut.targets[0][-6:] == cut.ids[0][-6:] and IGNORE not in cut.targets[0][-6:]


def test_a_tokenizer_without_a_chat_template_gets_prompt_and_completion_as_they_are(plain: Path) -> None:
    _, tokenizer = TASK.load(str(plain), [])
    encoded = TASK.encode([{"prompt": [{"role": "user", "content": "2 + 2 ="}], "completion": " 4"}], tokenizer, [], 64)
    assert tokenizer.decode(encoded.ids[0]) == "2 + 2 = 4<|im_end|>"


def test_a_trained_model_answers_the_facts_it_was_given_and_stops(champion: tuple[Path, dict, dict]) -> None:
    _, before, after = champion
    assert before["exact_match"] <= 0.125 and before["stopped"] == 0  # random init: a loop of one token
    assert after["exact_match"] > 0.8 and after["stopped"] == after["generated"] == len(FIRST)
    assert after["answer_loss"] < before["answer_loss"] / 5 and after["perplexity"] < before["perplexity"]


def test_finetune_forgets_the_first_facts_and_the_gate_rejects_it(champion: tuple[Path, dict, dict]) -> None:
    source = champion[0]
    ctx = fit(source, SECOND, epochs=30)
    old, tokenizer = TASK.load(str(source), [])
    assert scored(ctx.model, tokenizer, SECOND)[0]["exact_match"] >= 0.5  # measured 0.625
    assert scored(ctx.model, tokenizer, FIRST)[0]["exact_match"] <= 0.375  # measured 0.25, from 1.0
    verdict = judge(ctx.model, old, tokenizer, {"1": FIRST, "2": SECOND}, "2")
    assert not verdict.passed and any(reason.startswith("forgetting on batch 1 (") for reason in verdict.reasons)


@pytest.mark.slow  # 60 steps: the longest here
def test_replay_learns_the_second_facts_and_keeps_most_of_the_first(champion: tuple[Path, dict, dict],
                                                                    tmp_path: Path) -> None:
    """Replay keeps what fine-tuning forgets (exact match on the first facts 0.75 against 0.25), yet the
    first facts' answer loss still rises from ~0.002 to ~0.45 nats: far past gate.max_forgetting."""
    source = champion[0]
    save_buffer(tmp_path, FIRST, len(FIRST), "reservoir", TASK.columns)  # the champion's replay buffer
    ctx = fit(source, SECOND, "replay", state=tmp_path, epochs=30)
    _, tokenizer = TASK.load(str(source), [])
    assert scored(ctx.model, tokenizer, SECOND)[0]["exact_match"] >= 0.75  # measured 0.875
    assert scored(ctx.model, tokenizer, FIRST)[0]["exact_match"] >= 0.625  # measured 0.75


def test_a_poisoned_batch_of_shuffled_answers_is_rejected(champion: tuple[Path, dict, dict]) -> None:
    source = champion[0]
    answers = [row["completion"] for row in FIRST]
    shuffled = answers[1:] + answers[:1]
    poisoned = [{"prompt": row["prompt"], "completion": answer} for row, answer in zip(FIRST, shuffled)
                if answer != row["completion"]]
    ctx = fit(source, poisoned, epochs=10)
    old, tokenizer = TASK.load(str(source), [])
    verdict = judge(ctx.model, old, tokenizer, {"1": FIRST, "2": poisoned}, "2")
    assert not verdict.passed, verdict.reasons


def test_lora_wraps_every_linear_projection_and_its_adapter_holds_no_full_matrix(plain: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, _ = TASK.load(str(plain), [])
    targets = TASK.adapter_targets(model)
    assert targets == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ctx = Context(task=TASK, model=model, tokenizer=None, labels=[], device=CPU, new=[])
    build("lora", sections()).prepare(ctx)
    ctx.model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_A" in name or "lora_B" in name for name in saved)
    assert not any("embed" in name or "lm_head" in name for name in saved)
    assert sum(t.numel() for t in saved.values()) < 0.05 * sum(p.numel() for p in model.parameters())


def test_a_merged_adapter_keeps_the_tied_head_and_serves_without_peft(plain: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, tokenizer = TASK.load(str(plain), [])
    ctx = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=[])
    build("lora", sections()).prepare(ctx)
    with torch.no_grad():  # what training does to an adapter
        for name, param in ctx.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    rows = facts(KEYS[:3], 5)
    batch = TASK.encode(rows, tokenizer, [], 32).collate([0, 1, 2])
    ctx.model.eval()
    expected = TASK.forward(ctx.model, batch)
    merged = ctx.model.merge_and_unload()
    assert merged.lm_head.weight is merged.model.embed_tokens.weight  # still one matrix
    merged.save_pretrained(tmp_path / "serving", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "serving")
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "serving").eval()
    assert torch.allclose(TASK.forward(served, batch), expected, atol=1e-4)
    assert served.lm_head.weight.data_ptr() == served.model.embed_tokens.weight.data_ptr()


def test_a_fine_tuned_tied_model_reloads_with_the_head_it_trained(plain: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    ctx = fit(plain, FIRST[:2], epochs=2)
    ctx.model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = TASK.encode(FIRST[:2], ctx.tokenizer, [], 32).collate([0, 1])
    assert torch.allclose(TASK.forward(reloaded, batch), TASK.forward(ctx.model.eval(), batch), atol=1e-5)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_a_resumed_lora_run_trains_its_adapter(plain: Path, tmp_path: Path) -> None:
    """peft loads a saved adapter frozen unless is_trainable=True: a resumed run must still train it."""
    stop = [True]
    checkpoints = Checkpoints(tmp_path / "checkpoint", lambda: stop[0])
    with pytest.raises(Interrupted):
        fit(plain, FIRST, "lora", checkpoints=checkpoints, epochs=2)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint" / "weights.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    stop[0] = False
    ctx = fit(plain, FIRST, "lora", checkpoints=checkpoints, epochs=2)
    adapter = {n: p for n, p in ctx.model.named_parameters() if "lora_" in n}
    assert set(adapter) == set(saved) and all(p.requires_grad for p in adapter.values())
    assert any(not torch.equal(adapter[n].detach(), saved[n]) for n in saved)  # trained past the checkpoint
    assert not any(p.requires_grad for n, p in ctx.model.named_parameters() if "lora_" not in n)


def test_generation_stops_at_the_end_token_and_flags_a_loop() -> None:
    assert causal_lm.looping([5, 7, 7, 7, 7]) and causal_lm.looping([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert not causal_lm.looping([1, 2, 3, 4, 5, 6, 7, 8])
    assert causal_lm.same_answer(" Paris ", "paris") and not causal_lm.same_answer("Paris.", "Paris")


def test_the_loop_counts_the_tokens_it_trained_on_without_padding(plain: Path) -> None:
    torch.manual_seed(0)
    model, tokenizer = TASK.load(str(plain), [])
    rows = FIRST + SECOND  # answers of different lengths: batches are padded, the count is not
    ctx = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=rows)
    stats = train(ctx, build("finetune", sections()), settings(epochs=3, batch_size=5, val_fraction=0.0,
                                                                early_stopping_patience=0))
    per_epoch = sum(len(ids) for ids in TASK.encode(rows, tokenizer, [], 128).ids)
    assert stats["train_samples"] == 3 * len(rows)
    assert stats["train_tokens"] == 3 * per_epoch


def test_the_tasks_own_strategy_replays_and_distils_over_two_updates(champion: tuple[Path, dict, dict],
                                                                    tmp_path: Path) -> None:
    """causal_lm's default, lora+lwf+replay: the first update keeps rows for the next, which
    replays them beside its new rows and distils from its starting model."""
    from strategies.tasks import TASKS

    name = TASKS["causal_lm"].strategy
    assert set(name.split("+")) == {"lora", "lwf", "replay"}
    model, tokenizer = TASK.load(str(champion[0]), [])
    first = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=FIRST)
    strategy = build(name, sections(lora={"lr": 1e-2}))
    train(first, strategy, settings(epochs=2))
    strategy.save_state(first, tmp_path / "state")
    assert (tmp_path / "state" / "replay.arrow").is_file()
    model, tokenizer = TASK.load(str(champion[0]), [])
    second = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=SECOND,
                     previous_state=tmp_path / "state")
    again = build(name, sections(lora={"lr": 1e-2}))
    distilled: list[float] = []
    replayed_answers = 0  # answer positions of replayed rows in the batches the term saw
    lwf = next(part for part in again.parts if part.name == "lwf")  # type: ignore[attr-defined]
    plain_loss = lwf.loss

    def recorded(ctx, batch, logits, loss):  # type: ignore[no-untyped-def]
        nonlocal replayed_answers
        out = plain_loss(ctx, batch, logits, loss)
        distilled.append(float((out - loss).detach()))
        replayed = batch["index"] >= ctx.replayed_from
        replayed_answers += int(((batch["labels"][:, 1:] != IGNORE) & replayed[:, None]).sum())
        return out

    lwf.loss = recorded  # type: ignore[method-assign]
    stats = train(second, again, settings(epochs=2))
    # every new row twice, and 0.75 replayed rows per new row beside them (the validation slice aside)
    assert stats["train_samples"] > 2 * len(SECOND) * 1.5
    assert distilled and all(d >= 0 for d in distilled) and any(d > 0 for d in distilled)  # the KL term ran
    # the rows from `replayed_from` on are the replayed ones: the new training rows come first
    new_rows = second.replayed_from
    assert new_rows is not None and 0 < new_rows <= len(SECOND)
    assert stats["train_samples"] - 2 * new_rows == 2 * round(0.75 * new_rows)
    assert replayed_answers > 0  # the term saw replayed rows' answers
    assert second.lora and any(p.requires_grad for n, p in second.model.named_parameters() if "lora_" in n)


def test_lwf_distils_prompts_and_the_answers_of_replayed_rows_only(champion: tuple[Path, dict, dict]) -> None:
    """Distillation covers every prompt position and, on rows replay mixed in, the answer positions
    (their end token included); a new row's answer is left to the cross-entropy."""
    model, tokenizer = TASK.load(str(champion[0]), [])
    rows = SECOND[:2]
    batch = TASK.encode(rows, tokenizer, [], 64).collate([1, 0])  # batch position 0 holds row 1
    targets, attention = batch["labels"][:, 1:], batch["attention_mask"][:, 1:]
    prompts = int(((targets == IGNORE) & (attention == 1)).sum())
    answers = (targets != IGNORE).sum(-1)
    logits = torch.randn(2, batch["input_ids"].shape[1], 7)
    assert TASK.outputs(logits, batch, 0).shape == (prompts, 7)
    second_replayed = torch.tensor([False, True])
    assert TASK.outputs(logits, batch, 0, second_replayed).shape == (prompts + int(answers[1]), 7)
    # the student moves an answer token of row 0 only: the term sees it once row 0 is replayed
    ctx = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=rows)
    strategy = build("lwf", sections())
    strategy.prepare(ctx)
    with torch.no_grad():
        student = TASK.forward(model.eval(), batch).clone()
    row = 1  # batch position 1 is rows[0]: where its end token is predicted
    position = int(torch.nonzero(targets[row] != IGNORE)[-1])
    student[row, position] += torch.randn(student.shape[-1], generator=torch.Generator().manual_seed(0)) * 5
    zero = torch.zeros(())
    assert float(strategy.loss(ctx, batch, student, zero)) == pytest.approx(0.0, abs=1e-5)  # no replay
    ctx.replayed_from = 1  # rows[1] on are replayed: rows[0], the moved one, is new
    assert float(strategy.loss(ctx, batch, student, zero)) == pytest.approx(0.0, abs=1e-5)
    ctx.replayed_from = 0  # every row is replayed
    assert float(strategy.loss(ctx, batch, student, zero)) > 1e-3


def test_lora_with_lwf_distils_from_the_champion_under_its_adapters_without_a_copy(champion: tuple[Path, dict, dict]) -> None:
    """The teacher of lora+lwf is the adapted model with its adapters off, in evaluation mode: the
    champion's own outputs however far the adapters have moved, and no second model in memory."""
    source = champion[0]
    model, tokenizer = TASK.load(str(source), [])
    batch = TASK.encode(SECOND, tokenizer, [], 64).collate(list(range(len(SECOND))))
    with torch.no_grad():
        before = TASK.forward(model.eval(), batch)
    ctx = Context(task=TASK, model=model, tokenizer=tokenizer, labels=[], device=CPU, new=SECOND)
    strategy = build("lora+lwf", sections())
    strategy.prepare(ctx)
    lwf = next(part for part in strategy.parts if part.name == "lwf")  # type: ignore[attr-defined]
    assert lwf.teacher is None and lwf.adapted is ctx.model  # no copy: the adapted model itself
    with torch.no_grad():
        for name, param in ctx.model.named_parameters():
            if "lora_B" in name:  # the student moves away from where it started
                param.add_(torch.randn_like(param) * 0.5)
    ctx.model.train()
    with torch.no_grad(), lwf._champion() as teacher:
        assert torch.allclose(TASK.forward(teacher, batch), before, atol=1e-4)
    assert ctx.model.training  # back in training mode, adapters on
    student = TASK.forward(ctx.model, batch)
    assert not torch.allclose(student, before, atol=1e-2)
    assert float(lwf.loss(ctx, batch, student, torch.zeros(())).detach()) > 0
    trained = fit(source, SECOND, "lora+lwf", epochs=3)  # and the whole loop trains through it
    assert any(p.requires_grad for n, p in trained.model.named_parameters() if "lora_" in n)
