"""A remote run's folder in the S3 artifact store: what the daemon and the training workers of a
`ray` or `kubernetes` executor exchange (standard library and boto3 only, so the daemon imports it).

    PREFIX/runs/batch-NNNNNN/
        inputs/spec.json        the TrainSpec, its paths relative ("./data/train.arrow")
        inputs/...              the rows (data/), the model to start from (base/), the champion's
                                state/ and predictions.json: whatever the spec names
        checkpoint.json         {"folder": "checkpoint-N"}: the last whole checkpoint (written last)
        checkpoint-N/...        rank 0's checkpoint files
        events.json             rank 0's progress events so far (a JSON list, rewritten as it grows)
        stop                    present: the daemon asks the run to checkpoint and stop
        outputs/out/...         the candidate's files, outputs/serving/..., outputs/results.json

Credentials and the endpoint come from the environment (AWS_*), as for the registry's store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RELATIVE = "./"  # a spec path starting with this lies in the run's folder


def run_url(artifacts: str, batch: int) -> str:
    """The run folder of `batch` under registry.artifacts ("s3://bucket/prefix")."""
    return f"{artifacts.rstrip('/')}/runs/batch-{batch:06d}"


class RunStore:
    def __init__(self, url: str, client: Any = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/"
        if client is None:
            from registry.s3 import make_client
            client = make_client(timeout=30.0)
        self.client = client

    def key(self, rel: str) -> str:
        return self.prefix + rel

    # -- single objects ----------------------------------------------------------------------------
    def put_bytes(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)

    def get_bytes(self, rel: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise

    def get_json(self, rel: str) -> Any:
        data = self.get_bytes(rel)
        return None if data is None else json.loads(data)

    def exists(self, rel: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
            return True
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise

    def delete(self, rel: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))

    # -- folders -------------------------------------------------------------------------------------
    def keys(self, rel: str = "") -> list[str]:
        """Every object under `rel` (a folder: ends with "/", or "" for the whole run), relative to the run."""
        found, token = [], {}
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(rel), **token)
            found += [item["Key"][len(self.prefix):] for item in page.get("Contents", [])
                      if not item["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def upload(self, local: Path, rel: str) -> None:
        """A file, or a folder's files, to `rel`."""
        if local.is_file():
            self.client.upload_file(str(local), self.bucket, self.key(rel))
            return
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.bucket, self.key(f"{rel.rstrip('/')}/{path.relative_to(local)}"))

    def download(self, rel: str, local: Path) -> bool:
        """The folder `rel` ("name/") or the file `rel` into `local`; False when nothing is there."""
        if not rel.endswith("/"):
            data = self.get_bytes(rel)
            if data is None:
                return False
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            return True
        keys = self.keys(rel)
        for key in keys:
            target = local / key[len(rel):]
            if ".." in Path(key[len(rel):]).parts:
                raise ValueError(f"{key}: a path outside the run folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self.key(key), str(target))
        return bool(keys)

    def remove(self, rel: str = "") -> None:
        """Every object under `rel` ("" = the whole run folder)."""
        for key in self.keys(rel):
            self.delete(key)

    # -- checkpoints: a new folder each time, then the pointer, then the old folder goes --------------
    def save_checkpoint(self, folder: Path) -> None:
        previous = self.get_json("checkpoint.json")
        number = int(previous["folder"].rsplit("-", 1)[1]) + 1 if previous else 1
        name = f"checkpoint-{number}"
        self.upload(folder, name)
        self.put_bytes("checkpoint.json", json.dumps({"folder": name}).encode())
        if previous:
            self.remove(previous["folder"] + "/")

    def load_checkpoint(self, folder: Path) -> bool:
        pointer = self.get_json("checkpoint.json")
        return bool(pointer) and self.download(pointer["folder"] + "/", folder)


def _status(exc: BaseException) -> int:
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or (
        404 if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound") else 0)
