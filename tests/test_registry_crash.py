"""Crash safety and concurrency of the registry, with real processes and SIGKILL."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.registry import Registry
from tests.conftest import ROOT, lifelong_cmd
from tests.registry_worker import open_registry
from tests.servers import BACKENDS, backend_urls, postgres_server, seaweedfs_server  # noqa: F401 (fixtures)

KILLS = 22


def check_consistent(root: Path, urls: tuple[str, str] = ("", "")) -> tuple[str | None, int]:
    with open_registry(str(root), *urls) as registry:  # opening recovers
        champion = registry.champion()
        versions = registry.versions()
        for record in versions:
            if record.version not in registry.pruned():
                registry.verify(record.version, full=True)  # nothing half-written is visible
        if champion is None:
            assert not os.path.lexists(registry.link)
        else:
            assert (registry.root / os.readlink(registry.link)).resolve() == registry.model_dir(champion).resolve()
            assert (registry.link / "config.json").is_file()
        assert list((root / ".staging").iterdir()) == []
        assert registry.artifacts.versions_present() == {r.version for r in versions} - set(registry.pruned())
        return champion, len(registry.audit())


# the remote pairs in `make test-slow` (make test's budget; 40 s each with their clients' imports): the
# local pair runs here, and test_parallel_promotes_and_rollbacks_are_serialised runs every pair
@pytest.mark.parametrize("backends", [b if b == "sqlite+local" else pytest.param(b, marks=pytest.mark.slow)
                                      for b in BACKENDS])
def test_sigkill_while_writing_versions_and_switching(tmp_path: Path, tiny_model: Path, backends: str,
                                                      request: pytest.FixtureRequest) -> None:
    urls = backend_urls(request, backends)
    root = tmp_path / "registry"
    rng = random.Random(7)
    kills = 0
    last_audit = 0
    champions: set[str | None] = set()
    for attempt in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-m", "tests.registry_worker", str(root), str(tiny_model),
                                 str(attempt), *urls], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if any(urls):  # the remote clients take a while to import: kill once the work has begun
            assert proc.stdout.readline() == b"open\n", proc.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(rng.uniform(0.05, 1.2))
        else:
            time.sleep(rng.uniform(0.25, 0.8))
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        champion, audit = check_consistent(root, urls)
        assert audit >= last_audit  # the history only grows
        last_audit = audit
        champions.add(champion)
    assert kills >= 20
    assert len(champions) > 3  # the kills landed while the champion kept moving


@pytest.mark.parametrize("backends", BACKENDS)
def test_parallel_promotes_and_rollbacks_are_serialised(home_root: Path, tiny_model: Path, backends: str,
                                                        request: pytest.FixtureRequest) -> None:
    from daemon.home import open_registry
    from tests.conftest import open_home, stage_full, write_config

    metadata, artifacts = backend_urls(request, backends)
    write_config(home_root, registry={"metadata": metadata, "artifacts": artifacts})
    with open_registry(open_home(home_root)) as registry:
        for marker in "abcdef":
            registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="finetune")
        registry.promote("v0001", actor="daemon")
    commands = [lifelong_cmd("promote", f"v000{i}", "--force", "--home", str(home_root)) for i in (2, 3, 4, 5, 6, 2)]
    commands += [lifelong_cmd("rollback", "--home", str(home_root), "--reason", f"r{i}") for i in range(4)]
    daemon = [sys.executable, "-c", (
        "from pathlib import Path; from daemon.home import open_home, open_registry; from registry.errors import Conflict\n"
        f"r = open_registry(open_home(Path({str(home_root)!r})))\n"
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
    with open_registry(open_home(home_root)) as registry:
        audit = registry.audit()
        assert len(audit) == 1 + cli_ok + daemon_ok  # every switch that happened is in the log
        # each entry starts where the previous one ended: the switches never interleaved
        ordered = list(reversed(audit))
        assert all(later.from_ == earlier.to for earlier, later in zip(ordered, ordered[1:]))
        assert os.readlink(registry.link) == f"versions/{registry.champion()}/model"


def fake_version(registry: Registry, marker: str, *, lora: bool = False) -> Path:
    """A small staging directory of several files, so a prune has several steps to be killed at."""
    staging = registry.new_staging()
    folder = staging / ("adapter" if lora else "model")
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(marker.encode() * 1000)
    (folder / "config.json" if not lora else folder / "adapter_config.json").write_text("{}")
    if lora:
        (staging / "model-config").mkdir()
        (staging / "model-config" / "config.json").write_text("{}")
    (staging / "state").mkdir()
    (staging / "state" / "replay.arrow").write_bytes(marker.encode() * 500)
    return staging


def copy_materializer(version_dir: Path, parent_dir: Path, out: Path) -> None:
    shutil.copytree(parent_dir, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
    (out / "adapter.txt").write_text(version_dir.name)


def clone_remote(urls: tuple[str, str], name: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A copy of the remote pair's state: the database (CREATE DATABASE ... TEMPLATE) and every object."""
    import psycopg

    from registry.s3 import make_client, parse_url

    metadata, artifacts = urls
    if metadata:
        server = request.getfixturevalue("postgres_server")
        with psycopg.connect(server.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" TEMPLATE "{metadata.rsplit("/", 1)[1]}"')
        metadata = server.url(name)
        request.addfinalizer(lambda: server.drop_database(metadata))
    if artifacts:
        bucket, prefix = parse_url(artifacts)
        client = make_client()
        for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", []):
            if not item["Key"].endswith("/"):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                client.put_object(Bucket=bucket, Key=f"{prefix}-{name}/{item['Key'][len(prefix) + 1:]}", Body=body)
        artifacts = f"{artifacts}-{name}"
    return metadata, artifacts


# on S3 every request is a kill point too (about 70 runs, 3 min): kept for `make test-slow`
@pytest.mark.parametrize("backends", [pytest.param(b, marks=pytest.mark.slow) if b.endswith("+s3") else b
                                      for b in BACKENDS])
def test_sigkill_at_every_step_of_a_gc_leaves_every_kept_version_verifiable(tmp_path: Path, backends: str,
                                                                            request: pytest.FixtureRequest) -> None:
    template_urls = backend_urls(request, backends)
    template = tmp_path / "template"
    with open_registry(str(template), *template_urls) as registry:
        registry.serving.materializer = copy_materializer
        for i, marker in enumerate("abcdef", 1):
            lora = marker in "ce"  # v0003 adapts v0002, v0005 adapts v0004
            registry.create_version(fake_version(registry, marker, lora=lora), parent=f"v{i - 1:04d}" if lora else None,
                                    strategy="finetune")
        for version in ("v0001", "v0002", "v0003", "v0005"):
            registry.promote(version, actor="daemon")  # v0005's merged copy is made; v0003's stays (rollback target)
        registry.record_decision("v0006", "rejected")
    # keep 1: the champion v0005 (with v0004, the weights it adapts) and the newest v0006; v0001,
    # v0002 and v0003 (with its merged serving copy) go
    expected, doomed = {"v0004", "v0005", "v0006"}, {"v0001", "v0002", "v0003"}
    runs = 0
    for kill_at in range(1, 200):
        root = tmp_path / f"run{kill_at}"
        shutil.copytree(template, root, symlinks=True)
        urls = clone_remote(template_urls, f"{template_urls[0].rsplit('/', 1)[-1] or 'r'}_{kill_at}", request) \
            if any(template_urls) else template_urls
        done = subprocess.run([sys.executable, "-m", "tests.registry_worker", "gc", str(root), "1", str(kill_at), *urls],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        runs += 1
        with open_registry(str(root), *urls) as registry:  # opening finishes the prune
            registry.serving.materializer = copy_materializer
            assert set(registry.pruned()) <= doomed
            assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".")]
            assert not [p for p in (root / "serving").iterdir() if p.name.startswith(".")]
            for version in expected:
                registry.verify(version, full=True)
            assert registry.artifacts.versions_present() == {f"v000{i}" for i in range(1, 7)} - set(registry.pruned())
            assert registry.champion() == "v0005" and (registry.link / "config.json").is_file()
            report = registry.gc(1)  # and a gc run again completes the job
            assert set(registry.pruned()) == doomed and set(report.kept) == expected
            assert not (root / "serving" / "v0003").exists()
            shutil.rmtree(root / "serving" / "v0005")  # a kept LoRA version is merged again from what was kept
            assert (registry.model_dir("v0005") / "adapter.txt").read_text() == "v0005"
        if done.returncode == 0:  # kill_at was past the gc's last file operation: every point was hit
            assert int(done.stdout) == kill_at - 1
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
    assert runs > 8
