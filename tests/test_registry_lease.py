"""The active/standby lease on a real PostgreSQL: one holder at a time, a standby takes over within
30 s of the active being killed, and a lease whose session was cut is known to be lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from registry.lease import Lease, lease_key
from tests.conftest import ROOT
from tests.servers import postgres_server  # noqa: F401 (fixture)


def start(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.lease_worker", url], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_one_active_and_a_standby_that_takes_over_when_it_is_killed(postgres_server) -> None:  # noqa: F811
    url = postgres_server.new_database()
    first = start(url)
    assert first.stdout.readline().strip() == "active"  # type: ignore[union-attr]
    second = start(url)
    try:
        assert second.stdout.readline().strip() == "standby"  # type: ignore[union-attr]
        observer = Lease(url)
        assert observer.holder() == f"{__import__('socket').gethostname()} pid {first.pid}"
        assert not observer.try_acquire()
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        assert second.stdout.readline().strip() == "active"  # type: ignore[union-attr]
        assert time.monotonic() - killed < 30
        assert observer.holder().endswith(f"pid {second.pid}")  # type: ignore[union-attr]
        observer.release()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_a_lease_whose_session_was_cut_is_lost_and_can_be_taken_again(postgres_server) -> None:  # noqa: F811
    import psycopg

    url = postgres_server.new_database()
    mine, other = Lease(url, name="cut"), Lease(url, name="cut")
    assert mine.try_acquire() and mine.held() and mine.try_acquire()  # taking it again is a no-op
    assert not other.try_acquire() and not other.held()
    with psycopg.connect(url, autocommit=True) as admin:  # a network cut, or an operator ending it
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                      (f"lifelong active {mine.me}",))
    time.sleep(0.2)
    assert not mine.held()
    assert other.try_acquire() and other.held()
    assert not mine.try_acquire()
    other.release()  # its session ends a moment later, and the lock with it
    deadline = time.monotonic() + 10
    while not mine.try_acquire():
        assert time.monotonic() < deadline, "the released lease was never free again"
        time.sleep(0.1)
    mine.release()


@pytest.mark.parametrize("name", ["active", "x", "a much longer lease name"])
def test_lease_keys_are_stable_signed_64_bit(name: str) -> None:
    key = lease_key(name)
    assert -(2**63) <= key < 2**63 and key == lease_key(name)
