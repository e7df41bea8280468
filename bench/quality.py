"""Learning quality on real text through the real daemon: does it learn without forgetting, and at what cost?

    python -m bench.quality --stream bbc|vader|mixed|ner --profile quick|full --out DIR [--strategies a,b,...] [--jobs 2] [--merge]
    python -m bench.quality --stream chat ...   (causal_lm on SmolLM2: bench/quality_chat.py)
    python -m bench.quality ... --set strategy.min_steps=0 --section quality-bbc-avalanche   (overrides, own section)

For each strategy a real `lifelong run` gets the stream's files one by one (bench/streams.py), each
followed by `lifelong update --now --wait`; decisions, scores and training counts are read back from
the home's registry afterwards. Two references use the same engine (the training child, its loop
and evaluation) outside the daemon: `joint`, one model trained once on every batch (the upper
bound), and `retrain`, a model retrained from the base on all data so far at every batch (what
users do instead). Held-out rows are the daemon's own (its stable hash split), so every contender
is scored on the same rows.

The `ner` stream runs `model.task = "token_classification"` and scores entity-level micro F1 (each
batch's held-out sentences judged on the types that batch labels) where the others score accuracy;
the figures below keep their names (`acc` is then the mean F1).

Figures per strategy: `acc`, the final champion's mean accuracy over every batch's held-out rows;
`bwt`, backward transfer, the mean over earlier batches of final minus just-learned accuracy;
`forgetting_max`, the largest drop from an earlier batch's best accuracy to its final one (the
champion's, what users are served); `candidate_drop_max`, the largest drop any candidate showed on an
earlier batch against its champion (the forgetting the gate saw, and stopped when it rejected);
`train_samples`, every example the training loop processed; `wall_seconds`; `promoted`/`rejected`.
Writes DIR/results.json, DIR/table.md, DIR/matrices.png, DIR/compute.png, and (unless --no-write)
the BENCHMARKS.md section with the plots copied to docs/img/ (bench/quality_report.py).

`--jobs N` runs N contenders at once, each child with cores / N torch threads (OMP_NUM_THREADS): on
2 cores, two single-threaded runs finish the table sooner than one run on two threads, since much of
an update (tokenising, saving, start-up) is single-threaded. Each contender's wall seconds are then
measured beside another; the learning figures do not depend on it (same seeds, same rows).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from bench.streams import Part, build, write

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("finetune", "replay", "ewc", "lora", "lwf", "lora+replay", "ewc+replay")
# the daemons and training children this run started and has not yet seen stop: a SIGTERM or Ctrl-C
# to the bench stops them too (the children run in sessions of their own, beyond the terminal's reach)
RUNNING: set[subprocess.Popen] = set()


def stop_them_on_signals() -> None:
    """A SIGTERM or SIGINT to this process terminates every process in RUNNING, then exits (143, 130)."""
    def stop(signum: int, frame: object) -> None:
        for process in list(RUNNING):
            process.terminate()
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def default_for(stream: str) -> str:
    """The strategy a home of the stream's task trains when its config names none."""
    from strategies.tasks import TASKS

    return TASKS[task_of(stream)].strategy


SLOWEST_FIRST = ("retrain", "ewc+replay", "replay", "lora+replay", "lwf", "ewc", "finetune", "lora", "joint")

# Sized for 2 CPU cores with --jobs 2: quick, the whole bbc table in under 20 minutes; full, three
# seeds of every contender in under 90 minutes per stream. eval_fraction 0.3 on these small files:
# the gate pools held-out sets under gate.min_eval_rows, and bigger sets make that pool less noisy.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"seeds": [0], "max_length": 64, "eval_fraction": 0.3, "epochs": 2,
              "per_group": {"bbc": 200, "vader": 300, "mixed": None, "ner": 300}},
    "full": {"seeds": [0, 1, 2], "max_length": 64, "eval_fraction": 0.3, "epochs": 2,
             "per_group": {"bbc": 300, "vader": 300, "mixed": None, "ner": None}},
}
# the task each stream trains (every other stream: sequence_classification) and the score it reports
STREAM_TASK = {"ner": "token_classification"}
METRIC = {"sequence_classification": "accuracy", "token_classification": "entity_f1", "causal_lm": "answer_loss"}


def task_of(stream: str) -> str:
    return STREAM_TASK.get(stream, "sequence_classification")


