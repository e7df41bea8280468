"""Learning quality of `causal_lm` on the chat stream through the real daemon (`bench.quality --stream chat`).

    python -m bench.quality_chat --profile quick|quick8|tiny --out DIR [--strategies lora+lwf+replay,...,joint,retrain] [--model embedded:smollm2]
    python -m bench.quality_chat --profile quick --out DIR --report   (render DIR/results.json again)

Each strategy's daemon gets the chat stream's files (bench/streams.py `chat`: chatterbot-corpus
topics, trivia first) one by one, each followed by `lifelong update --now --wait`, as in
bench/quality.py; the figures are read back from the home's registry. Scores are lower-is-better
`answer_loss` (mean cross-entropy per answer token on each batch's held-out rows), so forgetting is
a rise: `loss`, the final champion's mean answer loss over every batch; `rise_max`, the largest
rise of an earlier batch's loss from just after it was learned to the end; `trivia_em`, the final
champion's exact match on batch 1 (trivia, short answers); `train_samples`; `train_tokens` (every
token the training loop processed, padding excluded); `wall_seconds`. The references run through the
same training child as in bench/quality.py (`run_reference`): `joint`, one model trained once on every
batch, and `retrain`, one retrained from the base on all data so far at every batch, both with
`finetune` at the strategies' loop settings, and `joint-lora`, `joint` trained with `lora` (the
default's method); their scores are the child's on the same held-out rows.
The verdicts are those of the default (`--default`, causal_lm's own strategy unless named). The
table, a plot (`matrices.png`: each contender's answer loss on every batch after each update) and
the verdicts go to DIR and, with `--section`, into BENCHMARKS.md (plot copied to docs/img/).
`--report` renders a results.json that may merge several runs: `per_seed` holds every contender's
runs by seed, and `variants` lists the other runs' `command` and `wall_seconds` (and `checkout`,
the source tree a run used where it was not the one rendering), each named under the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.quality import drive, env_for, lifelong, prune, read_back, run_reference, stop_them_on_signals
from bench.report import machine, matrix_grid, write_section
from bench.streams import build, write

ROOT = Path(__file__).resolve().parents[1]
# tiny: a check that the whole path runs (minutes on 2 cores); quick: the table's size (every strategy,
# joint and retrain took 94 min on 2 cores with SmolLM2: BENCHMARKS.md, learning quality: chat)
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"seeds": [0], "per_group": 16, "max_length": 96, "eval_fraction": 0.3, "epochs": 1, "batch_size": 8},
    "quick": {"seeds": [0], "per_group": 64, "max_length": 96, "eval_fraction": 0.3, "epochs": 2, "batch_size": 8},
    # the same rows as quick, each group in two files: eight updates, so replay's share of retraining's
    # tokens can come under 40% (1 + 7 x 1.75 = 13.25 file-passes against 1 + 2 + ... + 8 = 36)
    "quick8": {"seeds": [0], "per_group": 64, "splits": 2, "max_length": 96, "eval_fraction": 0.3, "epochs": 2,
               "batch_size": 8},
}


def settings_of(profile: dict[str, Any]) -> dict[str, Any]:
    """bench/quality.py's settings for this stream: causal_lm, the profile's batch size, then the
    run's `--set` entries (the rest is the task's own: `strategy.min_steps` 0, every update exactly
    `epochs`, as bench/quality.py pins it for the other streams)."""
    return {**profile, "task": "causal_lm", "set": [f"strategy.batch_size={profile['batch_size']}", *profile.get("set", [])]}


def run_strategy(strategy: str, files: list[Path], seed: int, profile: dict[str, Any], model: str,
                 work: Path, models: Path, keep_home: bool = False) -> dict[str, Any]:
    """Drive a real daemon through the stream. `models`: one converted copy of the embedded model
    shared by every home (linked in, so each home does not convert it again); `keep_home` keeps
    every version's weights (rejected candidates included) for a look afterwards."""
    home = work / f"{strategy.replace('+', '-')}-seed{seed}"
    shutil.rmtree(home, ignore_errors=True)
    env = env_for(home, strategy, seed, settings_of(profile), model)
    lifelong("init", env=env).check_returncode()
    if models.is_dir():
        (home / "models").symlink_to(models.resolve(), target_is_directory=True)
    started = time.monotonic()
    drive(home, env, files, f"{strategy} seed {seed}", work / f"{home.name}.log", start_timeout=120, update_timeout=7200)
    wall = time.monotonic() - started
    # the champion's answer loss on every batch after each update (the gate's metric), as bench/quality.py reads it
    measured = read_back(home, len(files))
    measured = {"loss": measured.pop("matrix"), **measured}
    final = final_scores(home, len(files), env)
    if not keep_home:
        prune(home)
    return {"wall_seconds": wall, **measured, "final": final}


