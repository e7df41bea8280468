"""Which metadata backend and artifact store a registry uses, from the config's two URLs.

`registry.metadata`: "" (SQLite in the home) or "postgresql://user@host:port/db".
`registry.artifacts`: "" (files in the home) or "s3://bucket/prefix".
The remote ones need the `lifelong[remote]` extra; their modules (and psycopg, boto3) are imported
only when named, so a home on the defaults never loads them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

from registry.abc import ArtifactStore, MetadataBackend
from registry.errors import ConfigError, MissingExtra
from registry.fsutil import atomic_write

# in the root of a registry opened on remote backends: opening it on the defaults is refused
REMOTE_MARKER = "REMOTE"
METADATA_SCHEMES = ("postgresql", "postgres")
ARTIFACT_SCHEMES = ("s3",)
_NEEDS = {"registry.metadata": "psycopg", "registry.artifacts": "boto3"}


def check_url(key: str, url: str) -> None:
    """Refuse (ValueError) a malformed URL or one holding a password, and (MissingExtra) a remote backend
    without its extra; `key` is "registry.metadata" or "registry.artifacts". Config time: nothing is
    contacted and nothing heavy imported."""
    if not url:
        return
    schemes = METADATA_SCHEMES if key == "registry.metadata" else ARTIFACT_SCHEMES
    parts = urlsplit(url)  # the URL is never echoed: a wrong one may hold a password
    if parts.password is not None:
        raise ValueError("holds a password; credentials come from the environment only (PGPASSWORD, ~/.pgpass, "
                         "AWS_SECRET_ACCESS_KEY), never from the config file")
    if parts.scheme not in schemes:
        raise ValueError(f"expected \"\" or a {schemes[0]}:// URL, got a {parts.scheme or 'schemeless'} one")
    if key == "registry.artifacts":
        from registry.s3 import parse_url
        parse_url(url)
    if not _installed(_NEEDS[key]):
        raise MissingExtra("remote", f"{key} = \"{parts.scheme}://...\" needs {_NEEDS[key]}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules (None) counts as missing
        return False


def check_urls(metadata: str, artifacts: str) -> None:
    """check_url for both keys, raising ConfigError naming the key at fault."""
    for key, url in (("registry.metadata", metadata), ("registry.artifacts", artifacts)):
        try:
            check_url(key, url)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None


def open_backends(root: Path, metadata: str = "", artifacts: str = "", *,
                  probe: bool = False) -> tuple[MetadataBackend | None, ArtifactStore | None]:
    """The backends the URLs name, or None for each default. `probe` checks that the object store
    honours create-only writes (the daemon does at start; UnsafeStore otherwise)."""
    check_urls(metadata, artifacts)
    meta: MetadataBackend | None = None
    store: ArtifactStore | None = None
    if metadata:
        from registry.postgres import PostgresMetadata
        meta = PostgresMetadata(metadata)
    if artifacts:
        from registry.s3 import S3Artifacts
        try:
            store = S3Artifacts(root, artifacts)
            if probe:
                store.probe()
        except BaseException:
            if meta is not None:
                meta.close()
            raise
    return meta, store


def mark_remote(root: Path, *, metadata: str = "", artifacts: str = "") -> None:
    """Leave REMOTE in a registry root whose metadata or files live remotely (once), so that opening it
    on the local defaults is refused."""
    remote = [f"{name} {_without_password(url)}" for name, url in (("metadata", metadata), ("artifacts", artifacts))
              if url]
    marker = root / REMOTE_MARKER
    if remote and not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, ", ".join(remote) + "\n")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rsplit('@', 1)[-1]}").geturl()
