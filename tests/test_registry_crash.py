"""Crash safety and concurrency of the registry, with real processes and SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from registry.registry import Registry
from tests.conftest import ROOT, lifelong_cmd

KILLS = 22


def check_consistent(root: Path) -> tuple[str | None, int]:
    with Registry(root) as registry:  # opening recovers
        champion = registry.champion()
        versions = registry.versions()
        for record in versions:
            registry.verify(record.version, full=True)  # nothing half-written is visible
        if champion is None:
            assert not os.path.lexists(registry.link)
        else:
            assert (registry.root / os.readlink(registry.link)).resolve() == registry.model_dir(champion).resolve()
            assert (registry.link / "config.json").is_file()
        assert list((root / ".staging").iterdir()) == []
        assert registry.artifacts.versions_present() == {r.version for r in versions}
        return champion, len(registry.audit())


def test_sigkill_while_writing_versions_and_switching(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "registry"
    rng = random.Random(7)
    kills = 0
    last_audit = 0
    champions: set[str | None] = set()
    for attempt in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-m", "tests.registry_worker", str(root), str(tiny_model),
                                 str(attempt)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.25, 0.8))
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        champion, audit = check_consistent(root)
        assert audit >= last_audit  # the history only grows
        last_audit = audit
        champions.add(champion)
    assert kills >= 20
    assert len(champions) > 3  # the kills landed while the champion kept moving


def test_parallel_promotes_and_rollbacks_are_serialised(home_root: Path, tiny_model: Path) -> None:
    from tests.conftest import stage_full

    with Registry(home_root / "registry") as registry:
        for marker in "abcdef":
            registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="finetune")
        registry.promote("v0001", actor="daemon")
    commands = [lifelong_cmd("promote", f"v000{i}", "--force", "--home", str(home_root)) for i in (2, 3, 4, 5, 6, 2)]
    commands += [lifelong_cmd("rollback", "--home", str(home_root), "--reason", f"r{i}") for i in range(4)]
    daemon = [sys.executable, "-c", (
        "import sys; from pathlib import Path; from registry.registry import Registry; from registry.errors import Conflict\n"
        f"r = Registry(Path({str(home_root / 'registry')!r}))\n"
        "ok = 0\n"
        "for v in ['v0003', 'v0005', 'v0006']:\n"
        "    try: r.promote(v, actor='daemon', reason='cycle'); ok += 1\n"
        "    except Conflict: pass\n"
        "print(ok)")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands + [daemon]]
    results = [(proc.wait(timeout=120), *proc.communicate()) for proc in procs]
    cli_ok = sum(1 for code, _, _ in results[:-1] if code == 0)
    assert all(code in (0, 3) for code, _, _ in results[:-1]), results
    daemon_ok = int(results[-1][1].strip())
    with Registry(home_root / "registry") as registry:
        audit = registry.audit()
        assert len(audit) == 1 + cli_ok + daemon_ok  # every switch that happened is in the log
        # each entry starts where the previous one ended: the switches never interleaved
        ordered = list(reversed(audit))
        assert all(later.from_ == earlier.to for earlier, later in zip(ordered, ordered[1:]))
        assert os.readlink(registry.link) == f"versions/{registry.champion()}/model"
