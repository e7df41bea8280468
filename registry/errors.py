"""Every named error of lifelong, in one module.

It lives in `registry`, the bottom floor, because every other package may import from there.
Each error subclasses the built-in it resembles and carries its data as attributes; `exit_code`
is what the CLI exits with (1 runtime, 2 usage/config, 3 lock/conflict, 4 no such version; the
table is in docs/reference.md, "Exit codes").
"""

from __future__ import annotations


class LifelongError(Exception):
    """Base of every error lifelong raises on purpose."""

    exit_code = 1


class ConfigError(LifelongError, ValueError):
    """A config key, type or value is wrong. `key` is the dotted key (or env var) at fault."""

    exit_code = 2

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")


class UsageError(LifelongError, ValueError):
    """The command was asked for something it cannot do as asked."""

    exit_code = 2


class HomeNotFound(LifelongError, FileNotFoundError):
    """The home directory does not exist or was never initialised."""

    exit_code = 2

    def __init__(self, home: str) -> None:
        self.home = home
        super().__init__(f"{home} is not a lifelong home (no lifelong.toml); run `lifelong init --home {home}`")


class LockHeld(LifelongError, BlockingIOError):
    """Another process holds a lock on the home. `pid` is the holder, when known."""

    exit_code = 3

    def __init__(self, path: str, pid: int | None, what: str = "lifelong run") -> None:
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{what} is already running on this home ({holder} holds {path})")


class StoreError(LifelongError, RuntimeError):
    """The row store is unusable (corrupt, wrong schema version)."""


class FileRejected(LifelongError, ValueError):
    """An inbox file cannot be ingested. `reason` is one of REASONS, the file reason codes users see in
    NAME.error.json (docs/reference.md, "File reason codes")."""

    REASONS = ("unsupported_format", "unreadable", "empty", "missing_columns", "invalid_rows",
               "too_large", "not_regular_file", "internal_error")

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class Stopping(LifelongError):
    """Long work (ingesting a large file) was asked to stop: the daemon is shutting down. What was
    half done is rolled back and taken again at the next start."""


class VersionNotFound(LifelongError, LookupError):
    exit_code = 4

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"no such version: {version}")


class VersionPruned(VersionNotFound):
    """The version's weights were dropped by retention (`registry.keep_versions`); its record stays."""

    def __init__(self, version: str, at: str | None = None) -> None:
        self.version = version
        self.at = at
        when = f" at {at}" if at else ""
        LookupError.__init__(self, f"{version}'s weights were pruned{when} by retention (registry.keep_versions); "
                             "its metadata, scores and audit are kept, but it cannot be served, promoted, rolled "
                             "back to or exported")


class IntegrityError(LifelongError, RuntimeError):
    """A version's files do not match its manifest. `file` names the first file at fault."""

    def __init__(self, version: str, file: str, problem: str) -> None:
        self.version = version
        self.file = file
        self.problem = problem
        super().__init__(f"version {version} failed its integrity check: {file}: {problem}")


class Conflict(LifelongError, RuntimeError):
    """The registry's state does not allow the operation (e.g. nothing to roll back to)."""

    exit_code = 3


class MissingExtra(LifelongError, ImportError):
    """The config needs an optional extra that is not installed. `extra` names it (`lifelong[remote]`)."""

    exit_code = 2

    def __init__(self, extra: str, needed_by: str) -> None:
        self.extra = extra
        self.needed_by = needed_by
        super().__init__(f"{needed_by}: install the extra with `pip install 'lifelong[{extra}]'`")


class UnsafeStore(LifelongError, RuntimeError):
    """The artifact store does not keep a guarantee the registry relies on (create-only writes with
    `If-None-Match: *`); refused at start rather than trusted with versions."""

    exit_code = 2

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"registry.artifacts = {url!r} is refused: {problem}")


class MetadataUnavailable(LifelongError, ConnectionError):
    """The metadata database cannot be reached (or the connection died mid-transaction: nothing of it
    was committed). The operation may be retried."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"registry metadata at {url} is unavailable: {problem}")


class ArtifactStoreUnavailable(LifelongError, ConnectionError):
    """The object store did not answer after every retry. `attempts` is how many were made."""

    def __init__(self, url: str, operation: str, attempts: int, problem: str) -> None:
        self.url = url
        self.operation = operation
        self.attempts = attempts
        self.problem = problem
        super().__init__(f"artifact store {url} unavailable: {operation} failed {attempts} times: {problem}")
