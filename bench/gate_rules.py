"""Gate rules measured on small mixed batches: which candidates each rule would promote.

    python -m bench.gate_rules --out DIR [--seeds 0,1,2,3,4] [--jobs 2] [--rejudge] [--no-write]

For every seed a real daemon (the default strategy and gate) gets the `mixed` stream with all three
poisoned files (bench/streams.py: flipped, shuffled, foreign), one update per file. Each recorded
decision (the candidate's and the champion's score tables, changed rows, the batch's baseline) is
then judged again by every rule below (daemon/update/gate.py `recheck`), so the rules are compared on
the same candidates; what a rule would have changed downstream (a different champion for the next
update) is not replayed, and the final ACC is the default rule's own run. Rules:

- `before`: no floor; a pooled drop beyond tolerance passes while the sign test says p >= 0.05
- `floor`: a floor at the batch's majority-class baseline; the pool as `before`
- `floor+band:N`: the floor, and a pooled net drop beyond (1 + N) tolerances fails whatever the
  sign test says (the default is N = 1)
- `evidence+band:1`: as `floor+band:1`, and the candidate's accuracy on its batch must be above the
  floor beyond chance (one-sided binomial test, p < 0.05; gate.py FLOOR_EVIDENCE)

Writes DIR/results.json, DIR/table.md and (unless --no-write) the BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.quality import PROFILES, default_for, figures, prune, run_strategy
from bench.report import machine, write_section
from bench.streams import POISONS, build, write

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "ddeb2a8"  # the commit whose gate had neither the floor nor the band


def rules() -> dict[str, Any]:
    """name -> a gate module (daemon/update/gate.py, or the one of commit BEFORE), its band set."""
    found = {"before": _module("before", subprocess.run(["git", "show", f"{BEFORE}:daemon/update/gate.py"], cwd=ROOT,
                                                         capture_output=True, text=True, check=True).stdout)}
    current = (ROOT / "daemon" / "update" / "gate.py").read_text()
    for name, band, evidence in (("floor", math.inf, None), ("floor+band:0.5", 0.5, None), ("floor+band:1", 1.0, None),
                                 ("floor+band:0", 0.0, None), ("evidence+band:1", 1.0, 0.05)):
        module = _module(name, current)
        module.NOISE_BAND, module.FLOOR_EVIDENCE = band, evidence
        found[name] = module
    return found


def _module(name: str, source: str) -> Any:
    spec = importlib.util.spec_from_loader(f"gate_rule_{name}", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"gate[{name}]", "exec"), module.__dict__)  # noqa: S102 - the project's own file
    return module


def decisions(home: Path) -> list[dict[str, Any]]:
    """Every update's recorded decision: its batch, the verdict and the metrics it was judged on."""
    from registry.registry import Registry

    out = []
    with Registry(home / "registry") as registry:
        for record in registry.versions():
            decision = registry.decision_record(record.version)
            if decision is not None:
                out.append({"batch": int(record.info["data"]["experience"]), "decision": decision.decision,
                            "metrics": decision.metrics or {}})
    return sorted(out, key=lambda d: d["batch"])


def run_seed(seed: int, work: Path, model: str) -> dict[str, Any]:
    parts = build("mixed", seed, None, POISONS)
    files = write(parts, work / f"stream-seed{seed}")
    (work / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    run = run_strategy(default_for("mixed"), files, seed, PROFILES["quick"], model, work / f"seed{seed}", keep_home=True)
    home = work / f"seed{seed}" / f"{default_for('mixed').replace('+', '-')}-seed{seed}"
    found = decisions(home)
    prune(home)
    kinds = {j + 1: p.poison for j, p in enumerate(parts)}
    return {"seed": seed, "decisions": [{**d, "poison": kinds[d["batch"]]} for d in found],
            "figures": figures({**run, "poisoned": [j for j, p in enumerate(parts) if p.poison]})}


def judge(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from daemon.config import GateConfig

    config = GateConfig()
    table = {}
    for name, module in rules().items():
        clean, poisoned = [], {kind: [] for kind in POISONS}
        for run in runs:
            for d in run["decisions"]:
                if d["batch"] == 1 or not d["metrics"].get("candidate"):
                    continue  # the first model is judged against the baseline alone, by every rule alike
                passed = module.recheck(d["metrics"], str(d["batch"]), config).passed
                (poisoned[d["poison"]] if d["poison"] else clean).append(passed)
        table[name] = {"clean_promoted": sum(clean) / len(clean) if clean else None, "clean_n": len(clean),
                       **{f"{k}_rejected": (1 - sum(v) / len(v)) if v else None for k, v in poisoned.items()},
                       "poisoned_n": sum(len(v) for v in poisoned.values())}
    return table


def render(results: dict[str, Any]) -> str:
    lines = ["| rule | clean batches promoted | flipped rejected | shuffled rejected | foreign rejected |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in results["rules"].items():
        cells = [f"{r['clean_promoted']:.0%} of {r['clean_n']}"] + [
            f"{r[f'{k}_rejected']:.0%}" if r[f"{k}_rejected"] is not None else "-" for k in POISONS]
        label = f"**{name}** (default)" if name == "floor+band:1" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    accs = [run["figures"]["acc"] for run in results["runs"]]
    mean = sum(accs) / len(accs)
    spread = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    lines += ["", f"Final ACC over the clean batches (the default rule's own runs, {len(accs)} seeds): "
              f"{mean:.3f} ± {spread:.3f}; candidates promoted below their batch's majority-class baseline: "
              f"{sum(run['figures']['promoted_below_floor'] or 0 for run in results['runs'])}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--rejudge", action="store_true", help="judge DIR's recorded decisions again; train nothing")
    args = parser.parse_args()
    if args.rejudge:
        rejudge(args.out, write=not args.no_write)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda seed: run_seed(seed, args.out / "runs", args.model), seeds))
    results = {"seeds": seeds, "runs": runs, "rules": judge(runs), "wall_seconds": round(time.monotonic() - started, 1),
               "command": "python -m bench.gate_rules " + " ".join(sys.argv[1:])}
    publish(results, args.out, write=not args.no_write)


def publish(results: dict[str, Any], out: Path, *, write: bool) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    body = render(results)
    (out / "table.md").write_text(body + "\n")
    print(body)
    if write:
        write_section("gate-rules", "\n".join([
            "## Gate rules on small mixed batches (`bench/gate_rules.py`)", "",
            f"Command: `{results['command']}`  ", "",
            f"Machine: {machine()}. Model embedded:minilm, strategy {default_for('mixed')}, every other setting at "
            f"its default; the mixed stream (BBC topics, VADER tweets, VADER product reviews: 180, 220 and "
            f"250 rows) then three poisoned files of 150 rows each (flipped, shuffled, foreign); seeds "
            f"{results['seeds']}; {results['wall_seconds'] / 60:.1f} min. Each rule judges the same recorded "
            f"candidates (clean batches after the first, and every poisoned one).", "", body]))


def rejudge(out: Path, write: bool) -> None:
    """The rules again over a finished run's recorded decisions (nothing is trained)."""
    results = json.loads((out / "results.json").read_text())
    results.setdefault("command", f"python -m bench.gate_rules --out {out} --seeds "
                                  f"{','.join(map(str, results['seeds']))} --jobs 2")
    results["rules"] = judge(results["runs"])
    publish(results, out, write=write)


if __name__ == "__main__":
    main()
