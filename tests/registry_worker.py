"""Processes to be killed (tests): one that keeps writing versions and switching the champion, at
random; one gc that kills itself at a chosen file operation."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

from registry.errors import Conflict
from registry.registry import Registry


def open_registry(root: str, metadata: str = "", artifacts: str = "") -> Registry:
    """The registry at `root` with the backends the two URLs name ("" = SQLite, local files)."""
    from registry.backends import open_backends

    meta, store = open_backends(Path(root), metadata, artifacts)
    return Registry(Path(root), metadata=meta, artifacts=store)


def main(root: str, model: str, seed: str, metadata: str = "", artifacts: str = "") -> None:
    rng = random.Random(int(seed))
    with open_registry(root, metadata, artifacts) as registry:
        print("open", flush=True)
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


def gc(root: str, keep: str, kill_at: str, metadata: str = "", artifacts: str = "") -> None:
    """Run one gc, SIGKILLing this process at its `kill_at`-th file operation or call to the object
    store (0: never); print the count."""
    import os
    import signal

    from registry import retry

    calls = [0]

    def counted(real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call

    with open_registry(root, metadata, artifacts) as registry:
        for name in ("rename", "unlink", "rmdir", "fsync"):
            setattr(os, name, counted(getattr(os, name)))
        retry.call = counted(retry.call)  # every request to the object store
        registry.gc(int(keep))
    print(calls[0])


if __name__ == "__main__":
    gc(*sys.argv[2:]) if sys.argv[1] == "gc" else main(*sys.argv[1:])
