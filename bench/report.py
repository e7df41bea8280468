"""Write a benchmark's section of BENCHMARKS.md between its markers, keeping the rest."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Sequence

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """The machine and the day a figure was measured on it."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
            f"(run {time.strftime('%Y-%m-%d', time.gmtime())})")


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def matrix_grid(matrices: dict[str, Sequence[Sequence[float | None]]], titles: dict[str, str], suptitle: str,
                path: Path, *, cols: int, vmax: float, cmap: str, numbers: bool = False) -> Path:
    """One heat map per contender of a score after each update (row) on each batch's held-out set
    (column), in a grid written to `path`; `numbers` prints each cell's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(matrices)
    cols = min(cols, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        data = np.array([[np.nan if v is None else v for v in row] for row in matrices[name]], dtype=float)
        ax.imshow(data, vmin=0, vmax=vmax, cmap=cmap)
        if numbers:
            for (i, j), value in np.ndenumerate(data):
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value > vmax / 2 else "black")
        ax.set_title(titles[name], fontsize=10)
        ax.set_xlabel("held-out set of batch")
        ax.set_ylabel("after update")
        ax.set_xticks(range(data.shape[1]), [str(t + 1) for t in range(data.shape[1])], fontsize=7)
        ax.set_yticks(range(data.shape[0]), [str(t + 1) for t in range(data.shape[0])], fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
