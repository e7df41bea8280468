"""The report's figures, drawn with matplotlib (headless Agg) from report.collect's document; each is
PNG bytes, or None when there is nothing to draw yet."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"promoted": "#2a9d4a", "rejected": "#d62828", "rolled_back": "#f08c00", "held": "#6c757d",
           "failed": "#6c757d", None: "#6c757d"}
MARKS = {"promoted": "o", "rejected": "X", "rolled_back": "s", "held": "D", "failed": "v", None: "."}
SHORT = {"promoted": "promoted", "rejected": "rejected", "rolled_back": "rolled back", "held": "held",
         "failed": "failed", None: "-"}


def draw_all(doc: dict[str, Any]) -> dict[str, bytes | None]:
    drawers: dict[str, Callable[[dict[str, Any]], bytes | None]] = {
        "scores": scores, "matrix": matrix, "forgetting": forgetting, "training": training,
        "champion": champion_history, "labels": labels}
    return {key: draw(doc) for key, draw in drawers.items()}


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _scored(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in doc["versions"] if v["per_batch"]]


def scores(doc: dict[str, Any]) -> bytes | None:
    versions = _scored(doc)
    if not versions:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = list(range(len(versions)))
    for key, style in (("new", "-"), ("old", "--")):
        ax.plot(x, [v[key] for v in versions], style, color="#444", linewidth=1, label=f"{key} (candidate)")
        for i, v in enumerate(versions):
            if v[key] is not None:
                ax.scatter(i, v[key], marker=MARKS[v["decision"]], color=COLOURS[v["decision"]], s=60, zorder=3)
    for decision in dict.fromkeys(v["decision"] for v in versions):
        ax.scatter([], [], marker=MARKS[decision], color=COLOURS[decision], label=SHORT[decision])
    ax.set_xticks(x, [f"{v['version']}\nbatch {v['batch']}" for v in versions], fontsize=8)
    ax.set_ylabel(versions[-1]["metric"])
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=3)
    return _png(fig)


def matrix(doc: dict[str, Any]) -> bytes | None:
    versions = _scored(doc)
    if not versions:
        return None
    batches = sorted({b for v in versions for b in v["per_batch"]}, key=int)
    values = [[v["per_batch"].get(b) for b in batches] for v in versions]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(batches) + 3), 0.45 * len(versions) + 1.6))
    grid = [[float("nan") if cell is None else cell for cell in row] for row in values]
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(values):
        for c, cell in enumerate(row):
            if cell is not None:
                ax.text(c, r, f"{cell:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if cell < 0.6 else "black")
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches], fontsize=8)
    ax.set_yticks(range(len(versions)), [f"{v['version']} {SHORT[v['decision']]}" for v in versions], fontsize=8)
    for tick, v in zip(ax.get_yticklabels(), versions):
        tick.set_color(COLOURS[v["decision"]])
        if v["champion"]:
            tick.set_fontweight("bold")
    for r, v in enumerate(versions):
        if v["decision"] in ("rejected", "rolled_back"):
            ax.add_patch(matplotlib.patches.Rectangle((-0.5, r - 0.5), len(batches), 1, fill=False,
                                                      edgecolor=COLOURS[v["decision"]], linewidth=2))
    fig.colorbar(image, ax=ax, fraction=0.04, label=versions[-1]["metric"])
    return _png(fig)


def forgetting(doc: dict[str, Any]) -> bytes | None:
    versions = [v for v in _scored(doc) if v["champion_per_batch"]]
    if not versions:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.4))
    batches = sorted({b for v in versions for b in v["champion_per_batch"] if b != str(v["batch"])}, key=int)
    x = list(range(len(versions)))
    width = 0.8 / max(len(batches), 1)
    for k, batch in enumerate(batches):
        drops = [(v["champion_per_batch"].get(batch) - v["per_batch"][batch])
                 if v["champion_per_batch"].get(batch) is not None and v["per_batch"].get(batch) is not None
                 and batch != str(v["batch"]) else float("nan") for v in versions]
        ax.bar([i + (k - (len(batches) - 1) / 2) * width for i in x], drops, width, label=f"batch {batch}")
    ax.axhline(doc["max_forgetting"], color="#d62828", linestyle="--", linewidth=1, label="gate.max_forgetting")
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xticks(x, [f"{v['version']}\n{SHORT[v['decision']]}" for v in versions], fontsize=8)
    for tick, v in zip(ax.get_xticklabels(), versions):
        tick.set_color(COLOURS[v["decision"]])
    ax.set_ylabel("champion's score - candidate's")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    return _png(fig)


def training(doc: dict[str, Any]) -> bytes | None:
    versions = [v for v in doc["versions"] if v["train_samples"] is not None]
    if not versions:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = list(range(len(versions)))
    ax.bar(x, [v["train_samples"] for v in versions], color=[COLOURS[v["decision"]] for v in versions], alpha=0.8)
    ax.set_ylabel("training samples")
    ax.set_xticks(x, [f"{v['version']}\nbatch {v['batch']}" for v in versions], fontsize=8)
    seconds = ax.twinx()
    seconds.plot(x, [v["train_seconds"] for v in versions], "o-", color="#1d3557")
    seconds.set_ylabel("training seconds", color="#1d3557")
    seconds.set_ylim(bottom=0)
    return _png(fig)


def champion_history(doc: dict[str, Any]) -> bytes | None:
    switches = [e for e in doc["audit"] if e["action"] in ("promote", "manual_promote", "rollback") and e["to"]]
    if not switches:
        return None
    names = [v["version"] for v in doc["versions"]]
    level = {name: i for i, name in enumerate(names)}
    times = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in switches]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 2))
    ax.step(times, [level.get(e["to"], 0) for e in switches], where="post", color="#444", linewidth=1.2)
    for when, entry in zip(times, switches):
        colour = "#d62828" if entry["action"] == "rollback" else "#2a9d4a" if entry["action"] == "promote" else "#1d3557"
        ax.scatter(when, level.get(entry["to"], 0), color=colour, s=50, zorder=3)
        ax.annotate(entry["action"].replace("_", " "), (when, level.get(entry["to"], 0)), textcoords="offset points",
                    xytext=(4, 6), fontsize=7, color=colour)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(-0.5, len(names) - 0.5)
    ax.grid(alpha=0.3)
    locator = matplotlib.dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))
    return _png(fig)


def labels(doc: dict[str, Any]) -> bytes | None:
    current = next((v for v in doc["versions"] if v["champion"]), None)
    if current is None or not current["per_label"]:
        return None
    sets = sorted(current["per_label"], key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    names = sorted({name for s in sets for name in current["per_label"][s]})
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / max(len(sets), 1)
    for k, name in enumerate(sets):
        found = current["per_label"][name]
        ax.bar([i + (k - (len(sets) - 1) / 2) * width for i in range(len(names))],
               [found[n]["f1"] if n in found and found[n]["support"] else float("nan") for n in names], width,
               label=f"batch {name}" if name.isdigit() else name)
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20 if len(names) > 6 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"F1 of {current['version']}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    return _png(fig)