def score_name(stream: str) -> str:
    """What the tables and plots call the stream's score."""
    return "entity F1" if task_of(stream) == "token_classification" else "accuracy"


def setting_env(settings: list[str]) -> dict[str, str]:
    """`--set strategy.min_steps=0` -> {"LIFELONG_STRATEGY__MIN_STEPS": "0"}: the daemon's own env overrides
    (a section with a colon too: `strategy.avalanche:ewc.ewc_lambda=5000`)."""
    found = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {setting!r}: use SECTION.KEY=VALUE")
        found["LIFELONG_" + "__".join(part.upper() for part in key.split("."))] = value
    return found


def env_for(home: Path, strategy: str, seed: int, profile: dict[str, Any], model: str) -> dict[str, str]:
    overrides = {
        "MODEL__BASE": json.dumps(model), "MODEL__MAX_LENGTH": str(profile["max_length"]),
        "MODEL__TASK": json.dumps(profile.get("task", "sequence_classification")),
        "INBOX__SETTLE_SECONDS": "0", "INBOX__EVAL_FRACTION": str(profile["eval_fraction"]),
        # updates only when asked: one per file
        "SCHEDULE__INTERVAL": '"24h"', "SCHEDULE__MIN_NEW_ROWS": "1000000000", "SCHEDULE__MAX_WAIT": '"10000h"',
        "STRATEGY__NAME": json.dumps(strategy), "STRATEGY__EPOCHS": str(profile["epochs"]),
        "TRAIN__SEED": str(seed), "METRICS__BIND": '"127.0.0.1:0"',
    }
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "LIFELONG_HOME": str(home),
            **{f"LIFELONG_{k}": v for k, v in overrides.items()}, **setting_env(profile.get("set", []))}


def setting_tree(settings: list[str]) -> dict[str, Any]:
    """`--set` entries as a nested config ({"strategy": {"min_steps": 0}}), for the references, which
    are configured in-process rather than through the daemon's environment (values read as there)."""
    from daemon.envconfig import env_value

    tree: dict[str, Any] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = env_value(value)
    return tree


