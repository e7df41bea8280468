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

METADATA_SCHEMES = ("postgresql", "postgres")
ARTIFACT_SCHEMES = ("s3",)
_NEEDS = {"registry.metadata": "psycopg", "registry.artifacts": "boto3"}


def check_urls(metadata: str, artifacts: str) -> None:
    """Refuse a malformed URL, a password in one, or a remote backend without its extra (config time:
    nothing is contacted and nothing heavy imported)."""
    for key, url, schemes in (("registry.metadata", metadata, METADATA_SCHEMES),
                              ("registry.artifacts", artifacts, ARTIFACT_SCHEMES)):
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            raise ConfigError(key, f"expected \"\" or a {schemes[0]}:// URL, got {url!r}")
        if parts.password is not None:
            raise ConfigError(key, "holds a password; credentials come from the environment only (PGPASSWORD, "
                                   "~/.pgpass, AWS_SECRET_ACCESS_KEY), never from the config file")
        if key == "registry.artifacts":
            from registry.s3 import parse_url
            try:
                parse_url(url)
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from None
        if importlib.util.find_spec(_NEEDS[key]) is None:
            raise MissingExtra("remote", f"{key} = {url!r} needs {_NEEDS[key]}")


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
