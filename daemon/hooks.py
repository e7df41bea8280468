"""`[hooks] on_champion_change`: a command run after every change of champion.

It runs with LIFELONG_VERSION and LIFELONG_MODEL_DIR set, under a timeout; its failure is logged and
never undoes the switch.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)
HOOK_TIMEOUT = 60.0


def champion_hook(command: str, timeout: float = HOOK_TIMEOUT) -> Callable[[str, Path], None] | None:
    if not command.strip():
        return None

    def run(version: str, model_dir: Path) -> None:
        env = {**os.environ, "LIFELONG_VERSION": version, "LIFELONG_MODEL_DIR": str(model_dir)}
        try:
            done = subprocess.run(command, shell=True, env=env, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            log.error("on_champion_change hook timed out after %ss", timeout, extra={"version": version})
            return
        if done.returncode:
            log.error("on_champion_change hook exited %s: %s", done.returncode, done.stderr.strip()[-500:],
                      extra={"version": version})
        else:
            log.info("on_champion_change hook ran", extra={"version": version})
    return run
