"""Ingestion throughput and peak memory on a generated 1,000,000-row JSONL and CSV file, and
hostile or huge files through a running daemon.

    python -m bench.ingest [--rows 1000000]
    python -m bench.ingest --daemon     # a long line in a small .gz, and JSONL up to 1 GiB

Each measurement runs in its own process (peak RSS is that process's). `lifelong` does the full
job: sha256 of the file, streaming parse, validation, the stable split, rows written to an
Arrow segment and fsynced, a durable SQLite catalog commit
and the move to archive/. The references read the same file the plain way (`pandas.read_csv`,
a `json.loads` loop) and do the same validation and split, but store nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.report import machine, write_section

WORDS = ("good bad fine great awful plot actor scene music slow fast funny boring loved hated the a was "
         "really not quite movie film story").split()
LABELS = ("pos", "neg", "neu")


def generate(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    jsonl_path, csv_path = folder / "big.jsonl", folder / "big.csv"
    with open(jsonl_path, "w") as jf, open(csv_path, "w", newline="") as cf:
        writer = csv.writer(cf)
        writer.writerow(["text", "label"])
        for i in range(rows):
            text = f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            label = LABELS[i % 3]
            jf.write(json.dumps({"text": text, "label": label}) + "\n")
            writer.writerow([text, label])
    return jsonl_path, csv_path


# -- children: each prints {"rows", "seconds"} -------------------------------------------------------
def child_lifelong(path: Path) -> dict:
    from daemon import home as home_mod
    from daemon.ingest.inbox import Inbox

    root = Path(tempfile.mkdtemp(prefix="lifelong-bench-", dir=path.parent))
    home_mod.init(root)
    os.environ["LIFELONG_INBOX__SETTLE_SECONDS"] = "0"
    home = home_mod.open_home(root)
    os.rename(path, home.inbox / path.name)  # a hard link would wait: the inbox takes files that are alone
    start = time.perf_counter()
    outcomes, _ = Inbox(home).drain(max_wait=0)
    seconds = time.perf_counter() - start
    [outcome] = outcomes
    if outcome.outcome != "accepted":
        raise SystemExit(f"not accepted: {outcome}")
    os.rename(outcome.dest, path)  # back, for the reference reader
    shutil.rmtree(root)
    return {"rows": outcome.rows_train + outcome.rows_eval, "seconds": seconds}


def _valid(text: object, label: object) -> bool:
    return isinstance(text, str) and bool(text.strip()) and label is not None and label == label and label != "" \
        and (isinstance(label, str) or (isinstance(label, int) and not isinstance(label, bool)))


def child_pandas(path: Path) -> dict:
    import pandas as pd

    from daemon.ingest.splits import eval_mask

    start = time.perf_counter()
    frame = pd.read_csv(path, dtype={"text": str, "label": str}, keep_default_na=False)
    texts = [text for text, label in zip(frame["text"].tolist(), frame["label"].tolist()) if _valid(text, label)]
    held_out = int(eval_mask(texts, 0.1).sum())  # the same vectorized split as lifelong
    return {"rows": len(texts), "seconds": time.perf_counter() - start, "eval": held_out}


def child_json_loop(path: Path) -> dict:
    from daemon.ingest.splits import eval_mask

    start = time.perf_counter()
    good = held_out = 0
    texts: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if isinstance(record, dict) and _valid(record.get("text"), record.get("label")):
                texts.append(record["text"])
                if len(texts) == 4096:  # the same vectorized split as lifelong, per chunk
                    held_out += int(eval_mask(texts, 0.1).sum())
                    good += len(texts)
                    texts = []
    held_out += int(eval_mask(texts, 0.1).sum())
    good += len(texts)
    return {"rows": good, "seconds": time.perf_counter() - start, "eval": held_out}


CHILDREN = {"lifelong": child_lifelong, "pandas": child_pandas, "json_loop": child_json_loop}


# -- through a running daemon: time to take one file, the daemon's peak RSS, /healthz throughout ------
def long_line_gz(path: Path, line_bytes: int) -> int:
    """One JSONL line of `line_bytes` and a few good ones, gzipped (a few hundred KB on disk);
    returns the decompressed size."""
    import gzip

    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(b'{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(line_bytes >> 20):
            out.write(block)
        out.write(b'", "label": "x"}\n')
        tail = "".join(json.dumps({"text": f"good row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(10)).encode()
        out.write(tail)
    return (line_bytes >> 20 << 20) + 27 + len(tail)


def big_jsonl(path: Path, size: int) -> int:
    """About `size` bytes of short valid rows; returns the byte count."""
    with open(path, "w") as out:
        rows = 0
        while out.tell() < size:
            out.write("".join(f'{{"text": "{rows + i} a short review of a film", "label": "{"pn"[i % 2]}"}}\n'
                              for i in range(10_000)))
            rows += 10_000
        return out.tell()


def daemon_case(folder: Path, name: str, make: Callable[[Path], int]) -> dict:
    """Drop one file (renamed in from a temp name) into a running daemon's inbox; measure until it
    leaves the inbox, polling /healthz every 0.25 s."""
    import urllib.request

    from daemon import home as home_mod

    root = folder / f"home-{name}"
    home_mod.init(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIFELONG_INBOX__SETTLE_SECONDS": "0",
           "LIFELONG_INBOX__MAX_FILE_BYTES": str(4 << 30), "LIFELONG_SCHEDULE__MIN_NEW_ROWS": str(10**9),
           "LIFELONG_SCHEDULE__MAX_WAIT": '"1000d"', "LIFELONG_TRAIN__STANDBY_SECONDS": "0",
           "LIFELONG_METRICS__BIND": '"127.0.0.1:0"'}
    staged = root / "inbox" / f".{name}.tmp"
    size = make(staged)
    os.sync()  # the generated file's write-back must not compete with the measured ingest
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--home", str(root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    try:
        port = None
        while port is None:
            try:
                state = json.loads((root / "state" / "daemon.json").read_text())
                port = state.get("metrics_port") if state.get("pid") == proc.pid else None
            except (OSError, ValueError):
                time.sleep(0.1)
        codes = []
        start = polled = time.perf_counter()
        os.rename(staged, root / "inbox" / name)
        while (root / "inbox" / name).exists():  # checked every 10 ms, /healthz every 0.25 s
            if time.perf_counter() - polled >= 0.25:
                polled = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                        codes.append(answer.status)
                except OSError as exc:
                    codes.append(getattr(exc, "code", 0))
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        peak = next(int(line.split()[1]) for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmHWM"))
        outcome = "archived" if any((root / "archive").iterdir()) else "quarantined"
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        shutil.rmtree(root)
    return {"bytes": size, "seconds": seconds, "peak_rss_mb": peak / 1024, "healthz": sorted(set(codes)),
            "polls": len(codes), "outcome": outcome}


def run_daemon_cases(folder: Path) -> None:
    cases = [("long line in .gz", "long-100m.jsonl.gz", lambda p: long_line_gz(p, 100 << 20)),
             ("long line in .gz", "long-400m.jsonl.gz", lambda p: long_line_gz(p, 400 << 20)),
             ("JSONL", "quarter.jsonl", lambda p: big_jsonl(p, 256 << 20)),
             ("JSONL", "whole.jsonl", lambda p: big_jsonl(p, 1 << 30))]
    lines = [
        "## Hostile and huge files through a running daemon (`bench/ingest.py --daemon`)",
        "",
        "Command: `python -m bench.ingest --daemon`  ",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        "Each file is renamed into the inbox of a running `lifelong run` (no training); time is from the rename",
        "until the file has left the inbox (hash, parse, validate, store, commit, move; checked every 10 ms),",
        "/healthz is polled every 0.25 s meanwhile, peak RSS is the daemon process's (VmHWM). The JSONL rows are",
        "short (about 100 bytes: ten million in 1 GiB, the costly case per byte). The long line is one JSONL row of",
        "100 or 400 MB of text inside a gzip of a few hundred KB: it becomes one `row_too_large` error",
        "(the file is quarantined), counted as it streams by and never held.",
        "",
        "| case | file | bytes read | seconds | s per GB | daemon peak RSS (MB) | /healthz answers | outcome |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for label, name, make in cases:
        r = daemon_case(folder, name, make)
        print(f"{label:17} {name:20} {r['bytes'] / 1e6:8.0f} MB {r['seconds']:6.1f} s {r['seconds'] / (r['bytes'] / 1e9):5.1f} s/GB "
              f"peak {r['peak_rss_mb']:.0f} MB healthz {r['healthz']} ({r['polls']} polls) {r['outcome']}", flush=True)
        lines.append(f"| {label} | {name} | {r['bytes']:,} | {r['seconds']:.1f} | {r['seconds'] / (r['bytes'] / 1e9):.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {', '.join(map(str, r['healthz']))} ({r['polls']} polls) | {r['outcome']} |")
    lines += ["", "Targets: seconds per GB about the same at both sizes (linear), peak RSS < 300 MB, /healthz 200 throughout."]
    write_section("ingest-daemon", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--daemon", action="store_true", help="the long-line .gz and 1 GiB JSONL cases through a daemon")
    parser.add_argument("path", nargs="?")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](Path(args.path))))
        return
    if args.daemon:
        with tempfile.TemporaryDirectory(prefix="lifelong-bench-", dir=Path(__file__).resolve().parents[1] / "bench") as folder:
            run_daemon_cases(Path(folder))
        return
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as folder:
        jsonl_path, csv_path = generate(Path(folder), args.rows)
        sizes = {p.name: p.stat().st_size / 1e6 for p in (jsonl_path, csv_path)}
        results = []
        for label, kind, path in [("JSONL", "lifelong", jsonl_path), ("JSONL", "json_loop", jsonl_path),
                                  ("CSV", "lifelong", csv_path), ("CSV", "pandas", csv_path)]:
            result = measure_isolated(kind, path)
            results.append((label, kind, path.name, result))
            print(f"{label:5} {kind:10} {result['rows']:>9} rows {result['seconds']:6.2f} s "
                  f"{result['rows_per_s']:>9.0f} rows/s  peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    lines = [
        "## Ingestion (`bench/ingest.py`)",
        "",
        f"Command: `python -m bench.ingest --rows {args.rows}` (needs the `bench` extra: `pip install -e '.[bench]'`)  ",
        f"Machine: {machine()}. Files: {', '.join(f'{n} {s:.0f} MB' for n, s in sizes.items())}; short texts, 3 labels.",
        "",
        "`lifelong` = the full ingest (sha256, streaming parse, validation, stable split, rows written to an Arrow segment",
        "and fsynced, durable catalog commit, move to archive/). References = the plain reading loop with the same",
        "validation and split, storing nothing.",
        "",
        "| file | reader | rows | seconds | rows/s | peak RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, kind, _, r in results:
        name = {"lifelong": "lifelong", "pandas": "pandas.read_csv + loop", "json_loop": "json.loads loop"}[kind]
        lines.append(f"| {label} | {name} | {r['rows']:,} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Targets: >= 100,000 rows/s and peak RSS < 300 MB for either file, and no slower than the reference."]
    write_section("ingest", "\n".join(lines))


def measure_isolated(kind: str, path: Path) -> dict:
    """Run one measurement in a fresh interpreter whose own peak RSS is reported."""
    code = (
        "import json, resource, sys; from pathlib import Path; from bench.ingest import CHILDREN; "
        f"r = CHILDREN[{kind!r}](Path({str(path)!r})); "
        "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise SystemExit(f"{kind} failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


if __name__ == "__main__":
    main()
