"""One update, in a child process driven by a spec file; progress as JSON lines on stdout.

    python -m strategies.child SPEC.json
    python -m strategies.child --standby     # imports first, then reads the spec path from stdin

The spec (strategies/spec.py TrainSpec, written by the daemon, checked here on load) names the model to start from, the labels, the strategy and its
config, Arrow files of the training rows, of every held-out set and of rows set aside for the replay
pool only (batches the daemon gave up on), the champion to score side by side (and its predictions
kept from when it was the candidate), and where to write: `out` (the new version's files: model/ or
adapter/ + model-config/, state/, predictions.json), `serving` (merged weights of a LoRA
candidate), `checkpoint`, and `results`.

Exit codes: 0 done; 75 stopped by SIGTERM after a checkpoint (run again to resume); 1 failed (an
exception, a non-finite loss, out of memory, an invalid spec), with a "failed" line saying why
(strategies/spec.py defines the codes and the failure kinds for both sides).

Started by `torchrun` (spec `num_processes` > 1), every rank trains its share of each step; rank 0
alone prints progress, writes the candidate and evaluates (see strategies/distributed.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from strategies.spec import EXIT_FAILED, EXIT_INTERRUPTED, Failure, SpecError, TrainSpec, failed_event

QUIET = int(os.environ.get("RANK", "0")) != 0  # ranks other than 0 report failures only


def emit(event: dict[str, Any]) -> None:
    if QUIET and event.get("event") != "failed":
        return
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def read_rows(path: str) -> list[tuple[str, str]]:
    import pyarrow as pa

    with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all()
    return list(zip(table["text"].to_pylist(), table["label"].to_pylist()))


def run(spec: TrainSpec, stop: threading.Event) -> dict[str, Any] | None:
    """The results document (rank 0), or None on the other ranks of a data-parallel run."""
    from strategies import distributed

    group = distributed.join()
    try:
        return _run(spec, stop, group)
    finally:
        distributed.leave(group)


def _run(spec: TrainSpec, stop: threading.Event, group) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    import torch

    from strategies import models
    from strategies.abc import Context, build
    from strategies.data import Example
    from strategies.loop import Checkpoints, train

    labels = spec.labels
    device = group.device(spec.device)
    rows = read_rows(spec.data.train)
    unknown = sorted({label for _, label in rows} - set(labels))
    if unknown:
        raise SpecError("data.train", f"rows labelled {', '.join(map(repr, unknown[:5]))}, not in labels")
    examples = [Example(text, labels.index(label)) for text, label in rows]
    # train rows of batches given up after schedule.max_attempts failures: for the replay pool only
    set_aside = read_rows(spec.data.set_aside) if spec.data.set_aside else []

    def fresh_context(new: list[Example]) -> Context:
        torch.manual_seed(spec.seed)  # a grown head's new rows start the same every run
        model, tokenizer = models.load(spec.base, labels)
        return Context(model=model, tokenizer=tokenizer, labels=labels, device=device, new=new,
                       max_length=spec.max_length, seed=spec.seed, rng=random.Random(spec.seed),
                       previous_state=Path(spec.parent_state) if spec.parent_state else None,
                       old_label_count=spec.old_label_count, set_aside=set_aside)

    loop = spec.loop
    if loop.lr == "auto":
        loop = replace(loop, lr=search_lr(fresh_context, lambda: build(spec.strategy.name, spec.strategy.options),
                                          replace(loop, lr=1e-3), examples))
    ctx = fresh_context(examples)
    tokenizer = ctx.tokenizer
    strategy = build(spec.strategy.name, spec.strategy.options)
    checkpoints = Checkpoints(Path(spec.checkpoint), stop.is_set) if spec.checkpoint else None
    stats = train(ctx, strategy, loop, on_progress=emit, checkpoints=checkpoints, group=group)
    stats["lr"] = loop.lr
    if not group.main:
        return None

    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.lora and spec.parent is None:
        # the first version has no parent version to hang an adapter on: store it whole
        candidate = ctx.model.merge_and_unload()
        candidate.save_pretrained(out / "model", safe_serialization=True)
        tokenizer.save_pretrained(out / "model")
    elif ctx.lora:
        ctx.model.save_pretrained(out / "adapter", safe_serialization=True)
        ctx.model.base_model.model.config.save_pretrained(out / "model-config")
        tokenizer.save_pretrained(out / "model-config")
        candidate = ctx.model.merge_and_unload()
        serving = Path(spec.serving)
        candidate.save_pretrained(serving, safe_serialization=True)
        tokenizer.save_pretrained(serving)
    else:
        candidate = ctx.model
        candidate.save_pretrained(out / "model", safe_serialization=True)
        tokenizer.save_pretrained(out / "model")
    strategy.save_state(ctx, out / "state")

    emit({"event": "evaluating"})
    results = evaluate(spec, labels, candidate, tokenizer, device, ctx.max_length, out)
    results["train"] = stats
    return results


def evaluate(spec: TrainSpec, labels: list[str], candidate, tokenizer, device, max_length: int,  # type: ignore[no-untyped-def]
             out: Path) -> dict[str, Any]:
    """Candidate and champion scored on every held-out set, and the rows that changed between them.

    The candidate's predictions are kept with the version (out/predictions.json, each set's keyed by a
    digest of its texts and max_length): when this candidate is champion, the next update reuses them
    for every set they cover instead of scoring it again. The champion is scored as it serves, with
    its own head (its labels are a prefix of `labels`), so kept and fresh predictions agree.
    """
    from strategies import models
    from strategies.evaluate import predict, scores

    kept = _kept_predictions(spec.champion_predictions)
    champion = None
    index = {label: i for i, label in enumerate(labels)}
    results: dict[str, Any] = {"scores": {}, "paired": {}, "eval_reused": []}
    predictions: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name, path in spec.data.eval.items():
        held_out = read_rows(path)
        texts = [text for text, _ in held_out]
        truth = [index[label] for _, label in held_out]
        digest = _digest(texts, max_length)
        predicted = {"candidate": predict(candidate, tokenizer, texts, device, max_length)[0]}
        predictions[name] = {"digest": digest, "labels": [labels[i] for i in predicted["candidate"]]}
        if spec.champion is not None:
            hit = kept.get(name)
            if _covers(hit, digest, len(texts), index):
                predicted["champion"] = [index[label] for label in hit["labels"]]
                results["eval_reused"].append(name)
            else:
                if champion is None:
                    own = labels[: spec.old_label_count] or labels
                    champion = models.load(spec.champion, own)[0].to(device)
                predicted["champion"] = predict(champion, tokenizer, texts, device, max_length)[0]
        for who, found in predicted.items():
            results["scores"].setdefault(who, {})[name] = {k: v for k, v in scores(truth, found, labels).items()
                                                           if k != "per_label"}
        if "champion" in predicted:  # the same rows, both models: what changed, for the gate's sign test
            pairs = [(a == t, b == t) for a, b, t in zip(predicted["champion"], predicted["candidate"], truth)]
            results["paired"][name] = {"lost": sum(a and not b for a, b in pairs),
                                       "gained": sum(b and not a for a, b in pairs)}
    (out / "predictions.json").write_text(json.dumps(predictions))
    results["eval_seconds"] = round(time.perf_counter() - started, 3)
    return results


def _digest(texts: list[str], max_length: int) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([max_length, texts]).encode()).hexdigest()


def _covers(hit: Any, digest: str, rows: int, index: dict[str, int]) -> bool:
    """Kept predictions that are for exactly these rows, in labels this run knows."""
    if not isinstance(hit, dict) or hit.get("digest") != digest:
        return False
    found = hit.get("labels")
    return isinstance(found, list) and len(found) == rows and all(label in index for label in found)


def _kept_predictions(path: str | None) -> dict[str, Any]:
    """The champion's predictions from when it was the candidate; {} when there are none or they cannot be read."""
    if not path:
        return {}
    try:
        kept = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
