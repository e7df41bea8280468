"""The HTTP endpoint under hostile and eager clients: real sockets against a real HealthServer."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import pytest

from daemon.service.http import HealthServer


def serve(metrics: Callable[[], bytes] = lambda: b"# metrics\n", **options: Any) -> HealthServer:
    return HealthServer("127.0.0.1", 0, metrics=metrics, healthy=lambda: True, ready=lambda: True, **options).start()


@pytest.fixture
def servers() -> Iterator[list[HealthServer]]:
    started: list[HealthServer] = []
    yield started
    for server in started:
        server.stop()


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def stalled(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /metr")
    return sock


def test_half_sent_requests_hold_no_threads_and_the_probes_still_answer(servers: list[HealthServer]) -> None:
    server = serve(request_timeout=30.0)
    servers.append(server)
    assert get(server.port, "/metrics")[0] == 200  # the scrape worker exists from here on
    before = threading.active_count()
    clients = [stalled(server.port) for _ in range(150)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/readyz")[0] == 200
        assert time.monotonic() - started < 2
        assert threading.active_count() <= before
    finally:
        for sock in clients:
            sock.close()


def test_a_stalled_client_is_dropped_after_the_timeout(servers: list[HealthServer]) -> None:
    server = serve(request_timeout=0.3)
    servers.append(server)
    sock = stalled(server.port)
    started = time.monotonic()
    try:
        assert sock.recv(1024) == b""  # closed by the server, not by our 5 s socket timeout
    finally:
        sock.close()
    assert 0.2 < time.monotonic() - started < 3


def test_connections_past_the_bound_get_503_at_once(servers: list[HealthServer]) -> None:
    server = serve(max_connections=4, request_timeout=30.0)
    servers.append(server)
    clients = [stalled(server.port) for _ in range(4)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        assert get(server.port, "/healthz")[0] == 503
        assert time.monotonic() - started < 2
    finally:
        for sock in clients:
            sock.close()
    time.sleep(0.2)
    assert get(server.port, "/healthz")[0] == 200  # the bound frees as they leave


def test_an_oversized_request_head_is_refused(servers: list[HealthServer]) -> None:
    server = serve(max_head_bytes=1024)
    servers.append(server)
    assert get(server.port, "/healthz?" + "x" * 4000)[0] == 431


def test_a_failing_scrape_answers_500_without_the_exception(servers: list[HealthServer],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bytes:
        raise RuntimeError("secret path /srv/lifelong/store.sqlite is locked")

    server = serve(broken)
    servers.append(server)
    with caplog.at_level(logging.ERROR, logger="daemon.service.http"):
        code, _, body = get(server.port, "/metrics")
    assert code == 500 and body == b"internal error\n"
    assert "secret" in caplog.text  # the log has it, the client does not


def test_no_server_banner(servers: list[HealthServer]) -> None:
    server = serve()
    servers.append(server)
    for path in ("/metrics", "/healthz", "/nope"):
        _, headers, _ = get(server.port, path)
        assert "Server" not in headers and "Python" not in str(headers)


def test_methods(servers: list[HealthServer]) -> None:
    server = serve()
    servers.append(server)
    code, headers, body = get(server.port, "/healthz", method="HEAD")
    assert (code, headers["Content-Length"], body) == (200, "3", b"")
    code, headers, _ = get(server.port, "/metrics", method="POST")
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    assert get(server.port, "/nope")[0] == 404


def test_scrapes_within_the_ttl_compute_once(servers: list[HealthServer]) -> None:
    calls: list[float] = []
    now = [100.0]

    def collect() -> bytes:
        calls.append(now[0])
        return b"lifelong_build_info 1.0\n"

    server = serve(collect, scrape_ttl=1.0, clock=lambda: now[0])
    servers.append(server)
    for _ in range(20):
        assert get(server.port, "/metrics")[:3:2] == (200, b"lifelong_build_info 1.0\n")
    assert len(calls) == 1
    now[0] += 1.5
    get(server.port, "/metrics")
    assert len(calls) == 2


def test_concurrent_scrapes_share_one_computation_and_never_block_the_probes(servers: list[HealthServer]) -> None:
    calls: list[int] = []
    release = threading.Event()

    def slow() -> bytes:
        calls.append(1)
        release.wait(5)
        return b"x 1.0\n"

    server = serve(slow)
    servers.append(server)
    answers: list[int] = []
    scrapers = [threading.Thread(target=lambda: answers.append(get(server.port, "/metrics")[0])) for _ in range(8)]
    for thread in scrapers:
        thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert get(server.port, "/healthz")[0] == 200
    assert time.monotonic() - started < 1
    release.set()
    for thread in scrapers:
        thread.join(5)
    assert answers == [200] * 8 and len(calls) == 1


def test_readyz_tells_a_standby_from_the_active_daemon(servers: list[HealthServer]) -> None:
    state = {"ready": True, "standby": True}
    server = HealthServer("127.0.0.1", 0, metrics=lambda: b"", healthy=lambda: True, ready=lambda: state["ready"],
                          standby=lambda: state["standby"]).start()
    servers.append(server)
    assert get(server.port, "/readyz")[::2] == (200, b"standby\n")  # ready to take over: a rollout may go on
    state["ready"] = False  # a standby that cannot reach the registry's database could not take over
    assert get(server.port, "/readyz")[::2] == (503, b"standby, cannot reach the registry database\n")
    state.update(ready=True, standby=False)
    assert get(server.port, "/readyz")[::2] == (200, b"ready\n")
    state["ready"] = False
    assert get(server.port, "/readyz")[::2] == (503, b"starting\n")