def final_scores(home: Path, batches: int, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`lifelong eval` of the final champion on each batch's held-out rows (the daemon's own split):
    answer loss, perplexity and exact match (on the rows with short answers)."""
    from daemon.ingest.store import Store

    scores: dict[str, dict[str, Any]] = {}
    with Store(home / "state" / "rows.sqlite", readonly=True) as store:
        held_out = {j: list(store.iter_rows(j, "eval", ("prompt", "completion"))) for j in range(1, batches + 1)}
    for j, rows in held_out.items():
        path = home / f"heldout-{j}.jsonl"
        path.write_text("".join(json.dumps({"messages": [*prompt, {"role": "assistant", "content": answer}]}) + "\n"
                                for prompt, answer in rows))
        done = lifelong("eval", "--data", str(path), "--json", env=env, timeout=7200)
        if done.returncode != 0:
            raise RuntimeError(f"eval of batch {j}'s held-out rows failed: {done.stderr[-2000:]}")
        scores[str(j)] = json.loads(done.stdout)
    return scores


# the references: bench/quality.py's, trained with `finetune`; `joint-lora` is `joint` trained as the
# default trains (LoRA on the same projections, at `lora.lr`): what the method learns from every
# batch at once, so that the default's distance to `joint` splits into the method's and the stream's
REFERENCES = {"joint": ("joint", "finetune"), "retrain": ("retrain", "finetune"), "joint-lora": ("joint", "lora")}


def reference(name: str, parts: list, seed: int, profile: dict[str, Any], model_dir: str, work: Path) -> dict[str, Any]:
    """A reference of REFERENCES (bench/quality.py's) on the chat stream, in this module's figures."""
    started = time.monotonic()
    kind, strategy = REFERENCES[name]
    run = run_reference(kind, parts, seed, settings_of(profile), model_dir, work, strategy=strategy)
    return {"loss": run["matrix"], "train_samples": run["train_samples"], "train_tokens": run["train_tokens"],
            "promoted": None, "rejected": None, "verdicts": [], "final": run["final_scores"],
            "wall_seconds": time.monotonic() - started}


def figures(run: dict[str, Any]) -> dict[str, Any]:
    final = run["loss"][-1]
    known = [v for v in final if v is not None]
    rises = [final[j] - run["loss"][j][j] for j in range(len(final) - 1)
             if final[j] is not None and run["loss"][j][j] is not None]
    return {"loss": sum(known) / len(known) if known else None, "rise_max": max(rises) if rises else None,
            "trivia_em": run["final"]["1"].get("exact_match"), "train_samples": run["train_samples"],
            "train_tokens": run.get("train_tokens"),
            "wall_seconds": round(run["wall_seconds"], 1), "promoted": run["promoted"], "rejected": run["rejected"]}


BY_SEED = ("loss", "rise_max", "trivia_em", "promoted", "rejected")


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A contender's figures over its seeds: the mean of each but the largest rise, which is the
    largest of any seed (the target bounds every batch's rise), every seed's own beside it
    (`by_seed`), the first seed's matrix and final scores (the plot's)."""
    out = {**runs[0], "seeds": [r.get("seed", 0) for r in runs], "by_seed": {k: [r[k] for r in runs] for k in BY_SEED}}
    for key in ("loss", "rise_max", "trivia_em", "train_samples", "train_tokens", "wall_seconds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if key == "rise_max":
            out[key] = max(values, default=None)
            continue
        mean = sum(values) / len(values) if values else None
        out[key] = round(mean) if mean is not None and key in ("train_samples", "train_tokens") else mean
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    rows = results["strategies"]
    retrain = (rows.get("retrain") or {}).get("train_tokens")
    lines = ["| strategy | seeds | final answer loss (mean) | largest rise on an earlier batch | trivia exact match | "
             "train samples | train tokens | vs retrain | promoted / rejected | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, f in rows.items():
        share = f"{f['train_tokens'] / retrain:.0%}" if retrain and f.get("train_tokens") else "-"
        seeds = f.get("by_seed") or {k: [f[k]] for k in BY_SEED}

        def cell(key: str, digits: int = 3) -> str:  # the mean, then each seed's figure where there are several
            each = seeds[key]
            several = len(each) > 1 and any(v is not None for v in each)
            return _fmt(f[key], digits) + (f" ({' / '.join(_fmt(v, digits) for v in each)})" if several else "")

        decided = "-" if f["promoted"] is None else ", ".join(f"{p} / {r}" for p, r in zip(seeds["promoted"], seeds["rejected"]))
        label = f"**{name}** (default)" if name == results.get("default") else name
        ran = ", ".join(str(seed) for seed in f.get("seeds") or results.get("settings", {}).get("seeds", [0])[:1])
        lines.append(f"| {label} | {ran} | {cell('loss')} | {cell('rise_max')} | {cell('trivia_em', 2)} | "
                     f"{f['train_samples']:,} | {f.get('train_tokens') or 0:,} | {share} | {decided} | {f['wall_seconds']:.0f} |")
    return "\n".join(lines)


def verdicts(results: dict[str, Any]) -> list[str]:
    """The default against the targets: final mean answer loss within 0.05 nats of joint's, no earlier
    batch's loss risen by more than 0.05 nats from when it was learned, trivia exact match within 0.05
    of joint's, at most 40% of retrain's training tokens."""
    rows, name = results["strategies"], results.get("default")
    if not {name, "joint", "retrain"} <= rows.keys():
        return []
    d, joint, retrain = rows[name], rows["joint"], rows["retrain"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    gap, rise = d["loss"] - joint["loss"], d["rise_max"] or 0.0
    em_gap = (joint["trivia_em"] or 0.0) - (d["trivia_em"] or 0.0)
    share = d["train_tokens"] / retrain["train_tokens"] if retrain.get("train_tokens") else None
    return [f"- default ({name}) final answer loss {d['loss']:.3f} vs joint {joint['loss']:.3f}: {gap:+.3f} nats "
            f"({verdict(gap <= 0.05)}, target <= +0.05)",
            f"- default's largest rise of an earlier batch's loss {rise:.3f} nats ({verdict(rise <= 0.05)}, target <= 0.05)",
            f"- default trivia exact match {_fmt(d['trivia_em'], 2)} vs joint {_fmt(joint['trivia_em'], 2)} "
            f"({verdict(em_gap <= 0.05)}, target within 0.05)",
            f"- default training tokens {'-' if share is None else f'{share:.0%}'} of retrain's "
            f"({verdict(share is not None and share <= 0.40)}, target <= 40%)"]


def plot(results: dict[str, Any], out: Path) -> Path:
    rows = results["strategies"]
    matrices = {n: rows[n]["loss_matrix"] for n in rows}
    top = max(v for m in matrices.values() for row in m for v in row if v is not None)
    return matrix_grid(matrices, {n: f"{n}  loss {rows[n]['loss']:.3f}" for n in rows},
                       f"chat ({results['profile']}): the champion's answer loss\n(nats per answer token) after each update",
                       out / "matrices.png", cols=4, vmax=top, cmap="viridis_r", numbers=True)  # bright: low loss


def publish(results: dict[str, Any], out: Path, section: str | None) -> None:
    """table.md and the plot in `out`; with `section`, the BENCHMARKS.md section and the plot in docs/img/."""
    body = "\n".join([table(results), "", *verdicts(results)])
    (out / "table.md").write_text(body + "\n")
    png = plot(results, out)
    print(body)
    if not section:
        return
    img = ROOT / "docs" / "img" / f"{section}-{png.name}"
    img.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, img)
    settings = results["settings"]
    parts = build("chat", settings["seeds"][0], settings["per_group"], splits=settings.get("splits", 1))
    rows, files = sum(len(p.rows) for p in parts), len(parts)
    # the bench's pins, then the run's `--set` (the later of a key wins); the batch size is given beside the epochs
    pinned = dict(x.split("=", 1) for x in settings_of(settings)["set"])
    batch_size = pinned.pop("strategy.batch_size")
    groups = "trivia, knowledge, small talk, computing" + (f", each in {files // 4} files" if files > 4 else "")
    write_section(section, "\n".join([
        f"## Learning quality: chat ({results['profile']})", "",
        f"Command: `{results['command']}`  ",
        *(f"and `{v['command']}` ({v['wall_seconds'] / 60:.0f} min"
          + (f", from a checkout of {v['checkout']}" if v.get("checkout") else "") + "), its rows merged into this table  "
          for v in results.get("variants", [])), "",
        f"Machine: {results['machine']}. Model {results['model']} (`model.task = \"causal_lm\"`); "
        f"{rows} chatterbot-corpus question/answer pairs in {files} files, one update each ({groups}); the seeds the table gives (a seed draws the stream's rows, their split and the training order; where a row ran several, each cell gives their mean, then each seed's figure, and the plot shows the first seed); max_length {settings['max_length']}, eval_fraction "
        f"{settings['eval_fraction']}, epochs {settings['epochs']}, batch_size {batch_size}, "
        + "".join(f"`{k}={v}`; " for k, v in pinned.items())
        + "everything else at the config defaults (gate included: `max_forgetting` 0.05 nats). "
        "`joint` and `retrain` train every weight (`finetune`) at the same loop settings"
        + ("; `joint-lora` is `joint` trained with `lora`, the default's method. " if "joint-lora" in results["strategies"]
           else ". ") +
        f"Whole run {results['wall_seconds'] / 60:.0f} min.", "",
        "Scores are answer loss (mean cross-entropy per answer token, end token included; lower is better) on each "
        f"batch's held-out rows: final answer loss is the last champion's mean over the {files} batches, the largest rise "
        "is an earlier batch's loss at the end less just after it was learned (above zero: forgotten; over several seeds "
        "the largest of any, the other figures their mean), trivia exact "
        "match is the last champion's greedy answers equal to the reference on batch 1's held-out rows.", "",
        table(results), "", *verdicts(results), "",
        f"![answer loss after each update]({img.relative_to(ROOT)})"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=tuple(PROFILES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategies", default=None, help="comma-separated contenders (default: causal_lm's own strategy)")
    parser.add_argument("--model", default="embedded:smollm2")
    parser.add_argument("--default", default=None, help="the strategy the verdicts judge (default: causal_lm's own)")
    parser.add_argument("--section", default=None, help="the BENCHMARKS.md section to write (and docs/img prefix)")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the profile's (the table gives each "
                                        "contender's mean and every seed's figure)")
    parser.add_argument("--keep-homes", action="store_true",
                        help="keep every version's weights in DIR/runs (by default dropped once read back)")
    parser.add_argument("--report", action="store_true", help="run nothing: render DIR/results.json again")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every contender and reference (as bench/quality.py's)")
    args = parser.parse_args(argv)
    from strategies.tasks import TASKS

    args.default = args.default or TASKS["causal_lm"].strategy
    args.strategies = args.strategies or TASKS["causal_lm"].strategy
    if args.report:
        results = json.loads((args.out / "results.json").read_text())
        results["default"] = args.default
        results["settings"].setdefault("seeds", PROFILES[results["profile"]]["seeds"])
        if "per_seed" in results:
            results["strategies"] = {n: aggregate(runs) for n, runs in results["per_seed"].items()}
        return publish(results, args.out, args.section)
    stop_them_on_signals()
    profile = {**PROFILES[args.profile], "set": args.set}
    if args.seeds:
        profile["seeds"] = [int(seed) for seed in args.seeds.split(",")]
    work = args.out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    models = args.out / "models"
    model_dir = args.model
    if args.model.startswith("embedded:"):  # converted once for every home of the run (and the references)
        from strategies.embedded import local_base

        model_dir = local_base(args.model, models)
    started = time.monotonic()
    per_seed: dict[str, list[dict[str, Any]]] = {}
    command = "python -m bench.quality --stream chat " + " ".join(argv if argv is not None else sys.argv[1:])
    for seed in profile["seeds"]:
        parts = build("chat", seed, profile["per_group"], splits=profile.get("splits", 1))
        files = write(parts, work / f"stream-seed{seed}")
        for name in args.strategies.split(","):
            print(f"{name} (seed {seed})", flush=True)
            if name in REFERENCES:
                run = reference(name, parts, seed, profile, model_dir, work)
            else:
                run = run_strategy(name, files, seed, profile, args.model, work, models, keep_home=args.keep_homes)
            per_seed.setdefault(name, []).append({"seed": seed, **figures(run), "loss_matrix": run["loss"],
                                                  "final": run["final"], "verdicts": run["verdicts"]})
            # written after every contender: a long run stopped part-way keeps what it measured
            results = {"stream": "chat", "profile": args.profile, "settings": profile, "model": args.model,
                       "default": args.default, "per_seed": per_seed,
                       "strategies": {n: aggregate(runs) for n, runs in per_seed.items()},
                       "wall_seconds": round(time.monotonic() - started, 1), "command": command,
                       "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
            (args.out / "table.md").write_text("\n".join([table(results), "", *verdicts(results)]) + "\n")
    publish(results, args.out, args.section)

if __name__ == "__main__":
    main()
