"""A process that keeps writing versions and switching the champion, to be killed at random (tests)."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

from registry.errors import Conflict
from registry.registry import Registry


def main(root: str, model: str, seed: str) -> None:
    rng = random.Random(int(seed))
    with Registry(Path(root)) as registry:
        while True:
            staging = registry.new_staging()
            shutil.copytree(model, staging / "model")
            (staging / "state").mkdir()
            (staging / "state" / "noise.bin").write_bytes(rng.randbytes(rng.randint(1, 1 << 20)))
            record = registry.create_version(staging, parent=registry.champion(), strategy="finetune")
            try:
                if rng.random() < 0.3 and registry.champion():
                    registry.rollback(actor="cli", reason="worker")
                else:
                    registry.promote(record.version, actor="daemon", reason="worker")
            except Conflict:
                pass


if __name__ == "__main__":
    main(*sys.argv[1:])
