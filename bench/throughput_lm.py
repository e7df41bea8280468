"""Causal LM LoRA throughput: our loop against TRL's `SFTTrainer` with PEFT, side by side in one run.

    python -m bench.throughput --task causal_lm [--rows 128] [--eval-rows 64] [--model embedded:smollm2]

The tool a team would pick instead of ours to fine-tune an assistant is TRL's `SFTTrainer` with a
PEFT model. Every contender gets the same model (SmolLM2-135M-Instruct by default, converted once
under --scratch), the same LoRA adapters (`strategies.lora`'s config on every linear projection,
built once per contender by the same code), the same chatterbot-corpus question/answer pairs as
conversational `prompt`/`completion` rows rendered by the model's chat template, loss on the answer
tokens only, and the same epochs, batch size, learning rate, linear schedule with 10% warmup,
weight decay and clipping:
(a) `SFTTrainer` with those settings, gradient checkpointing off and float32 on the CPU as ours
    (TRL's own defaults turn on checkpointing and bf16, which trade speed or precision away);
(b) the same with length-grouped sampling (`train_sampling_strategy="group_by_length"`), the padding
    our loop saves by grouping;
(ours) `strategies.loop.train` with the `lora` strategy.
Only pairs whose rendered prompt and answer fit in --max-length are drawn, so no tool truncates
anything. Tokens/s: the tokens of the training sequences each tool built (its own tokenisation;
padding not counted) times epochs, over the wall time of the training call alone (model loading
and TRL's dataset preparation excluded; our loop's time includes its own tokenisation). Answer
loss: each trained model's mean cross-entropy per answer token on the same held-out pairs through
the same code (ours: `strategies/tasks/causal_lm.py`'s encoding).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.report import machine

TASK_NAME = "causal_lm"
CONTENDERS = {"trl": "(a) TRL SFTTrainer + PEFT", "trl-grouped": "(b) TRL SFTTrainer + PEFT, group_by_length",
              "ours": "lifelong loop (lora)"}


def model_dir(source: str, scratch: Path) -> str:
    """A local model directory: `embedded:smollm2` converted once under `scratch`, any other path as it is."""
    from strategies import embedded

    return str(embedded.prepare(source, scratch / "models")) if embedded.is_embedded_llm(source) else source


def sample_rows(tokenizer: Any, rows: int, eval_rows: int, seed: int, max_length: int) -> tuple[list[dict], list[dict]]:
    """Question/answer pairs of every English chatterbot topic (one answer per question), shuffled,
    kept only where prompt and answer fit in `max_length` tokens."""
    from bench.streams import chatterbot_pairs
    from strategies.tasks import causal_lm

    seen: dict[str, str] = {}
    for pairs in chatterbot_pairs().values():
        for prompt, completion in pairs:
            seen.setdefault(prompt, completion)
    pool = [{"prompt": [{"role": "user", "content": p}], "completion": c} for p, c in seen.items()]
    random.Random(seed).shuffle(pool)
    lengths = [len(p) + len(a) for p, a in zip(causal_lm.prompt_ids(tokenizer, pool), causal_lm.answer_ids(tokenizer, pool))]
    fitting = [row for row, n in zip(pool, lengths) if n <= max_length]
    return fitting[:rows], fitting[rows:rows + eval_rows]


def load(path: str, seed: int):  # type: ignore[no-untyped-def]
    import torch

    from strategies import tasks

    torch.manual_seed(seed)
    return tasks.load(TASK_NAME).load(path, [])


def with_lora(model, tokenizer, device):  # type: ignore[no-untyped-def]
    from daemon.strategyconfig import StrategyConfig
    from strategies import tasks
    from strategies.abc import Context
    from strategies.lora import Lora

    ctx = Context(task=tasks.load(TASK_NAME), model=model.to(device), tokenizer=tokenizer, labels=[], new=[], device=device)
    Lora(StrategyConfig().sections()["lora"]).prepare(ctx)
    return ctx.model


def run_ours(args, path: str, train_rows: list[dict], device) -> tuple[float, int, Any, Any]:  # type: ignore[no-untyped-def]
    from daemon.config import parse
    from daemon.strategyconfig import StrategyConfig
    from daemon.update.launcher import loop_settings
    from strategies import tasks
    from strategies.abc import Context, build
    from strategies.loop import train

    task = tasks.load(TASK_NAME)
    model, tokenizer = load(path, args.seed)
    ctx = Context(task=task, model=model, tokenizer=tokenizer, labels=[], new=list(train_rows), device=device,
                  max_length=args.max_length, seed=args.seed, rng=random.Random(args.seed))
    strategy = build("lora", StrategyConfig().sections())
    cfg = replace(loop_settings(parse({"model": {"task": TASK_NAME}, "strategy": {"min_steps": 0}})), epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, weight_decay=0.01, warmup_ratio=0.1, val_fraction=0.0,
                  early_stopping_patience=0)
    tokens = sum(len(ids) for ids in task.encode(train_rows, tokenizer, [], args.max_length).ids) * args.epochs
    started = time.perf_counter()
    train(ctx, strategy, cfg)
    _sync(device)
    return time.perf_counter() - started, tokens, ctx.model, tokenizer


def run_trl(args, path: str, train_rows: list[dict], device, grouped: bool) -> tuple[float, int, Any, Any]:  # type: ignore[no-untyped-def]
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load(path, args.seed)
    model = with_lora(model, tokenizer, device)
    data = Dataset.from_list([{"prompt": row["prompt"], "completion": [{"role": "assistant", "content": row["completion"]}]}
                              for row in train_rows])
    options: dict[str, Any] = dict(
        output_dir=str(Path(args.scratch) / f"trl-{int(grouped)}"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01, warmup_steps=0.1, max_grad_norm=1.0,
        lr_scheduler_type="linear", save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, seed=args.seed, use_cpu=device.type == "cpu", bf16=device.type == "cuda",
        dataloader_num_workers=0, max_length=args.max_length, packing=False, completion_only_loss=True)
    # off, as in our loop (TRL turns it on by default); transformers 5 renamed it
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    options["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    if grouped:
        options["train_sampling_strategy"] = "group_by_length"
    trainer = SFTTrainer(model=model, args=SFTConfig(**options), train_dataset=data, processing_class=tokenizer)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * args.epochs
    started = time.perf_counter()
    trainer.train()
    _sync(device)
    return time.perf_counter() - started, tokens, trainer.model, tokenizer


def answer_loss(model, tokenizer, rows: list[dict], device, max_length: int, batch_size: int = 16) -> float:  # type: ignore[no-untyped-def]
    """Mean cross-entropy per answer token (its end token included) over `rows`."""
    import torch

    from strategies import tasks
    from strategies.data import IGNORE

    task = tasks.load(TASK_NAME)
    encoded = task.encode(rows, tokenizer, [], max_length)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, targets = encoded.ids[start:start + batch_size], encoded.targets[start:start + batch_size]
            width = max(len(i) for i in ids)
            batch = {"input_ids": torch.tensor([i + [encoded.pad_id] * (width - len(i)) for i in ids], device=device),
                     "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device),
                     "labels": torch.tensor([list(t) + [IGNORE] * (width - len(t)) for t in targets], device=device)}
            logits = task.forward(model, batch)
            total += float(task.loss(logits, batch, reduction="sum"))
            count += int((batch["labels"][:, 1:] != IGNORE).sum())
    return total / count


def _sync(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main(args) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run the three contenders; returns {"results", "markdown", "section", "device"} for bench.throughput to write."""
    import torch
    import transformers
    import trl

    transformers.logging.set_verbosity_error()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    path = model_dir(args.model, Path(args.scratch))
    _, tokenizer = load(path, args.seed)
    train_rows, eval_rows = sample_rows(tokenizer, args.rows, args.eval_rows, args.seed, args.max_length)
    results = []
    for who in ("trl", "trl-grouped", "ours"):
        if who == "ours":
            seconds, tokens, model, tok = run_ours(args, path, train_rows, device)
        else:
            seconds, tokens, model, tok = run_trl(args, path, train_rows, device, grouped=who == "trl-grouped")
        loss = answer_loss(model, tok, eval_rows, device, args.max_length)
        row = {"who": who, "seconds": round(seconds, 2), "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
               "samples_per_second": round(len(train_rows) * args.epochs / seconds, 3), "answer_loss": round(loss, 4)}
        results.append(row)
        print(json.dumps(row), flush=True)
        del model
    base_model, base_tok = load(path, args.seed)
    base_loss = answer_loss(base_model.to(device), base_tok, eval_rows, device, args.max_length)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    command = (f"python -m bench.throughput --task causal_lm --rows {args.rows} --eval-rows {args.eval_rows} "
               f"--epochs {args.epochs} --batch-size {args.batch_size} --max-length {args.max_length} --lr {args.lr}")
    ours = next(r for r in results if r["who"] == "ours")
    lines = [f"## Training throughput, causal LM LoRA ({gpu or 'CPU'})", "",
             f"Command: `{command}`{' (on the GPU machine)' if gpu else ''}", "",
             f"Machine: {machine()}{', ' + gpu if gpu else ''}; torch {torch.__version__}, transformers "
             f"{transformers.__version__}, TRL {trl.__version__}; model {args.model}; {len(train_rows)} chatterbot-corpus "
             f"question/answer pairs ({sum(r['tokens'] for r in results if r['who'] == 'ours') // args.epochs:,} tokens "
             f"in our encoding), {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, LoRA as `strategy.lora` "
             f"(every linear projection); answer loss on {len(eval_rows)} held-out pairs (the base model: "
             f"{base_loss:.3f} nats per answer token).", "",
             "| contender | tokens/s | samples/s | wall s | training tokens | answer loss after | ours vs this |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results:
        lines.append(f"| {CONTENDERS[row['who']]} | {row['tokens_per_second']:.1f} | {row['samples_per_second']:.2f} | "
                     f"{row['seconds']:.1f} | {row['tokens']:,} | {row['answer_loss']:.3f} | "
                     f"{ours['tokens_per_second'] / row['tokens_per_second']:.2f}x |")
    lines += ["", "Targets: ours >= 1.2x (a)'s tokens/s, and an answer loss after the epoch no higher than (a)'s."]
    return {"results": results, "base_answer_loss": round(base_loss, 4), "markdown": "\n".join(lines),
            "section": f"throughput-causal-lm-{'gpu' if gpu else 'cpu'}", "device": gpu or "cpu"}
