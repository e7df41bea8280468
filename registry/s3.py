"""The S3 artifact store (`registry.artifacts = "s3://bucket/prefix"`): version files in any
S3-compatible object store, with a verified local cache laid out as the local store's (versions/).

Objects live at PREFIX/versions/vNNNN/<path>. Every one is written create-only (`If-None-Match: *`),
so nothing, not even a second daemon or a retried request, overwrites a version's bytes; the
manifest is written last, so a version is visible (`exists`) only once all its files are. Reads
download into a staging directory, check each file's sha256 against the manifest as it streams, and
rename the whole into the cache; the registry then checks the manifest against the sha256 in the
metadata before anything is promoted, rolled back to, exported, trained on or served.
A store that ignores the precondition would silently let a write replace a version: `probe` finds
out with a canary key and the daemon refuses such a store at start (exit 2).
Credentials and the endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION or AWS_PROFILE: whatever botocore reads), never from the config.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from registry import retry
from registry.abc import ArtifactStore
from registry.errors import IntegrityError, MissingExtra, UnsafeStore, UsageError
from registry.fsutil import remove_tree
from registry.local import LocalArtifacts
from registry.manifest import MANIFEST, sha256_file

_VERSION = re.compile(r"^v\d{4,}$")
MAX_OBJECT_BYTES = 5 * 1024**3  # one PUT; larger files would need a multipart upload
_CHUNK = 1 << 20


def parse_url(url: str) -> tuple[str, str]:
    """"s3://bucket/some/prefix" -> ("bucket", "some/prefix")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("an s3:// URL holds the bucket and prefix only; credentials and the endpoint come from"
                         " the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")
    return parts.netloc, parts.path.strip("/")


