"""The daemon and the CLI on a remote registry (`registry.metadata`, `registry.artifacts`): the config
keys, the refusals at start (exit 2), and the commands working on PostgreSQL + S3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.home import open_registry
from tests.conftest import ROOT, cli, lifelong_cmd, open_home, stage_full, write_config
from tests.servers import postgres_server, seaweedfs_server, start_rclone_s3  # noqa: F401 (fixtures)


def test_the_cli_works_on_a_remote_registry(home_root: Path, tiny_model: Path, postgres_server,  # noqa: F811
                                            seaweedfs_server, tmp_path: Path) -> None:  # noqa: F811
    write_config(home_root, registry={"metadata": postgres_server.new_database(), "artifacts": seaweedfs_server.url()})
    with open_registry(open_home(home_root), probe=True) as registry:
        for marker in "ab":
            registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="replay")
        registry.promote("v0001", actor="daemon")
    home = str(home_root)
    assert cli("promote", "v0002", "--force", "--home", home).exit_code == 0
    rows = json.loads(cli("versions", "--home", home, "--json").stdout)
    assert [r["version"] for r in rows] == ["v0001", "v0002"]
    assert json.loads(cli("status", "--home", home, "--json").stdout)["champion"] == "v0002"
    assert cli("rollback", "--home", home, "--reason", "test").exit_code == 0
    assert cli("export", "v0002", str(tmp_path / "out"), "--home", home).exit_code == 0
    assert (tmp_path / "out" / "config.json").is_file()
    # another home on the same registry: the same versions and champion, its own verified copy
    other = tmp_path / "other"
    cli("init", "--home", str(other))
    write_config(other, registry=json.loads(json.dumps(open_home(home_root).config.dump()["registry"])))
    assert json.loads(cli("status", "--home", str(other), "--json").stdout)["champion"] == "v0001"


def test_a_remote_backend_without_the_extra_is_refused_naming_it(home_root: Path) -> None:
    write_config(home_root, registry={"metadata": "postgresql://lifelong@db.example/lifelong"})
    hide = "import sys; sys.modules['psycopg'] = None; from daemon.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", hide, "status", "--home", str(home_root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "lifelong[remote]" in done.stderr and "registry.metadata" in done.stderr


@pytest.mark.parametrize("url, message", [("postgresql://u:secret@db/x", "password"), ("mysql://db/x", "postgresql://")])
def test_a_bad_metadata_url_is_refused_naming_the_key(home_root: Path, url: str, message: str) -> None:
    write_config(home_root, registry={"metadata": url})
    result = cli("status", "--home", str(home_root))
    assert result.exit_code == 2 and "registry.metadata" in result.stderr and message in result.stderr
    assert "secret" not in result.stderr


def test_an_s3_url_with_credentials_is_refused(home_root: Path) -> None:
    write_config(home_root, registry={"artifacts": "s3://key:secret@bucket/prefix"})
    result = cli("status", "--home", str(home_root))
    assert result.exit_code == 2 and "registry.artifacts" in result.stderr and "secret" not in result.stderr


def test_run_refuses_a_store_that_ignores_preconditions_with_exit_2(home_root: Path) -> None:
    try:
        proc, endpoint, folder = start_rclone_s3()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        write_config(home_root, registry={"artifacts": "s3://lifelong/home"})
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "lifelong-test",
               "AWS_SECRET_ACCESS_KEY": "lifelong-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
        done = subprocess.run(lifelong_cmd("run", "--home", str(home_root)), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "If-None-Match" in done.stderr and "registry.artifacts" in done.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_daemon_updates_and_promotes_on_postgresql_and_s3(home_root: Path, tiny_model: Path, postgres_server,  # noqa: F811
                                                              seaweedfs_server) -> None:  # noqa: F811
    import boto3
    import psycopg

    from tests.conftest import spawn
    from tests.test_cycle import configure
    from tests.test_end_to_end import drop, scrape
    from tests.test_learning import toy
    from tests.test_service import status, wait_for

    configure(home_root, tiny_model)
    metadata, artifacts = postgres_server.new_database(), seaweedfs_server.url()
    write_config(home_root, registry={"metadata": metadata, "artifacts": artifacts})
    proc = spawn("run", "--home", str(home_root))
    try:
        wait_for(lambda: (status(home_root)["daemon"] or {}).get("metrics_port") is not None, timeout=60)
        drop(home_root, "b1.jsonl", toy(["sport", "food"], 120, seed=1))
        wait_for(lambda: (status(home_root)["last_update"] or {}).get("decision") is not None, timeout=180)
        first = status(home_root)["last_update"]
        assert (first["decision"], first["version"]) == ("promoted", "v0001"), first
        assert status(home_root)["champion"] == "v0001"
        text = scrape(status(home_root)["daemon"]["metrics_port"])[1]
        assert "lifelong_artifact_store_failures_total 0.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()  # type: ignore[union-attr]
    with psycopg.connect(metadata) as db:  # the record and the switch are in PostgreSQL
        assert db.execute("SELECT version, kind FROM versions").fetchall() == [("v0001", "full")]
        assert db.execute("SELECT action, to_version FROM audit").fetchall() == [("promote", "v0001")]
    bucket, prefix = artifacts.removeprefix("s3://").split("/", 1)
    client = boto3.client("s3", endpoint_url=seaweedfs_server.endpoint)
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}/versions/v0001/manifest.json" in keys and f"{prefix}/versions/v0001/model/config.json" in keys
    assert not (home_root / "registry" / "registry.sqlite").exists()  # nothing went to a local registry
    assert os.readlink(home_root / "registry" / "champion") == "versions/v0001/model"


def test_a_home_configured_remote_is_marked_before_any_registry_is_opened(home_root: Path) -> None:
    from registry.errors import UsageError
    from registry.registry import Registry

    write_config(home_root, registry={"metadata": "postgresql://lifelong@127.0.0.1:1/lifelong"})
    open_home(home_root)
    assert (home_root / "registry" / "REMOTE").read_text().strip() == "metadata postgresql://lifelong@127.0.0.1:1/lifelong"
    with pytest.raises(UsageError):  # a call site on the defaults never makes a second, local registry
        Registry(home_root / "registry")
    assert not (home_root / "registry" / "registry.sqlite").exists()


def test_sync_champion_follows_the_shared_registry_on_a_serving_host(home_root: Path, tiny_model: Path,
                                                                     postgres_server, seaweedfs_server,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    from tests.test_service import wait_for

    urls = {"metadata": postgres_server.new_database(), "artifacts": seaweedfs_server.url()}
    write_config(home_root, registry=urls)
    serving = tmp_path / "serving"
    cli("init", "--home", str(serving))
    write_config(serving, registry=urls)
    link = serving / "registry" / "champion"
    result = cli("sync-champion", "--home", str(serving))
    assert result.exit_code == 0 and "no champion yet" in result.stdout and not os.path.lexists(link)
    with open_registry(open_home(home_root)) as registry:
        for marker in "ab":
            registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="replay")
        registry.promote("v0001", actor="daemon")
    result = cli("sync-champion", "--home", str(serving))
    assert result.exit_code == 0 and "champion v0001" in result.stdout
    assert os.readlink(link) == "versions/v0001/model" and (link / "config.json").is_file()
    follower = subprocess.Popen(lifelong_cmd("sync-champion", "--every", "0.2s", "--home", str(serving)), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open_registry(open_home(home_root)) as registry:
            registry.promote("v0002", actor="daemon")
        wait_for(lambda: os.readlink(link) == "versions/v0002/model", timeout=30)
        assert (link / "config.json").is_file()
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
    assert cli("sync-champion", "--every", "0s", "--home", str(serving)).exit_code == 2
