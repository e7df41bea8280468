"""Daemon overhead on the MiniLM demo, through the real `lifelong run`.

    python -m bench.overhead [--rows 1500] [--idle 60]

(1) Wall time from a file landing in the inbox to the gate decision, against the training and
evaluation time inside it (as the training child measured them, and as the child process's whole
life, which adds Python + torch start-up and model loading). (2) The idle daemon's RSS and CPU over
`--idle` seconds, read from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine, write_section

ROOT = Path(__file__).resolve().parents[1]


def reviews(count: int, seed: int = 0) -> list[dict]:
    """Synthetic two-class review sentences (as examples/reviews.jsonl, larger)."""
    rng = random.Random(seed)
    subjects = ["The film", "This movie", "The plot", "The acting", "The soundtrack", "The ending", "The cast",
                "The script", "The sequel", "The dialogue", "The pacing", "The camera work"]
    good = ["was wonderful", "kept me hooked", "was beautifully done", "made me laugh", "felt fresh and clever",
            "was moving and warm", "deserves every award", "was simply brilliant", "left me smiling", "is a joy"]
    bad = ["was a waste of time", "dragged on forever", "felt lazy and dull", "made no sense", "was painfully boring",
           "fell completely flat", "was a mess", "put me to sleep", "was badly written", "left me cold"]
    extra = ["", " Honestly.", " My friends agreed.", " I saw it twice.", " On a rainy Sunday.", " With my family."]
    rows = []
    for i in range(count):
        label = "pos" if i % 2 else "neg"
        rows.append({"text": f"{rng.choice(subjects)} {rng.choice(good if label == 'pos' else bad)}.{rng.choice(extra)}"
                             f" ({rng.randint(1, 10**6)})", "label": label})
    return rows


def cli(home: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--home", str(home), "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--section", default="overhead", help="BENCHMARKS.md section to write")
    args = parser.parse_args()
    from daemon.store import Store

    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as folder:
        home = Path(folder) / "home"
        subprocess.run([sys.executable, "-m", "daemon.cli", "init", "--home", str(home)], cwd=ROOT, check=True,
                       capture_output=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIFELONG_METRICS__BIND": "127.0.0.1:0"}
        daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--home", str(home)], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while cli(home, "status").get("daemon") is None:
                time.sleep(0.5)
            time.sleep(2)
            # (2) idle: an empty inbox, nothing to train; rescans, scheduler, HTTP server all running
            cpu0, _ = proc_stat(daemon.pid)
            peak = 0
            start = time.monotonic()
            while time.monotonic() - start < args.idle:
                peak = max(peak, proc_stat(daemon.pid)[1])
                time.sleep(1)
            cpu1, rss = proc_stat(daemon.pid)
            idle_cpu = (cpu1 - cpu0) / (time.monotonic() - start)
            # (1) a file lands as the contract asks writers to: a temporary name in the inbox, renamed
            # into place; the first model trains at once (no champion yet)
            staged = home / "inbox" / "reviews.jsonl.part"
            staged.write_text("".join(json.dumps(r) + "\n" for r in reviews(args.rows)))
            landed = time.monotonic()
            os.rename(staged, home / "inbox" / "reviews.jsonl")
            # poll the row store in this process: spawning `lifelong status` in a loop would itself
            # take a core from the training it measures
            update = None
            while update is None:
                time.sleep(0.1)
                with Store(home / "state" / "rows.sqlite") as store:
                    found = store.updates(limit=1)
                update = found[0] if found else None
            wall = time.monotonic() - landed
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
    summary = update["summary"]
    inside = summary["train"]["seconds"] + summary["eval_seconds"]
    child = summary["child_seconds"]
    figures = {"decision": update["decision"], "wall": wall, "train_eval": inside, "child": child,
               "ratio": wall / inside, "ratio_child": wall / child, "idle_cpu": idle_cpu, "rss_mb": rss / 2**20,
               "peak_mb": peak / 2**20, "train_samples": summary["train"]["train_samples"]}
    print(json.dumps(figures, indent=2))
    lines = [
        "## Daemon overhead (`bench/overhead.py`)",
        "",
        f"Command: `python -m bench.overhead --rows {args.rows} --idle {args.idle:g}"
        + (f" --section {args.section}" if args.section != "overhead" else "") + "`  ",
        f"Machine: {machine()}. A fresh home with the defaults (embedded MiniLM, `lora+replay`, 2 epochs);",
        f"one file of {args.rows} labeled sentences renamed into the inbox; the first model trains at once.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| file landing -> gate decision (wall) | {wall:.1f} s ({update['decision']}) |",
        f"| training + evaluation inside the child | {inside:.1f} s ({summary['train']['train_samples']} samples trained) |",
        f"| the child process's whole life (adds Python, torch and model start-up) | {child:.1f} s |",
        f"| overhead ratio: wall / (train + eval) | {wall / inside:.3f} |",
        f"| overhead ratio: wall / child process | {wall / child:.3f} |",
        f"| idle daemon RSS (end of {args.idle:g} s; peak) | {rss / 2**20:.0f} MB; {peak / 2**20:.0f} MB |",
        f"| idle daemon CPU over {args.idle:g} s | {100 * idle_cpu:.2f}% of a core |",
        "",
        "Targets: ratio at most 1.15; idle RSS under 150 MB and CPU under 1% of a core.",
    ]
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