def lifelong(*args: str, env: dict[str, str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_strategy(strategy: str, files: list[Path], seed: int, profile: dict[str, Any], model: str, work: Path,
                 keep_home: bool = False) -> dict[str, Any]:
    """Drive a real daemon through the stream; the per-update records read back from its registry."""
    home = work / f"{strategy.replace('+', '-')}-seed{seed}"
    shutil.rmtree(home, ignore_errors=True)
    env = env_for(home, strategy, seed, profile, model)
    lifelong("init", env=env).check_returncode()
    started = time.monotonic()
    drive(home, env, files, f"{strategy} seed {seed}", work / f"{home.name}.log")
    wall = time.monotonic() - started
    measured = read_back(home, len(files))
    if not keep_home:
        prune(home)
    return {"wall_seconds": wall, **measured}


def drive(home: Path, env: dict[str, str], files: list[Path], label: str, log: Path, *,
          start_timeout: float = 60, update_timeout: float = 3600) -> list[dict[str, Any]]:
    """A real `lifelong run` on the initialised `home` gets `files` one by one, each renamed into the
    inbox and followed by `lifelong update --now --wait`; the outcomes in order. The daemon is stopped after."""
    daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    RUNNING.add(daemon)
    started = time.monotonic()
    outcomes = []
    try:
        _wait(lambda: (home / "state" / "daemon.json").is_file(), start_timeout, "daemon start", daemon)
        for path in files:
            tmp = home / "inbox" / f".{path.name}"
            shutil.copy(path, tmp)
            tmp.rename(home / "inbox" / path.name)
            _wait(lambda: (home / "archive" / path.name).exists() or (home / "quarantine" / path.name).exists(),
                  120, f"{path.name} ingested", daemon)
            done = lifelong("update", "--now", "--wait", "--json", env=env, timeout=update_timeout)
            if done.returncode != 0:
                raise RuntimeError(f"{label}: update after {path.name} failed: {done.stderr[-2000:]}")
            outcome = json.loads(done.stdout)
            outcomes.append(outcome)
            print(f"  {label} {path.name}: {outcome.get('decision')} {outcome.get('version')} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=300)
        RUNNING.discard(daemon)
    return outcomes


def prune(home: Path) -> None:
    """Drop a finished home's weights: every version (88 to 175 MB each on MiniLM), the materialised
    champion and the update work folders (the registry's database, the row store, the archive and the
    daemon's log stay; `read_back` still reads it, without recovery). A full table's homes hold about 20 GB."""
    for heavy in (home / "registry" / "versions", home / "registry" / "serving", home / "state" / "work"):
        shutil.rmtree(heavy, ignore_errors=True)


def read_back(home: Path, batches: int) -> dict[str, Any]:
    """The matrix of the champion's scores (the gate's metric: accuracy, entity F1, answer loss) after
    each update, training counts and decisions."""
    from registry.registry import Registry

    matrix: list[list[float | None]] = []
    tokens = promoted = rejected = below_floor = 0
    by_batch_samples: list[int] = []
    drops: list[float] = []
    verdicts: list[str | None] = []
    champion: dict[str, float | None] = {}
    # read only, without recovery: a pruned home (its versions' files deleted) is read again as it is
    with Registry(home / "registry", recover=False) as registry:
        by_batch = {int(r.info["data"]["experience"]): (r, registry.decision_record(r.version)) for r in registry.versions()}
    for batch in range(1, batches + 1):
        if batch in by_batch:
            record, decision = by_batch[batch]
            by_batch_samples.append(int(record.info.get("train", {}).get("train_samples", 0)))
            tokens += int(record.info.get("train", {}).get("train_tokens", 0))
            metrics = (decision.metrics if decision else {}) or {}
            verdict = decision.decision if decision else None
            promoted += verdict == "promoted"
            rejected += verdict == "rejected"
            new, floor = (metrics.get("candidate") or {}).get("new"), _floor(metrics)
            if verdict == "promoted" and batch > 1 and new is not None and floor is not None:
                below_floor += new < floor  # a promoted model worse than one fixed answer (or a guess)
            if metrics.get("forgetting_max") is not None:
                drops.append(metrics["forgetting_max"])
            who = "candidate" if verdict == "promoted" else "champion"
            champion = dict(((metrics.get(who) or {}).get("per_experience")) or champion)
        else:
            by_batch_samples.append(0)
        verdicts.append(by_batch[batch][1].decision if batch in by_batch and by_batch[batch][1] else None)
        matrix.append([champion.get(str(j)) for j in range(1, batches + 1)])
    return {"matrix": matrix, "train_samples": sum(by_batch_samples), "train_tokens": tokens, "samples_by_batch": by_batch_samples,
            "promoted": promoted, "rejected": rejected, "candidate_drop_max": max(drops, default=None), "verdicts": verdicts,
            "promoted_below_floor": below_floor}


def reference_rows(task: str, rows: list[dict]) -> list[tuple[tuple, str, list[str]]]:
    """A stream file's rows as the references take them: (the row in the task's columns, the text the
    daemon's stable split hashes, the labels it brings) for each."""
    from strategies.tasks import bio

    if task == "token_classification":  # a sentence: its tokens joined; its entity types
        return [((r["tokens"], r["tags"]), " ".join(r["tokens"]), [kind for kind, _, _ in bio.spans(r["tags"])])
                for r in rows]
    if task == "causal_lm":  # a plain prompt is one user message, as the inbox reads it; no labels
        found = []
        for r in rows:
            prompt = [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else list(r["prompt"])
            found.append(((prompt, r["completion"]), "\n".join(m["content"] for m in prompt), []))
        return found
    return [((r["text"], r["label"]), r["text"], [r["label"]]) for r in rows]


def run_reference(name: str, parts: list[Part], seed: int, profile: dict[str, Any], model: str, work: Path,
                  lr: float | None = None, strategy: str = "finetune") -> dict[str, Any]:
    """`joint` or `retrain` through the training child (same loop, same evaluation), held-out rows split
    as the daemon does; `strategy` (`finetune`: every weight) at the loop settings of the strategies
    (and `profile["set"]`)."""
    from daemon.config import parse
    from daemon.ingest.splits import is_eval
    from daemon.strategyconfig import StrategyConfig
    from daemon.update.launcher import ChildRun, train_spec, write_rows
    from strategies.spec import DataPaths
    from strategies.tasks import TASKS, bio

    task = profile.get("task", "sequence_classification")
    columns, metric = TASKS[task].columns, METRIC[task]
    tagged = task == "token_classification"
    overrides = setting_tree(profile.get("set", []))
    config = parse({**overrides, "model": {"base": model, "max_length": profile["max_length"], "task": task},
                    "train": {"seed": seed},
                    "strategy": {**overrides.get("strategy", {}), "name": strategy, "epochs": profile["epochs"],
                                 "lr": lr or StrategyConfig().lr}})

    folder = work / f"{name}{'' if strategy == 'finetune' else '-' + strategy.replace('+', '-')}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    train_sets, eval_paths, eval_rows, labels = [], {}, {}, []
    for j, part in enumerate(parts, start=1):
        viewed = reference_rows(task, part.rows)
        labels += [label for label in dict.fromkeys(n for _, _, names in viewed for n in names) if label not in labels]
        train_sets.append([row for row, key, _ in viewed if not is_eval(key, profile["eval_fraction"])])
        eval_paths[str(j)] = folder / "data" / f"eval-{j}.arrow"
        eval_rows[str(j)] = write_rows(eval_paths[str(j)], [row for row, key, _ in viewed
                                                            if is_eval(key, profile["eval_fraction"])], columns)
    stages = [len(parts)] if name == "joint" else list(range(1, len(parts) + 1))
    matrix, samples, tokens, started = [], 0, 0, time.monotonic()
    for stage in stages:
        run = folder / f"stage-{stage}"
        run.mkdir()
        train_rows = write_rows(run / "train.arrow", [row for rows in train_sets[:stage] for row in rows], columns)
        evals = {k: str(v) for k, v in eval_paths.items() if int(k) <= stage}
        data = DataPaths(train=str(run / "train.arrow"), train_rows=train_rows, eval=evals,
                         eval_rows={k: eval_rows[k] for k in evals}, set_aside=None, set_aside_rows=0, set_aside_batches=[])
        train_spec(config, run, batch=stage, labels=bio.tag_labels(labels) if tagged else labels,
                   data=data).write(run / "spec.json")
        child = ChildRun(run / "spec.json").start()
        RUNNING.add(child.process)
        try:
            results = child.wait()
        finally:
            RUNNING.discard(child.process)
        samples += int(results["train"]["train_samples"])
        tokens += int(results["train"].get("train_tokens", 0))
        scores = results["scores"]["candidate"]
        matrix.append([scores[str(j)][metric] if str(j) in scores else None for j in range(1, len(parts) + 1)])
        shutil.rmtree(run / "out", ignore_errors=True)
        print(f"  {name} seed {seed} stage {stage}/{len(parts)} ({time.monotonic() - started:.0f} s)", flush=True)
    wall = time.monotonic() - started
    if name == "joint":  # one model: its row stands for the end of the stream
        matrix = [[None] * len(parts) for _ in parts[:-1]] + matrix
    return {"matrix": matrix, "train_samples": samples, "train_tokens": tokens, "wall_seconds": wall, "promoted": None,
            "rejected": None, "final_scores": scores}


def _floor(metrics: dict[str, Any]) -> float | None:
    """What one fixed answer scores on the batch's held-out rows (its majority label's share), or
    where they carry one label, a uniform guess over the model's labels (as the gate has it)."""
    if metrics.get("baseline") is None:
        return None
    if metrics.get("batch_labels") == 1:
        return 1 / metrics["model_labels"] if metrics.get("model_labels") else None
    return metrics["baseline"]


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """acc, bwt and forgetting_max from an accuracy matrix (row i: after update i; column j: batch j),
    over the clean batches only: a poisoned batch's held-out rows carry spoiled labels, and what counts
    there is that its candidate was rejected (`poison_rejected`)."""
    poisoned = set(run.get("poisoned") or [])
    clean = [j for j in range(len(run["matrix"][-1])) if j not in poisoned]
    matrix = [[row[j] for j in clean] for row in run["matrix"]]
    final = [0.0 if v is None else v for v in matrix[-1]]
    earlier = range(len(final) - 1)
    acc = sum(final) / len(final)
    learned = [matrix[j][j] for j in earlier]
    bwt = (sum(final[j] - (learned[j] or 0.0) for j in earlier) / len(earlier)
           if earlier and all(v is not None for v in learned) else None)
    best = [max((matrix[i][j] for i in range(j, len(matrix) - 1) if matrix[i][j] is not None), default=None) for j in earlier]
    drops = [b - final[j] for j, b in zip(earlier, best) if b is not None]
    verdicts = run.get("verdicts") or []
    by_batch = run.get("samples_by_batch")
    clean_samples = sum(n for j, n in enumerate(by_batch) if j not in poisoned) if poisoned and by_batch else None
    return {"acc": acc, "bwt": bwt, "forgetting_max": max(drops) if drops else None,
            "train_samples": run["train_samples"], "train_samples_clean": clean_samples,
            "train_tokens": run.get("train_tokens"), "wall_seconds": round(run["wall_seconds"], 1),
            "promoted": run["promoted"], "rejected": run["rejected"], "candidate_drop_max": run.get("candidate_drop_max"),
            "poison_rejected": (sum(verdicts[j] == "rejected" for j in poisoned if j < len(verdicts)) / len(poisoned)
                                if poisoned and verdicts else None),
            "promoted_below_floor": run.get("promoted_below_floor")}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("acc", "bwt", "forgetting_max", "candidate_drop_max", "train_samples", "train_samples_clean", "train_tokens",
                "wall_seconds", "promoted", "rejected", "poison_rejected", "promoted_below_floor"):
        values = [f[key] for f in per_seed if f.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = statistics.fmean(values)
        if len(per_seed) > 1 and key in ("acc", "bwt", "forgetting_max", "candidate_drop_max"):
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def merged_order(kept: dict[str, Any], ran: dict[str, Any]) -> list[str]:
    """The table's rows after a `--merge`: the built-in strategies and references in their fixed
    order, then every other contender (avalanche:*, ...) kept or run, in the order first seen."""
    order = [n for n in STRATEGIES + ("joint", "retrain") if n in kept or n in ran]
    return order + [n for n in (*kept, *ran) if n not in order]


def main() -> None:
    from bench.quality_report import publish  # the rendering module imports this one's settings

    if "chat" in sys.argv[1:] and sys.argv[sys.argv.index("chat") - 1] == "--stream":  # causal_lm: its own figures
        from bench import quality_chat

        at = sys.argv.index("chat")
        return quality_chat.main(sys.argv[1:at - 1] + sys.argv[at + 1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", choices=("bbc", "vader", "mixed", "ner"), required=True)
    parser.add_argument("--profile", choices=tuple(PROFILES), default="quick")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategies", default=",".join(STRATEGIES + ("joint", "retrain")))
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md or docs/img")
    parser.add_argument("--keep-homes", action="store_true",
                        help="keep each finished daemon home whole under DIR/runs (a full table: about 20 GB); "
                             "by default its weights are deleted once its figures are read")
    parser.add_argument("--jobs", type=int, default=1, help="contenders run at once (see the module's text)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other contenders' figures from DIR/results.json (same stream and profile) "
                             "and run only --strategies")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every contender (a TOML value), e.g. strategy.min_steps=0")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the profile's (a look at one seed before "
                                        "the whole table; the table records the seeds it ran)")
    parser.add_argument("--section", help="the BENCHMARKS.md section and docs/img prefix "
                                          "(default quality-STREAM-PROFILE)")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: render DIR/results.json again (table, plots, BENCHMARKS.md section), "
                             "e.g. after the default strategy changed")
    args = parser.parse_args()
    if args.report:
        report(args)
        return
    stop_them_on_signals()
    # what reads the homes back at the end is imported now: an edit to the tree during an hours-long
    # run must not meet half-old modules in this process (the daemons it starts read the tree anew)
    importlib.import_module("registry.registry")

    profile = {**PROFILES[args.profile], "set": args.set, "task": task_of(args.stream)}
    if args.seeds:
        profile["seeds"] = [int(seed) for seed in args.seeds.split(",")]
    names = args.strategies.split(",")
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))  # every child inherits it
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "runs"
    work.mkdir(exist_ok=True)
    started = time.monotonic()
    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    matrices: dict[str, list[list[float | None]]] = {}
    kept: dict[str, list[dict[str, Any]]] = {}
    runs: list[dict[str, Any]] = []
    if args.merge:
        earlier = json.loads((args.out / "results.json").read_text())
        if (earlier["stream"], earlier["profile"]) != (args.stream, args.profile):
            raise SystemExit(f"--merge: {args.out}/results.json is {earlier['stream']} {earlier['profile']}")
        kept = {n: v for n, v in earlier["per_seed"].items() if n not in names}
        runs = earlier.get("runs") or [{"contenders": sorted(earlier["per_seed"]),
                                        "wall_seconds": earlier.get("total_wall_seconds")}]
        for run in runs:
            run["contenders"] = [n for n in run["contenders"] if n in kept]
    streams = {}
    for seed in profile["seeds"]:
        parts = build(args.stream, seed, profile["per_group"][args.stream])
        streams[seed] = (parts, write(parts, work / f"stream-seed{seed}"))

    def contend(task: tuple[str, int]) -> tuple[str, int, dict[str, Any]]:
        name, seed = task
        parts, files = streams[seed]
        print(f"{name} (seed {seed})", flush=True)
        if name in ("joint", "retrain"):  # the references learn the clean batches only
            return name, seed, run_reference(name, [p for p in parts if not p.poison], seed, profile, args.model, work)
        run = run_strategy(name, files, seed, profile, args.model, work, keep_home=args.keep_homes)
        return name, seed, {**run, "poisoned": [j for j, p in enumerate(parts) if p.poison]}

    # one queue over every seed, slowest contenders first: no seed waits for the last of the one before
    tasks = sorted(((n, seed) for seed in profile["seeds"] for n in names),
                   key=lambda t: (SLOWEST_FIRST.index(t[0]) if t[0] in SLOWEST_FIRST else 0, t[1]))
    done: dict[tuple[str, int], dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(contend, task) for task in tasks]):
            name, seed, run = future.result()
            done[name, seed] = run
            partial = {n: [figures(done[n, s]) for s in profile["seeds"] if (n, s) in done] for n in names}
            (args.out / "results.partial.json").write_text(json.dumps(
                {"stream": args.stream, "profile": args.profile, "seeds": profile["seeds"],
                 "strategies": {n: aggregate(v) for n, v in partial.items() if v}, "per_seed": partial}, indent=2))
    for name in names:  # recorded in the order asked for, seeds in order
        per_seed[name] = [{**figures(done[name, seed]), "matrix": done[name, seed]["matrix"]} for seed in profile["seeds"]]
        matrices[name] = done[name, profile["seeds"][0]]["matrix"]  # the first seed's matrix is plotted
    order = merged_order(kept, per_seed)
    per_seed = {n: kept.get(n) or per_seed[n] for n in order}
    for name, seeds in kept.items():
        matrices[name] = seeds[0]["matrix"]
    matrices = {n: matrices[n] for n in order}
    command = "python -m bench.quality " + " ".join(sys.argv[1:])
    runs = [r for r in runs if r["contenders"]] + [{"contenders": names, "command": command,
                                                    "wall_seconds": round(time.monotonic() - started, 1)}]
    results = {"stream": args.stream, "profile": args.profile, "seeds": profile["seeds"],
               "strategies": {n: aggregate(v) for n, v in per_seed.items()},
               "per_seed": per_seed, "runs": runs, "total_wall_seconds": round(sum(r["wall_seconds"] or 0 for r in runs), 1),
               "settings": {k: v for k, v in profile.items() if k != "per_group"} | {"per_group": profile["per_group"][args.stream],
                                                                                  "jobs": args.jobs, "threads": os.environ.get("OMP_NUM_THREADS")},
               "section": args.section or f"quality-{args.stream}-{args.profile}"}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    publish(results, matrices, args.out, write=not args.no_write)


def report(args: argparse.Namespace) -> None:
    from bench.quality_report import publish

    results = json.loads((args.out / "results.json").read_text())
    if (results["stream"], results["profile"]) != (args.stream, args.profile):
        raise SystemExit(f"--report: {args.out}/results.json is {results['stream']} {results['profile']}")
    results["strategies"] = {n: aggregate(v) for n, v in results["per_seed"].items()}
    results["settings"].setdefault("jobs", args.jobs)
    results["settings"].setdefault("threads", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    publish(results, {n: v[0]["matrix"] for n, v in results["per_seed"].items()}, args.out, write=not args.no_write)


def _wait(check, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:  # type: ignore[no-untyped-def]
    """Until `check()` holds; an error once `timeout` seconds pass, or at once when `process` (the
    daemon that should make it hold) has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the daemon exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
