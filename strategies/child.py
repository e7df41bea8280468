"""One update, in a child process driven by a spec file; progress as JSON lines on stdout.

    python -m strategies.child SPEC.json
    python -m strategies.child --standby     # imports first, then reads the spec path from stdin

The spec (strategies/spec.py TrainSpec, written by the daemon, checked here on load) names the task
(strategies/tasks/), the model to start from, the labels, the strategy and its config, Arrow files
of the training rows, of every held-out set and of rows set aside for the replay pool only
(batches the daemon gave up on), the champion to score side by side (and its predictions
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
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from strategies.spec import EXIT_FAILED, EXIT_INTERRUPTED, Failure, SpecError, TrainSpec, failed_event
from strategies.tasks import TASKS

QUIET = int(os.environ.get("RANK", "0")) != 0  # ranks other than 0 report failures only
# more receivers of rank 0's events: a remote run (strategies/remote.py) sends them to the run's store
SINKS: list[Callable[[dict[str, Any]], None]] = []


def emit(event: dict[str, Any]) -> None:
    if QUIET and event.get("event") != "failed":
        return
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
    for sink in SINKS:
        sink(event)


def read_rows(path: str) -> list[dict[str, Any]]:
    """An Arrow file the daemon wrote, as rows (dicts of the task's columns)."""
    import pyarrow as pa

    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all().to_pylist()


def run(spec: TrainSpec, stop: threading.Event, *,
        on_checkpoint: Callable[[Path], None] | None = None) -> dict[str, Any] | None:
    """The results document (rank 0), or None on the other ranks of a data-parallel run.
    `on_checkpoint` is called on rank 0 with the folder after every checkpoint written."""
    from strategies import distributed

    group = distributed.join()
    try:
        return _run(spec, stop, group, on_checkpoint)
    finally:
        distributed.leave(group)


def _run(spec: TrainSpec, stop: threading.Event, group, on_checkpoint=None) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    import torch

    from strategies import tasks
    from strategies.abc import Context, build
    from strategies.evaluate import side_by_side
    from strategies.loop import Checkpoints, train

    task = tasks.load(spec.task)
    labels = spec.labels
    device = group.device(spec.device)
    rows = read_rows(spec.data.train)
    if TASKS[spec.task].labelled:
        column = TASKS[spec.task].columns[-1]  # a row's label, or its tags (one per token)
        used = {value for row in rows for value in (row[column] if isinstance(row[column], list) else [row[column]])}
        unknown = sorted(used - set(labels))
        if unknown:
            raise SpecError("data.train", f"rows labelled {', '.join(map(repr, unknown[:5]))}, not in labels")
    # train rows of batches given up after schedule.max_attempts failures: for the replay pool only
    set_aside = read_rows(spec.data.set_aside) if spec.data.set_aside else []

    def fresh_context(new: list[dict[str, Any]]) -> Context:
        torch.manual_seed(spec.seed)  # a grown head's new rows start the same every run
        model, tokenizer = task.load(spec.base, labels)
        return Context(task=task, model=model, tokenizer=tokenizer, labels=labels, device=device, new=new,
                       max_length=spec.max_length, seed=spec.seed, rng=random.Random(spec.seed),
                       previous_state=Path(spec.parent_state) if spec.parent_state else None,
                       old_label_count=spec.old_label_count, set_aside=set_aside)

    loop = spec.loop
    if loop.lr == "auto":
        loop = replace(loop, lr=search_lr(fresh_context, lambda: build(spec.strategy.name, spec.strategy.options),
                                          replace(loop, lr=1e-3), rows))
    ctx = fresh_context(rows)
    # whether a small batch was learned is judged where it counts, on rows the model never trains
    # on: the batch's held-out rows (the gate scores them too); without any, its new rows
    held_out = spec.data.eval.get(str(spec.batch))
    ctx.learned_on = (read_rows(held_out) or None) if held_out else None
    tokenizer = ctx.tokenizer
    strategy = build(spec.strategy.name, spec.strategy.options)
    checkpoints = Checkpoints(Path(spec.checkpoint), stop.is_set, on_checkpoint) if spec.checkpoint else None
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
        inner = ctx.model.base_model.model
        inner.config.architectures = [type(inner).__name__]  # the class strategies/materialize.py rebuilds
        inner.config.save_pretrained(out / "model-config")
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
    results = side_by_side(spec, task, candidate, tokenizer, device, read_rows, out)
    results["train"] = stats
    return results


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
        stats = train(ctx, make_strategy(), replace(cfg, lr=lr, epochs=1, min_steps=0, early_stopping_patience=0,
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

    from strategies import abc, evaluate, loop, models, tasks  # noqa: F401

    abc.build("finetune", {})  # registers (imports) every strategy module
    for name in tasks.TASKS:
        tasks.load(name)
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
    code, results = attempt(spec, stop)
    if results is not None:
        Path(spec.results).write_text(json.dumps(results, indent=2))
        emit({"event": "done", "results": spec.results})
    return code


def attempt(spec: TrainSpec, stop: threading.Event,
            on_checkpoint: Callable[[Path], None] | None = None) -> tuple[int, dict[str, Any] | None]:
    """Run the spec: (exit code, results on rank 0); a stop or failure is reported as its event."""
    try:
        from strategies.loop import Interrupted, NonFiniteLoss

        try:
            return 0, run(spec, stop, on_checkpoint=on_checkpoint)
        except Interrupted as exc:
            emit({"event": "interrupted", "message": str(exc)})
            return EXIT_INTERRUPTED, None
        except NonFiniteLoss as exc:
            emit({"event": "failed", "kind": Failure.NON_FINITE_LOSS.value, "error": str(exc)})
            return EXIT_FAILED, None
        except SpecError as exc:
            emit(failed_event(exc, Failure.INVALID_SPEC))
            return EXIT_FAILED, None
    except Exception as exc:  # noqa: BLE001 - every failure is reported, never a promotion
        emit(failed_event(exc))
        return EXIT_FAILED, None


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # every file is written and closed by now; a normal exit would spend over a second tearing down
    # torch and transformers while the daemon waits for the decision
    os._exit(code)
