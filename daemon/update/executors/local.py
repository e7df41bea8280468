"""`train.executor = "local"`: the training child on this machine (daemon/update/launcher.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.update.launcher import ChildRun, Standby


class LocalExecutor:
    name = "local"

    def start(self, spec_path: Path, on_event: Any = None, standby: Standby | None = None) -> ChildRun:
        return ChildRun(spec_path, on_event).start(standby)

    def forget(self, batch: int) -> None:
        """Nothing here: a local run's checkpoint lies in the batch's work folder, which the cycle removes."""
