"""Retries with exponential backoff for calls to a remote store, and the counts the daemon exports.

A transient failure (the connection refused or cut, a timeout, a 5xx or throttling answer) is tried
again after 0.2 s, 0.4 s, 0.8 s ... (capped, with jitter) until `attempts` calls were made; then
ArtifactStoreUnavailable. Anything else (403, 404, a failed precondition) is the caller's to handle.
`COUNTS` is read at scrape time by the daemon's metrics (lifelong_artifact_store_retries_total,
lifelong_artifact_store_failures_total): what this process saw, like any process-level counter.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from registry.errors import ArtifactStoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
                    "RequestTimeout", "RequestTimeTooSkewed", "503", "500", "502", "504"}


class _Counts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.failures = 0

    def add(self, *, retries: int = 0, failures: int = 0) -> None:
        with self._lock:
            self.retries += retries
            self.failures += failures


COUNTS = _Counts()


@dataclass(frozen=True, kw_only=True)
class Backoff:
    attempts: int = 8  # 0.2 + 0.4 + ... + 5 + 5: about 20 s of waiting before giving up
    base_seconds: float = 0.2
    max_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_seconds < 0 or self.max_seconds < self.base_seconds:
            raise ValueError("Backoff needs attempts >= 1 and 0 <= base_seconds <= max_seconds")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failed call (1-based), with up to 25% jitter."""
        return min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)


def transient(exc: BaseException) -> bool:
    """Whether a botocore exception is worth another try."""
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or str(exc.response.get("Error", {}).get("Code")) in _TRANSIENT_CODES
    return False


def call(url: str, operation: str, fn: Callable[[], T], backoff: Backoff,
         sleep: Callable[[float], Any] = time.sleep) -> T:
    """`fn()`, tried again on transient failures as `backoff` says."""
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt >= backoff.attempts:
                COUNTS.add(failures=1)
                raise ArtifactStoreUnavailable(url, operation, attempt, str(exc)) from exc
            wait = backoff.delay(attempt)
            COUNTS.add(retries=1)
            log.warning("artifact store: %s failed (%s); attempt %d of %d in %.1fs", operation, exc, attempt + 1,
                        backoff.attempts, wait, extra={"operation": operation, "attempt": attempt})
            sleep(wait)
            attempt += 1
