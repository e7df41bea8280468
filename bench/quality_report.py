"""The learning-quality benchmark's output: the table, the verdicts against the issue's targets, the
plots and the BENCHMARKS.md section, from the figures bench/quality.py measured (also re-rendered
from DIR/results.json with `--report`)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from bench.quality import PROFILES, ROOT, default_for, score_name, task_of
from bench.report import machine, matrix_grid, write_section
from bench.streams import build


def table(results: dict[str, Any]) -> str:
    rows = results["strategies"]
    retrain = rows.get("retrain", {}).get("train_samples")
    multi = len(results["seeds"]) > 1

    def fmt(value: Any, key: str = "", name: str = "") -> str:
        if value is None:
            return "-"
        spread = rows[name].get(f"{key}_std") if multi else None
        return f"{value:.3f}" + (f" ± {spread:.3f}" if spread is not None else "")

    acc = "F1" if task_of(results["stream"]) == "token_classification" else "ACC"
    default = default_for(results["stream"])
    lines = [f"| strategy | {acc} | BWT | forgetting max | candidate drop max | train samples | vs retrain | wall s | promoted / rejected |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        share = f"{r['train_samples'] / retrain:.0%}" if retrain else "-"
        decided = "-" if r["promoted"] is None else f"{r['promoted']:.3g} / {r['rejected']:.3g}"
        label = f"**{name}** (default)" if name == default else name
        lines.append(f"| {label} | {fmt(r['acc'], 'acc', name)} | {fmt(r['bwt'], 'bwt', name)} | "
                     f"{fmt(r['forgetting_max'], 'forgetting_max', name)} | "
                     f"{fmt(r.get('candidate_drop_max'), 'candidate_drop_max', name)} | {r['train_samples']:,.0f} | {share} | "
                     f"{r['wall_seconds']:.0f} | {decided} |")
    return "\n".join(lines)


def fmt_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def verdicts(results: dict[str, Any], profile_name: str) -> list[str]:
    rows = results["strategies"]
    default = default_for(results["stream"])
    if not {default, "joint", "retrain"} <= rows.keys():
        return []
    limits = {"quick": (0.05, -0.05, 0.50), "full": (0.02 if results["stream"] == "bbc" else 0.01, -0.02, 0.40)}[profile_name]
    if results["stream"] == "mixed":  # small files of several sources: the default must end near joint
        limits = (0.02, limits[1], limits[2])
    ner = task_of(results["stream"]) == "token_classification"
    if ner:  # within 0.03 F1 of joint, every earlier group within 0.03 of its best, at most 40% of retrain
        limits = (0.03, None, 0.40)
    d, joint, retrain = rows[default], rows["joint"], rows["retrain"]
    gap = joint["acc"] - d["acc"]
    share = d["train_samples"] / retrain["train_samples"]
    out = [f"- default ({default}) {'F1' if ner else 'ACC'} {d['acc']:.3f} vs joint {joint['acc']:.3f}: gap {gap:.3f} "
           f"({'met' if gap <= limits[0] else 'MISSED'}, target <= {limits[0]})"]
    if ner:
        worst = d["forgetting_max"] or 0.0
        out.append(f"- default's largest drop of an earlier group's F1 from its best {worst:.3f} "
                   f"({'met' if worst <= 0.03 else 'MISSED'}, target <= 0.03)")
    elif results["stream"] == "bbc" or profile_name == "quick":
        ok = d["bwt"] is not None and d["bwt"] >= limits[1]
        out.append(f"- default BWT {'n/a' if d['bwt'] is None else format(d['bwt'], '.3f')} "
                   f"({'met' if ok else 'MISSED'}, target >= {limits[1]})")
    if results["stream"] == "mixed":  # retrain never sees the poisoned batches the daemon trains on, then rejects
        clean = d.get("train_samples_clean")
        on_clean = f", {clean / retrain['train_samples']:.0%} on the clean batches" if clean is not None else ""
        out.append(f"- default training samples {share:.0%} of retrain's{on_clean} (no target on this stream: each small "
                   f"batch trains until it is learned or reaches strategy.min_steps, a poisoned one included)")
    else:
        out.append(f"- default training samples {share:.0%} of retrain's ({'met' if share <= limits[2] else 'MISSED'}, "
                   f"target <= {limits[2]:.0%})")
    if d.get("poison_rejected") is not None:
        out.append(f"- default rejected {d['poison_rejected']:.0%} of the poisoned batches "
                   f"({'met' if d['poison_rejected'] == 1 else 'MISSED'}, target 100%)")
    if d.get("promoted_below_floor") is not None:
        out.append(f"- default promoted {d['promoted_below_floor']:.3g} candidates below their batch's floor (its "
                   f"majority-class baseline, or a guess where its rows carry one label) "
                   f"({'met' if d['promoted_below_floor'] == 0 else 'MISSED'}, target 0)")
    if "finetune" in rows and rows["finetune"]["bwt"] is not None:
        f = rows["finetune"]
        out.append(f"- finetune BWT {f['bwt']:.3f}, forgetting max {f['forgetting_max'] or 0:.3f} (its champion's); "
                   f"its candidates' largest drop on an earlier batch {fmt_or_dash(f.get('candidate_drop_max'))} "
                   f"(what the gate stopped; {f['rejected']:.3g} of {f['promoted'] + f['rejected']:.3g} rejected)")
    return out


def plots(results: dict[str, Any], matrices: dict[str, list[list[float | None]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = "F1" if task_of(results["stream"]) == "token_classification" else "ACC"
    matrix_png = matrix_grid(matrices, {n: f"{n}  {score} {results['strategies'][n]['acc']:.3f}" for n in matrices},
                             f"{results['stream']} ({results['profile']}): {score_name(results['stream'])} of the champion "
                             "after each update", out / "matrices.png", cols=3, vmax=1, cmap="viridis")

    default = default_for(results["stream"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    # contenders at the same compute and nearly the same accuracy (the replay strategies, the ones
    # the gate held at their first topics) get their labels stacked, best first, in their colours
    placed: list[tuple[float, float, int]] = []
    for name, r in sorted(results["strategies"].items(), key=lambda item: -item[1]["acc"]):
        x, y = r["train_samples"], r["acc"]
        dot = ax.scatter(x, y, s=90 if name == default else 30, marker="*" if name == default else "o")
        near = [n for px, py, n in placed if abs(math.log(x / px)) < 0.05 and abs(y - py) < 0.03]
        slot = max(near, default=-1) + 1
        placed.append((x, y, slot))
        ax.annotate(name + (" (default)" if name == default else ""), (x, y), textcoords="offset points",
                    xytext=(6, 3 - 10 * slot), fontsize=8, color=dot.get_facecolor()[0])
    ax.set_xscale("log")
    ax.margins(y=0.12)  # room for stacked labels under the lowest points
    ax.set_xlabel("training samples processed (log)")
    ax.set_ylabel(f"final mean {score_name(results['stream'])} over every batch")
    ax.set_title(f"{results['stream']} ({results['profile']}): {score_name(results['stream'])} against training compute")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    compute_png = out / "compute.png"
    fig.savefig(compute_png, dpi=90)
    plt.close(fig)
    return [matrix_png, compute_png]


def publish(results: dict[str, Any], matrices: dict[str, list[list[float | None]]], out: Path, *, write: bool) -> None:
    """table.md and the plots in `out`; unless `write` is false, the BENCHMARKS.md section and docs/img/ copies."""
    stream, profile_name, runs = results["stream"], results["profile"], results["runs"]
    name = results.get("section") or f"quality-{stream}-{profile_name}"
    profile, settings = PROFILES[profile_name], results["settings"]
    pngs = plots(results, matrices, out)
    body = table(results)
    (out / "table.md").write_text(body + "\n")
    print(body)
    print("\n".join(verdicts(results, profile_name)))
    if not write:
        return
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    copied = []
    for png in pngs:
        target = img / f"{name}-{png.name}"
        shutil.copy(png, target)
        copied.append(target.relative_to(ROOT))
    parts = build(stream, profile["seeds"][0], settings["per_group"])  # every seed's stream has the same size
    rows_total = sum(len(p.rows) for p in parts)
    jobs, threads = settings.get("jobs", 1), settings.get("threads")
    # quality-bbc-avalanche-full: "bbc (full), avalanche"
    extra = name.removeprefix(f"quality-{stream}-").removesuffix(f"-{profile_name}").removesuffix(profile_name)
    suffix = f", {extra}" if extra else ""
    section = [f"## Learning quality: {stream} ({profile_name}){suffix}", "",
               *(f"Command: `{r['command']}`  " for r in runs), "",
               f"Machine: {machine()}. Model embedded:minilm"
               + ("" if task_of(stream) == "sequence_classification" else f" (`model.task = \"{task_of(stream)}\"`)")
               + f"; {rows_total} rows per seed in "
               f"{len(parts)} files (one update each); seeds "
               f"{profile['seeds']}; max_length {profile['max_length']}, eval_fraction {profile['eval_fraction']}, "
               f"epochs {profile['epochs']}; "
               + "".join(f"`{setting}`; " for setting in settings.get("set", []))
               + "everything else at the config defaults (gate included), "
               "the references with the same loop settings as full-weight training. "
               + (f"{jobs} contenders at a time, {threads} torch thread(s) each "
                  "(wall seconds per contender measured side by side). " if jobs > 1 else "")
               + (f"Whole run: {results['total_wall_seconds'] / 60:.1f} min." if len(runs) == 1 else
                  "Run in parts (`--merge`): " + "; ".join(
                      f"{', '.join(r['contenders'])}: {r['wall_seconds'] / 60:.1f} min" for r in runs)
                  + f"; {results['total_wall_seconds'] / 60:.1f} min in all."), "",
               body, "", *verdicts(results, profile_name), "",
               *(f"![{p.stem}]({p})" for p in copied)]
    write_section(name, "\n".join(section))
