"""Training throughput: our loop against the Hugging Face `Trainer`, side by side in one run.

    python -m bench.throughput [--rows 512] [--epochs 1] [--eval-rows 500] [--model embedded:minilm]
    python -m bench.throughput --task causal_lm ...   (LoRA on SmolLM2 against TRL: bench/throughput_lm.py)

Same model, rows, epochs, batch size, learning rate, warmup and clipping for every contender:
(a) the seed recipe: `Trainer` with every example padded to 512 tokens (`padding="max_length"`);
(b) a tuned `Trainer`: dynamic padding (`DataCollatorWithPadding`) and length-grouped sampling,
    truncated at the same `--max-length` as ours;
(ours) `strategies.loop.train`: dynamic padding and length-grouped batches.
Each for full fine-tuning and for LoRA (the same peft config, built by `strategies.lora`). Samples/s
is training rows x epochs over the wall time of the training call alone (model loading excluded;
our loop's time includes its own tokenisation). Accuracy: each trained model on the same held-out
rows through the same evaluation code. Data: sentences of the four VADER domains as 3-class
sentiment (see bench/streams.py), so lengths vary as in real use.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from bench.report import machine, write_section


def sample_rows(rows: int, eval_rows: int, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    from bench.streams import sentiment, vader_sentences

    pool = [(text, sentiment(score)) for sentences in vader_sentences().values() for text, score in sentences]
    pool = list(dict.fromkeys(pool))
    random.Random(seed).shuffle(pool)
    return pool[:rows], pool[rows:rows + eval_rows]


def load(model_name: str, labels: list[str], seed: int):  # type: ignore[no-untyped-def]
    import torch

    from strategies import tasks

    torch.manual_seed(seed)
    return tasks.load("sequence_classification").load(model_name, labels)


def lora_wrap(model, tokenizer, labels, device):  # type: ignore[no-untyped-def]
    from daemon.strategyconfig import StrategyConfig
    from strategies import tasks
    from strategies.abc import Context
    from strategies.lora import Lora

    ctx = Context(task=tasks.load("sequence_classification"), model=model, tokenizer=tokenizer, labels=labels,
                  new=[], device=device)
    Lora(StrategyConfig().sections()["lora"]).prepare(ctx)
    return ctx.model


def run_ours(args, mode, train_rows, labels, device) -> tuple[float, object, object]:  # type: ignore[no-untyped-def]
    from daemon.strategyconfig import StrategyConfig
    from dataclasses import replace

    from strategies import tasks
    from strategies.abc import Context, build

    from daemon.config import parse
    from daemon.update.launcher import loop_settings
    from strategies.loop import train

    model, tokenizer = load(args.model, labels, args.seed)
    examples = [{"text": text, "label": label} for text, label in train_rows]
    ctx = Context(task=tasks.load("sequence_classification"), model=model, tokenizer=tokenizer, labels=labels, new=examples, device=device,
                  max_length=args.max_length, seed=args.seed, rng=random.Random(args.seed))
    strategy = build("lora" if mode == "lora" else "finetune", StrategyConfig().sections())
    # min_steps 0: exactly `epochs` epochs, as the Trainer runs (the default tops small batches up to 100 steps)
    cfg = replace(loop_settings(parse({"strategy": {"class_weights": "none", "min_steps": 0}})), epochs=args.epochs,
                  batch_size=args.batch_size, lr=lr_for(args, mode), weight_decay=0.01, warmup_ratio=0.1,
                  val_fraction=0.0, early_stopping_patience=0)
    started = time.perf_counter()
    train(ctx, strategy, cfg)
    _sync(device)
    return time.perf_counter() - started, ctx.model, tokenizer


def run_trainer(args, mode, train_rows, labels, device, tuned: bool) -> tuple[float, object, object]:  # type: ignore[no-untyped-def]
    import inspect

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    model, tokenizer = load(args.model, labels, args.seed)
    model = model.to(device)
    if mode == "lora":
        model = lora_wrap(model, tokenizer, labels, device)
    texts = [text for text, _ in train_rows]
    if tuned:
        encoded = tokenizer(texts, truncation=True, max_length=args.max_length)
    else:  # the seed recipe: every example padded to 512 tokens
        encoded = tokenizer(texts, truncation=True, max_length=512, padding="max_length")
    dataset = [{"input_ids": ids, "attention_mask": mask, "labels": labels.index(label)}
               for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], train_rows)]
    options = dict(output_dir=str(Path(args.scratch) / f"trainer-{mode}-{int(tuned)}"), per_device_train_batch_size=args.batch_size,
                   num_train_epochs=args.epochs, learning_rate=lr_for(args, mode), weight_decay=0.01, warmup_steps=0.1,
                   max_grad_norm=1.0, lr_scheduler_type="linear", save_strategy="no", eval_strategy="no",
                   logging_strategy="no", report_to="none", disable_tqdm=True, seed=args.seed,
                   use_cpu=device.type == "cpu", bf16=device.type == "cuda", dataloader_num_workers=0)
    if tuned:
        if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters:
            options["train_sampling_strategy"] = "group_by_length"
        else:  # transformers 4.x
            options["group_by_length"] = True
    trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer) if tuned else default_data_collator)
    started = time.perf_counter()
    trainer.train()
    _sync(device)
    return time.perf_counter() - started, trainer.model, tokenizer


def lr_for(args, mode: str) -> float:  # type: ignore[no-untyped-def]
    return args.lr_lora if mode == "lora" else args.lr_full


def accuracy(model, tokenizer, eval_rows, labels, device, max_length) -> float:  # type: ignore[no-untyped-def]
    from strategies import tasks

    task = tasks.load("sequence_classification")
    rows = [{"text": text, "label": label} for text, label in eval_rows]
    return task.score(rows, task.predict(model.to(device), tokenizer, rows, labels, device, max_length), labels)["accuracy"]


def _sync(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


CLASSIFICATION_DEFAULTS = {"rows": 512, "eval_rows": 500, "batch_size": 16, "model": "embedded:minilm"}
CAUSAL_DEFAULTS = {"rows": 128, "eval_rows": 64, "batch_size": 8, "model": "embedded:smollm2"}
CONTENDERS = {"seed": "(a) Trainer, padding=max_length (512)", "tuned": "(b) Trainer, dynamic padding + group_by_length",
              "ours": "lifelong loop"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("sequence_classification", "causal_lm"), default="sequence_classification")
    # the defaults below are sequence_classification's; causal_lm's are in CAUSAL_DEFAULTS
    parser.add_argument("--rows", type=int, default=None, help="training rows (512; causal_lm 128)")
    parser.add_argument("--eval-rows", type=int, default=None, help="held-out rows (500; causal_lm 64)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="(16; causal_lm 8)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr-full", type=float, default=5e-5)
    parser.add_argument("--lr-lora", type=float, default=5e-4)
    parser.add_argument("--lr", type=float, default=None, help="causal_lm: the rate of every contender "
                                                                 "(default: strategy.lora.lr, as the daemon trains)")
    parser.add_argument("--model", default=None, help="(embedded:minilm; causal_lm embedded:smollm2)")
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scratch", default="bench/out/throughput")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--section", default=None, help="BENCHMARKS.md section name (default: throughput-<device>)")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--render", type=Path, default=None, help="write the section from a --json file made elsewhere (a GPU box)")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        write_section(saved["section"], saved["markdown"])
        return
    defaults = CAUSAL_DEFAULTS if args.task == "causal_lm" else CLASSIFICATION_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.task == "causal_lm":
        from bench import throughput_lm

        if args.lr is None:
            from daemon.strategyconfig import StrategyConfig

            args.lr = StrategyConfig().lora.lr
        done = throughput_lm.main(args)
        print(done["markdown"])
        section = args.section or done["section"]
        if args.json:
            args.json.write_text(json.dumps({**done, "section": section}, indent=2))
        if not args.no_write:
            write_section(section, done["markdown"])
        return

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    train_rows, eval_rows = sample_rows(args.rows, args.eval_rows, args.seed)
    labels = sorted({label for _, label in train_rows + eval_rows})
    results = []
    for mode in args.modes.split(","):
        for who in ("seed", "tuned", "ours"):
            if who == "ours":
                seconds, model, tokenizer = run_ours(args, mode, train_rows, labels, device)
            else:
                seconds, model, tokenizer = run_trainer(args, mode, train_rows, labels, device, tuned=who == "tuned")
            acc = accuracy(model, tokenizer, eval_rows, labels, device, args.max_length)
            row = {"mode": mode, "who": who, "seconds": round(seconds, 2),
                   "samples_per_second": round(len(train_rows) * args.epochs / seconds, 2), "accuracy": round(acc, 4)}
            results.append(row)
            print(json.dumps(row), flush=True)
            del model

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    command = ("python -m bench.throughput " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("rows", args.rows), ("epochs", args.epochs), ("eval_rows", args.eval_rows),
                                                   ("batch_size", args.batch_size), ("max_length", args.max_length))))
    lines = [f"## Training throughput ({gpu or 'CPU'})", "",
             f"Command: `{command}`{' (on the GPU machine)' if gpu else ''}", "",
             f"Machine: {machine()}{', ' + gpu if gpu else ''}; torch {torch.__version__}, transformers {transformers.__version__}; "
             f"model {args.model}; {len(train_rows)} VADER sentences, {args.epochs} epoch(s), batch {args.batch_size}, "
             f"lr {args.lr_full} (full) / {args.lr_lora} (LoRA), truncation {args.max_length} for (b) and ours; "
             f"accuracy on {len(eval_rows)} held-out sentences (3 classes).", "",
             "| training | contender | samples/s | wall s | accuracy | ours vs this |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in results:
        ours = next(r for r in results if r["mode"] == row["mode"] and r["who"] == "ours")
        ratio = ours["samples_per_second"] / row["samples_per_second"]
        lines.append(f"| {row['mode']} | {CONTENDERS[row['who']]} | {row['samples_per_second']:.1f} | {row['seconds']:.1f} | "
                     f"{row['accuracy']:.3f} | {ratio:.2f}x |")
    lines += ["", "Targets: ours >= 3x (a) and >= 1.0x (b)."]
    print("\n".join(lines))
    section = args.section or f"throughput-{'gpu' if gpu else 'cpu'}"
    if args.json:
        args.json.write_text(json.dumps({"device": gpu or "cpu", "results": results, "section": section,
                                         "markdown": "\n".join(lines)}, indent=2))
    if not args.no_write:
        write_section(section, "\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