def make_client(*, timeout: float = 10.0, endpoint_url: str | None = None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise MissingExtra("remote", "registry.artifacts = \"s3://...\" needs boto3") from exc
    # retries are ours (registry/retry.py: counted, logged, with backoff); checksums only where the
    # API requires them, which every S3-compatible store understands
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout,
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", config=config, endpoint_url=endpoint_url)


def _status(exc: BaseException) -> int:
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


class S3Artifacts(ArtifactStore):
    def __init__(self, root: Path, url: str, *, client: Any = None, backoff: retry.Backoff | None = None) -> None:
        self.url = url
        self.bucket, prefix = parse_url(url)
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client if client is not None else make_client()
        self.backoff = backoff or retry.Backoff()
        self.cache = LocalArtifacts(root)  # root/versions/vNNNN: verified copies, whole or absent

    # -- calls --------------------------------------------------------------------------------------
    def _call(self, operation: str, method: str, **kwargs: Any) -> Any:
        return retry.call(self.url, operation, lambda: getattr(self.client, method)(Bucket=self.bucket, **kwargs),
                          self.backoff)

    def _key(self, version: str, rel: str = "") -> str:
        return f"{self.prefix}versions/{version}/{rel}"

    def _keys(self, version: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        token: dict[str, str] = {}
        while True:
            page = self._call(f"list {version}", "list_objects_v2", Prefix=self._key(version), **token)
            found += [(item["Key"], item["Size"]) for item in page.get("Contents", []) if not item["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _create(self, key: str, path: Path) -> None:
        """Write `path` to `key` only if no object is there; an equal object (a retried write) is fine."""
        size = path.stat().st_size
        if size > MAX_OBJECT_BYTES:
            raise UsageError(f"{path.name} is {size} bytes; the S3 store writes files of up to 5 GiB")

        def put() -> Any:
            with open(path, "rb") as body:
                return self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        try:
            retry.call(self.url, f"put {key}", put, self.backoff)
        except Exception as exc:
            if _status(exc) not in (409, 412):  # 409: a write to the key is in flight elsewhere
                raise
            if self._sha256(key) != sha256_file(path):
                raise IntegrityError(key.split("/versions/", 1)[-1].split("/", 1)[0], key,
                                     "already in the artifact store with other bytes; refusing to overwrite it") \
                    from exc

    def _sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self._call(f"get {key}", "get_object", Key=key)["Body"]
        for chunk in body.iter_chunks(_CHUNK):
            digest.update(chunk)
        return digest.hexdigest()

    # -- the interface ------------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        return self.cache.staging_dir()

    def clean_staging(self) -> int:
        return self.cache.clean_staging()

    def publish(self, version: str, staging: Path) -> None:
        files = json.loads((staging / MANIFEST).read_text())["files"]
        for rel in sorted(files):
            self._create(self._key(version, rel), staging / rel)
        self._create(self._key(version, MANIFEST), staging / MANIFEST)  # last: from here on the version exists
        self.cache.publish(version, staging)

    def local_path(self, version: str) -> Path:
        return self.cache.local_path(version)

    def fetch(self, version: str) -> Path:
        """The cached copy, downloaded first if absent (each file checked against the manifest)."""
        path = self.cache.local_path(version)
        if path.is_dir():
            return path
        tmp = self.cache.staging_dir()
        try:
            manifest_file = tmp / MANIFEST
            try:
                self._download(self._key(version, MANIFEST), manifest_file)
            except Exception as exc:
                if _status(exc) == 404:
                    raise IntegrityError(version, MANIFEST, "missing from the artifact store") from exc
                raise
            files = json.loads(manifest_file.read_text())["files"]
            for rel, expected in sorted(files.items()):
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise IntegrityError(version, rel, "a path outside the version in the manifest")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    sha = self._download(self._key(version, rel), target)
                except Exception as exc:
                    if _status(exc) == 404:
                        raise IntegrityError(version, rel, "missing from the artifact store") from exc
                    raise
                if sha != expected["sha256"]:
                    raise IntegrityError(version, rel, "sha256 of the stored object does not match the manifest")
            try:
                self.cache.publish(version, tmp)
            except OSError:
                if not path.is_dir():  # another process cached it first: theirs is as good
                    raise
        finally:
            if tmp.exists():
                remove_tree(tmp)
        return path

    def _download(self, key: str, target: Path) -> str:
        def get() -> str:
            digest = hashlib.sha256()
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with open(target, "wb") as handle:
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
            return digest.hexdigest()
        return retry.call(self.url, f"get {key}", get, self.backoff)

    def exists(self, version: str) -> bool:
        try:
            self._call(f"head {version}", "head_object", Key=self._key(version, MANIFEST))
            return True
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise

    def versions_present(self) -> set[str]:
        """Versions with any object in the store (a half-written or half-pruned one too) or in the cache.

        Listed object by object, not by common prefix: stores built on a file system (SeaweedFS) keep
        a deleted version's empty folders, which a delimited listing still reports."""
        found: set[str] = set()
        token: dict[str, str] = {}
        start = len(f"{self.prefix}versions/")
        while True:
            page = self._call("list versions", "list_objects_v2", Prefix=f"{self.prefix}versions/", **token)
            for item in page.get("Contents", []):
                name, _, rest = item["Key"][start:].partition("/")
                if rest and not rest.endswith("/") and _VERSION.match(name):
                    found.add(name)
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return found | self.cache.versions_present()

    def has_files(self, version: str) -> bool:
        return bool(self._keys(version)) or self.cache.has_files(version)

    def _delete_remote(self, version: str) -> None:
        # the manifest first: the version stops existing at once, whatever a crash leaves behind
        self._call(f"delete {version}", "delete_object", Key=self._key(version, MANIFEST))
        for key, _ in self._keys(version):
            self._call(f"delete {key}", "delete_object", Key=key)

    def discard(self, version: str) -> None:
        self._delete_remote(version)
        self.cache.discard(version)

    def prune(self, version: str) -> None:
        self._delete_remote(version)
        self.cache.prune(version)

    def clean_pruned(self) -> int:
        return self.cache.clean_pruned()

    def size(self, version: str) -> int:
        return sum(size for _, size in self._keys(version))

    # -- the start-up check -------------------------------------------------------------------------
    def probe(self) -> None:
        """Refuse a store that does not honour create-only writes: write a canary key twice."""
        key = f"{self.prefix}.lifelong-probe/{uuid.uuid4().hex}"
        try:
            try:
                self._call("probe", "put_object", Key=key, Body=b"first", IfNoneMatch="*")
            except Exception as exc:
                if _status(exc) in (400, 403, 501):
                    raise UnsafeStore(self.url, f"a create-only write (If-None-Match: *) was refused: {exc}") from exc
                raise
            try:
                self._call("probe", "put_object", Key=key, Body=b"second", IfNoneMatch="*")
            except Exception as exc:
                if _status(exc) == 412:
                    return
                raise
            raise UnsafeStore(self.url, "the store ignores If-None-Match: * (a second create-only write to a canary "
                                        "key succeeded), so a version's files could be overwritten; use a store that "
                                        "honours conditional writes (AWS S3, SeaweedFS, MinIO, Ceph RGW)")
        finally:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except Exception:
                pass