SEARCH_ROWS = 512


def search_lr(fresh_context, make_strategy, cfg, examples) -> float:  # type: ignore[no-untyped-def]
    """`strategy.lr = "auto"`: one epoch per candidate rate on a slice of the rows, each from the same
    starting weights; the rate with the lowest validation loss wins."""
    from strategies.loop import train

    rng = random.Random(0)
    subset = examples if len(examples) <= SEARCH_ROWS else rng.sample(examples, SEARCH_ROWS)
    best_lr, best_loss = LR_GRID[0], float("inf")
    for lr in LR_GRID:
        ctx = fresh_context(subset)
        stats = train(ctx, make_strategy(), replace(cfg, lr=lr, epochs=1, early_stopping_patience=0,
                                                    val_fraction=max(cfg.val_fraction, 0.2)))
        loss = stats.get("validation_loss")
        emit({"event": "lr_search", "lr": lr, "validation_loss": loss})
        if loss is not None and loss < best_loss:
            best_lr, best_loss = lr, loss
    emit({"event": "lr_chosen", "lr": best_lr})
    return best_lr


def standby() -> str | None:
    """Do the imports every update needs, then wait for a spec path on stdin (None: told to go).

    Until the spec arrives SIGTERM ends the process (a standby has nothing to save); from the moment
    it has, SIGTERM asks for a checkpoint as in any run."""
    import torch  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from strategies import abc, evaluate, loop, models  # noqa: F401

    abc.build("finetune", {})  # registers (imports) every strategy module
    emit({"event": "standby", "pid": os.getpid()})
    line = sys.stdin.readline().strip()
    return line or None


def main(argv: list[str]) -> int:
    stop = threading.Event()
    waiting = argv == ["--standby"]

    def on_term(*_: object) -> None:
        if waiting:
            os._exit(EXIT_INTERRUPTED)  # idle, or the spec read but not begun: the daemon resumes it
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    if waiting:
        path = standby()
        waiting = False  # read by on_term: the spec is ours now, so a stop is a checkpoint
        if path is None:
            return 0
        argv = [path]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    emit({"event": "start", "pid": os.getpid(), "processes": int(os.environ.get("WORLD_SIZE", "1"))})
    try:
        spec = TrainSpec.load(Path(argv[0]))
    except (SpecError, OSError) as exc:
        emit({"event": "failed", "kind": Failure.INVALID_SPEC.value, "error": f"{type(exc).__name__}: {exc}"})
        return EXIT_FAILED
    try:
        from strategies.loop import Interrupted, NonFiniteLoss

        try:
            results = run(spec, stop)
        except Interrupted as exc:
            emit({"event": "interrupted", "message": str(exc)})
            return EXIT_INTERRUPTED
        except NonFiniteLoss as exc:
            emit({"event": "failed", "kind": Failure.NON_FINITE_LOSS.value, "error": str(exc)})
            return EXIT_FAILED
        except SpecError as exc:
            emit(failed_event(exc, Failure.INVALID_SPEC))
            return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - every failure is reported, never a promotion
        emit(failed_event(exc))
        return EXIT_FAILED
    if results is not None:
        Path(spec.results).write_text(json.dumps(results, indent=2))
        emit({"event": "done", "results": spec.results})
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # every file is written and closed by now; a normal exit would spend over a second tearing down
    # torch and transformers while the daemon waits for the decision
    os._exit(code)
