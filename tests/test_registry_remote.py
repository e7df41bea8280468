"""What only the remote pair (PostgreSQL metadata, S3 artifacts) must do, against real servers on
loopback: a second host sees the same registry, the store's bytes are checked and never overwritten,
a store that ignores preconditions is refused, the database keeps its own rules, and the registry
lives through a store that is down for a while and a database that restarts."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from registry import retry
from registry.backends import open_backends
from registry.errors import (ArtifactStoreUnavailable, Conflict, IntegrityError, MetadataUnavailable, UnsafeStore)
from registry.registry import Registry
from registry.s3 import S3Artifacts, make_client
from tests.conftest import stage_full
from tests.servers import (S3_KEY, S3_SECRET, free_port, postgres_server, seaweedfs_server,  # noqa: F401
                           start_rclone_s3)


@pytest.fixture
def urls(postgres_server, seaweedfs_server) -> tuple[str, str]:  # noqa: F811
    return postgres_server.new_database(), seaweedfs_server.url()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers' keys in the environment, for stores other than the session's SeaweedFS."""
    for name, value in (("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)


def open_host(root: Path, urls: tuple[str, str], **kwargs: object) -> Registry:
    metadata, artifacts = open_backends(root, *urls, probe=True)
    return Registry(root, metadata=metadata, artifacts=artifacts, **kwargs)  # type: ignore[arg-type]


def raw_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                        region_name="us-east-1")


def test_a_second_host_sees_every_version_and_keeps_its_own_verified_champion(urls, tmp_path: Path,
                                                                               tiny_model: Path) -> None:
    with open_host(tmp_path / "a", urls) as first:
        for marker in "ab":
            first.create_version(stage_full(first, tiny_model, marker), parent=None, strategy="replay")
        first.promote("v0001", actor="daemon")
        first.promote("v0002", actor="daemon")
    with open_host(tmp_path / "b", urls) as second:  # nothing of it on this disk yet
        assert [r.version for r in second.versions()] == ["v0001", "v0002"]
        assert second.champion() == "v0002"
        assert os.readlink(second.link) == "versions/v0002/model"  # downloaded and checked on open
        assert (second.link / "config.json").is_file()
        assert not (tmp_path / "b" / "versions" / "v0001").exists()  # fetched only when needed
        second.rollback(actor="cli", reason="from the other host")
        assert (tmp_path / "b" / "versions" / "v0001" / "model" / "config.json").is_file()
    with open_host(tmp_path / "a", urls) as first:
        assert first.champion() == "v0001" and os.readlink(first.link) == "versions/v0001/model"


def test_altered_bytes_in_the_store_are_refused_naming_the_file(urls, tmp_path: Path, tiny_model: Path,
                                                                seaweedfs_server) -> None:  # noqa: F811
    with open_host(tmp_path / "a", urls) as first:
        first.create_version(stage_full(first, tiny_model, "a"), parent=None, strategy="replay")
        store = first.artifacts
        key = store._key("v0001", "model/model.safetensors")
    client = raw_client(seaweedfs_server.endpoint)
    data = bytearray(client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.delete_object(Bucket=store.bucket, Key=key)  # what only someone bypassing the registry can do
    client.put_object(Bucket=store.bucket, Key=key, Body=bytes(data))
    with open_host(tmp_path / "b", urls) as second:
        with pytest.raises(IntegrityError) as info:
            second.promote("v0001", actor="cli")
        assert info.value.file == "model/model.safetensors" and second.champion() is None
        assert not (tmp_path / "b" / "versions" / "v0001").exists()  # nothing unverified kept
        with pytest.raises(IntegrityError):
            second.export("v0001", tmp_path / "out")


def test_a_stored_object_is_never_overwritten(urls, tmp_path: Path, tiny_model: Path,
                                              seaweedfs_server) -> None:  # noqa: F811
    with open_host(tmp_path / "a", urls) as registry:
        store = registry.artifacts
        client = raw_client(seaweedfs_server.endpoint)
        key = store._key("v0001", "model/config.json")
        checked = store.has_files

        def squatted_after_the_check(version: str) -> bool:  # a leftover found first would be removed
            found = checked(version)
            client.put_object(Bucket=store.bucket, Key=key, Body=b"{}")  # another writer's v0001 file appears
            return found
        store.has_files = squatted_after_the_check  # type: ignore[method-assign]
        with pytest.raises(IntegrityError, match="refusing to overwrite"):
            registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay")
        assert client.get_object(Bucket=store.bucket, Key=key)["Body"].read() == b"{}"
        assert registry.versions() == [] and not store.exists("v0001")  # no manifest: not a version
    with open_host(tmp_path / "a", urls) as reopened:  # the leftover goes; the number is free again
        assert reopened.artifacts.versions_present() == set()
        assert reopened.create_version(stage_full(reopened, tiny_model), parent=None, strategy="x").version == "v0001"


def test_a_store_that_ignores_if_none_match_is_refused(tmp_path: Path, s3_credentials: None) -> None:
    try:
        proc, endpoint, folder = start_rclone_s3()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        store = S3Artifacts(tmp_path / "r", "s3://lifelong/x", client=make_client(endpoint_url=endpoint))
        with pytest.raises(UnsafeStore, match="ignores If-None-Match") as info:
            store.probe()
        assert info.value.exit_code == 2
        assert not any(folder.rglob("*probe*/*"))  # the canary is cleaned up
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_store_down_for_good_fails_after_retries_with_backoff(tmp_path: Path, s3_credentials: None) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = S3Artifacts(tmp_path / "r", "s3://lifelong/x", client=make_client(endpoint_url=dead, timeout=1),
                        backoff=retry.Backoff(attempts=4, base_seconds=0.05, max_seconds=0.2))
    before = (retry.COUNTS.retries, retry.COUNTS.failures)
    started = time.monotonic()
    with pytest.raises(ArtifactStoreUnavailable) as info:
        store.exists("v0001")
    assert info.value.attempts == 4 and time.monotonic() - started >= 0.75 * (0.05 + 0.1 + 0.2)  # each wait has up to 25% jitter
    assert (retry.COUNTS.retries, retry.COUNTS.failures) == (before[0] + 3, before[1] + 1)


def test_a_store_down_for_a_while_is_waited_for(urls, tmp_path: Path, tiny_model: Path,
                                                seaweedfs_server) -> None:  # noqa: F811
    metadata, _ = open_backends(tmp_path / "a", urls[0])
    store = S3Artifacts(tmp_path / "a", urls[1], client=make_client(timeout=1),
                        backoff=retry.Backoff(attempts=12, base_seconds=0.2, max_seconds=1.0))
    with Registry(tmp_path / "a", metadata=metadata, artifacts=store) as registry:
        staging = stage_full(registry, tiny_model)
        retries = retry.COUNTS.retries
        os.killpg(seaweedfs_server.proc.pid, signal.SIGSTOP)  # the store stops answering
        resume = threading.Timer(2.5, os.killpg, (seaweedfs_server.proc.pid, signal.SIGCONT))
        resume.start()
        try:
            record = registry.create_version(staging, parent=None, strategy="replay")
        finally:
            resume.join()
            os.killpg(seaweedfs_server.proc.pid, signal.SIGCONT)
        assert retry.COUNTS.retries > retries
        registry.promote(record.version, actor="daemon")
    with open_host(tmp_path / "b", urls) as second:
        second.verify("v0001", full=True)


def test_the_database_keeps_its_rules(urls, tmp_path: Path, tiny_model: Path) -> None:
    import psycopg

    with open_host(tmp_path / "a", urls) as registry:
        registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay")
    with psycopg.connect(urls[0], autocommit=True) as db:
        for bad in ("INSERT INTO versions (seq, version, parent, created_at, strategy, kind, manifest_sha256, info)"
                    " VALUES (2, 'v0002', 'v0099', 'now', 's', 'full', repeat('a', 64), '{}')",  # no such parent
                    "INSERT INTO versions (seq, version, parent, created_at, strategy, kind, manifest_sha256, info)"
                    " VALUES (2, 'v0001', NULL, 'now', 's', 'full', repeat('a', 64), '{}')",  # taken
                    "INSERT INTO versions (seq, version, parent, created_at, strategy, kind, manifest_sha256, info)"
                    " VALUES (2, 'v0002', NULL, 'now', 's', 'pickle', repeat('a', 64), '{}')",  # no such kind
                    "INSERT INTO audit (at, actor, action, from_version, to_version, reason)"
                    " VALUES ('now', 'cli', 'promote', NULL, 'v0042', '')",  # a switch to nothing
                    "INSERT INTO decisions (version, decision, at, gate, metrics)"
                    " VALUES ('v0042', 'promoted', 'now', '{}', '{}')"):
            with pytest.raises(psycopg.IntegrityError):
                db.execute(bad)


def test_a_lost_database_connection_fails_the_call_cleanly_and_the_next_one_reconnects(
        urls, tmp_path: Path, tiny_model: Path, postgres_server) -> None:  # noqa: F811
    import psycopg

    with open_host(tmp_path / "a", urls) as registry:
        registry.create_version(stage_full(registry, tiny_model, "a"), parent=None, strategy="replay")
        staging = stage_full(registry, tiny_model, "b")
        pid = registry.meta._db.info.backend_pid

        def killed_mid_write(version: str, path: Path) -> None:
            with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            raise_into(version, path)
        raise_into = registry.artifacts.publish
        registry.artifacts.publish = killed_mid_write  # type: ignore[method-assign]
        with pytest.raises(MetadataUnavailable):
            registry.create_version(staging, parent=None, strategy="replay")
        registry.artifacts.publish = raise_into  # type: ignore[method-assign]
        assert [r.version for r in registry.versions()] == ["v0001"]  # reconnected; nothing half-written
    postgres_server.stop()  # a restart of the whole server between two cycles
    postgres_server.start()
    with open_host(tmp_path / "a", urls) as reopened:  # the unrecorded v0002 files are a leftover: removed
        assert reopened.artifacts.versions_present() == {"v0001"}
        assert reopened.create_version(stage_full(reopened, tiny_model, "c"), parent=None,
                                       strategy="replay").version == "v0002"
        reopened.promote("v0002", actor="daemon")


def test_a_switch_from_another_host_in_between_is_a_conflict(urls, tmp_path: Path, tiny_model: Path) -> None:
    with open_host(tmp_path / "a", urls) as first, open_host(tmp_path / "b", urls) as second:
        for marker in "abc":
            first.create_version(stage_full(first, tiny_model, marker), parent=None, strategy="replay")
        first.promote("v0001", actor="daemon")
        real = first.model_dir

        def slow_model_dir(version: str) -> Path:  # the other host switches while this one verifies
            path = real(version)
            if version == "v0003":
                second.promote("v0002", actor="cli")
            return path
        first.model_dir = slow_model_dir  # type: ignore[method-assign]
        with pytest.raises(Conflict, match="changed"):
            first.promote("v0003", actor="daemon")
        audit = list(reversed(first.audit()))
        assert [(e.from_, e.to) for e in audit] == [(None, "v0001"), ("v0001", "v0002")]


def test_a_remote_registry_is_never_opened_on_the_local_defaults(urls, tmp_path: Path, tiny_model: Path) -> None:
    from registry.errors import UsageError

    with open_host(tmp_path / "a", urls) as registry:
        registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay")
    assert "metadata postgresql://" in (tmp_path / "a" / "REMOTE").read_text()
    with pytest.raises(UsageError, match="open_registry"):
        Registry(tmp_path / "a")  # a forgotten call site would fork the registry into a local SQLite file
    assert not (tmp_path / "a" / "registry.sqlite").exists()


def test_a_database_restart_between_two_calls_goes_unnoticed(urls, tmp_path: Path, tiny_model: Path,
                                                             postgres_server) -> None:  # noqa: F811
    with open_host(tmp_path / "a", urls) as registry:
        registry.create_version(stage_full(registry, tiny_model, "a"), parent=None, strategy="replay")
        staging = stage_full(registry, tiny_model, "b")
        postgres_server.stop()  # a restart (or a failover) while an update trains, say
        postgres_server.start()
        assert [r.version for r in registry.versions()] == ["v0001"]  # a read: sent again on a new connection
        postgres_server.stop()
        postgres_server.start()
        assert registry.create_version(staging, parent=None, strategy="replay").version == "v0002"  # a write too
        registry.promote("v0002", actor="daemon")
        postgres_server.stop()
        try:
            with pytest.raises(MetadataUnavailable):  # down for good: the call fails, named
                registry.champion()
        finally:
            postgres_server.start()
        assert registry.champion() == "v0002"
