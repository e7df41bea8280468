"""The read-only HTTP endpoint: /metrics, /healthz (main-loop heartbeat), /readyz. GET and HEAD only.

/readyz answers 200 `ready` on the active daemon and 200 `standby` on a standby that can reach the
registry's database (ready to take over: a rolling restart may go on), 503 while starting or while a
standby cannot reach the database. Whether a daemon is active is `lifelong_daemon_active`.

One asyncio loop in one thread serves every connection, so a client that stalls costs a socket for at
most `request_timeout`, never a thread; past `max_connections` a new one gets 503 at once. The
exposition is computed in one worker thread at most once per `scrape_ttl` seconds however often it is
asked for, and the probes are answered on the loop without waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)
TEXT = "text/plain; charset=utf-8"


class ScrapeCache:
    """`compute` called at most once per `ttl` seconds; concurrent callers share one computation.

    A failure is logged once and remembered for as long as a success would be, so a broken collector
    costs no more than a working one; callers get None for it.
    """

    def __init__(self, compute: Callable[[], bytes], *, ttl: float, clock: Callable[[], float]) -> None:
        self.compute, self.ttl, self.clock = compute, ttl, clock
        self._lock = threading.Lock()
        self._until = float("-inf")
        self._body: bytes | None = None

    def __call__(self) -> bytes | None:
        with self._lock:
            if self.clock() >= self._until:
                try:
                    self._body = self.compute()
                except Exception:  # a scrape never takes the daemon down
                    log.exception("metrics scrape failed")
                    self._body = None
                self._until = self.clock() + self.ttl  # from the end: a slow collector still gets its rest
            return self._body


class HealthServer:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], healthy: Callable[[], bool],
                 ready: Callable[[], bool], standby: Callable[[], bool] = lambda: False, request_timeout: float = 10.0, max_connections: int = 256,
                 max_head_bytes: int = 8192, scrape_ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scrape = ScrapeCache(metrics, ttl=scrape_ttl, clock=clock)
        self.healthy, self.ready, self.standby = healthy, ready, standby
        self.request_timeout, self.max_connections = request_timeout, max_connections
        self.max_head_bytes = max_head_bytes
        # bound here, so a taken port fails the caller at once, as an OSError
        self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self.sock.getsockname()[1]
        self._open = 0  # connections being served; touched only on the loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-scrape")
        self._up = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="http", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        self._up.wait()
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._finish)
            self._thread.join(timeout=5)
        self.sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _finish(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        try:
            server = await asyncio.start_server(self._connection, sock=self.sock, limit=self.max_head_bytes)
        finally:
            self._up.set()
        async with server:
            await self._stop

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._open >= self.max_connections:
                await self._send(writer, 503, b"busy\n")  # without reading: the bound holds however fast they come
                return
            self._open += 1
            try:
                await self._request(reader, writer)
            finally:
                self._open -= 1
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the client went away or would not read its answer
        except Exception:
            log.exception("http connection failed")
        finally:
            writer.close()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.request_timeout)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            return  # half a request, or none in time: dropped without an answer
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n")
            return
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            await self._send(writer, 400, b"bad request\n")
            return
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            await self._send(writer, 405, b"", allow="GET, HEAD")
            return
        try:
            code, body, kind = await self._route(path)
        except Exception:
            log.exception("http request for %s failed", path.decode("latin-1"))
            code, body, kind = 500, b"internal error\n", TEXT
        await self._send(writer, code, body, kind, head_only=method == b"HEAD")

    async def _route(self, path: bytes) -> tuple[int, bytes, str]:
        if path == b"/metrics":
            scrape = asyncio.get_running_loop().run_in_executor(self._pool, self.scrape)
            try:
                body = await asyncio.wait_for(scrape, self.request_timeout)
            except asyncio.TimeoutError:
                return 503, b"metrics busy\n", TEXT
            return (200, body, CONTENT_TYPE_LATEST) if body is not None else (500, b"internal error\n", TEXT)
        if path == b"/healthz":
            ok = self.healthy()
            return (200, b"ok\n", TEXT) if ok else (503, b"main loop stalled\n", TEXT)
        if path == b"/readyz":
            ok, standby = self.ready(), self.standby()
            if standby:
                return (200, b"standby\n", TEXT) if ok else (503, b"standby, cannot reach the registry database\n", TEXT)
            return (200, b"ready\n", TEXT) if ok else (503, b"starting\n", TEXT)
        return 404, b"not found\n", TEXT

    async def _send(self, writer: asyncio.StreamWriter, code: int, body: bytes, kind: str = TEXT, *,
                    head_only: bool = False, allow: str | None = None) -> None:
        # no Server header: what runs here is nobody's business
        lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", f"Date: {formatdate(usegmt=True)}",
                 f"Content-Type: {kind}", f"Content-Length: {len(body)}", "Connection: close"]
        if allow is not None:
            lines.append(f"Allow: {allow}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body))
        await asyncio.wait_for(writer.drain(), self.request_timeout)
