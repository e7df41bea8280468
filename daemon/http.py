"""The read-only HTTP endpoint: /metrics, /healthz (main-loop heartbeat), /readyz. GET only."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], healthy: Callable[[], bool],
                 ready: Callable[[], bool]) -> None:
        class Handler(BaseHTTPRequestHandler):
            server_version = "lifelong"

            def do_GET(self) -> None:  # noqa: N802 - the http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        self._send(200, metrics(), CONTENT_TYPE_LATEST)
                    except Exception as exc:  # a scrape never takes the daemon down
                        log.exception("metrics scrape failed")
                        self._send(500, f"scrape failed: {exc}\n".encode())
                elif path == "/healthz":
                    ok = healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n")
                elif path == "/readyz":
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"starting\n")
                else:
                    self._send(404, b"not found\n")

            def _refuse(self) -> None:
                self.send_response(405)
                self.send_header("Allow", "GET")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def _send(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
