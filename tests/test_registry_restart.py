"""The daemon's update cycle on the remote pair (real PostgreSQL and SeaweedFS on loopback) when the
database restarts inside a registry write: the update fails cleanly, nothing half-written becomes
visible to any host, and the retry decides the batch; and the object store's failures reach the
daemon's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.home import open_registry
from daemon.ingest.store import Store
from daemon.service.metrics import Metrics
from daemon.update.cycle import UpdateCycle
from daemon.update.gate import GateResult
from registry import retry
from registry.backends import open_backends
from registry.errors import ArtifactStoreUnavailable, MetadataUnavailable
from registry.registry import Registry
from registry.s3 import S3Artifacts, make_client
from tests.conftest import open_home, stage_full, write_config
from tests.servers import free_port, postgres_server, seaweedfs_server  # noqa: F401 (fixtures)
from tests.test_cycle import configure, drop
from tests.test_learning import toy


@pytest.fixture
def remote_home(home_root: Path, tiny_model: Path, postgres_server, seaweedfs_server) -> Path:  # noqa: F811
    configure(home_root, tiny_model)
    # what is learned does not matter here, only that the batch is decided once: a short run
    write_config(home_root, registry={"metadata": postgres_server.new_database(), "artifacts": seaweedfs_server.url()},
                 strategy={"epochs": 1, "min_steps": 0})
    return home_root


def other_host(root: Path, home_root: Path) -> Registry:
    """The same registry opened from another home, as a second daemon or a serving host would."""
    config = open_home(home_root).config.registry
    metadata, artifacts = open_backends(root, config.metadata, config.artifacts)
    return Registry(root, metadata=metadata, artifacts=artifacts)


def test_a_database_restart_inside_the_version_write_fails_the_update_cleanly_and_the_retry_decides(
        remote_home: Path, tmp_path: Path, postgres_server) -> None:  # noqa: F811
    drop(remote_home, "b1.jsonl", toy(["sport", "food"], 40, seed=1))
    home = open_home(remote_home)
    with open_registry(home, recover=False) as registry:  # as the daemon opens it for each cycle
        publish = registry.artifacts.publish

        def restart_after_upload(version: str, staging: Path) -> None:
            publish(version, staging)  # every file of the version is in the store; its record is not committed
            postgres_server.stop()
            postgres_server.start()
        registry.artifacts.publish = restart_after_upload  # type: ignore[method-assign]
        first = UpdateCycle(home, registry).run()
    assert (first.batch, first.decision, first.version) == (1, "failed", None), first
    assert first.summary["error"] == "MetadataUnavailable" and not first.gave_up
    with other_host(tmp_path / "b", remote_home) as seen:  # nothing of the cut write, from anywhere
        assert seen.versions() == [] and seen.champion() is None and seen.meta.decisions() == []
    with Store(home.store_path) as store:
        assert store.undecided_batch() == 1 and store.failed_attempts(1) == 1

    with open_registry(home, recover=False) as registry:  # the retry: the leftover files go, the batch is decided
        second = UpdateCycle(home, registry).run()
    assert (second.batch, second.version) == (1, "v0001") and second.decision in ("promoted", "rejected"), second
    with other_host(tmp_path / "c", remote_home) as seen:
        assert [r.version for r in seen.versions()] == ["v0001"]
        assert seen.champion() == ("v0001" if second.decision == "promoted" else None)
        seen.verify("v0001", full=True)  # the stored bytes are the retry's, whole
        assert seen.artifacts.versions_present() == {"v0001"}
        assert [(d.version, d.decision) for d in seen.meta.decisions()] == [("v0001", second.decision)]
    with Store(home.store_path) as store:
        assert store.undecided_batch() is None
        assert [(u["batch"], u["decision"]) for u in reversed(store.updates())] == [(1, "failed"), (1, second.decision)]


def test_a_database_restart_inside_the_promotion_leaves_neither_the_decision_nor_the_switch(
        remote_home: Path, tiny_model: Path, tmp_path: Path, postgres_server) -> None:  # noqa: F811
    home = open_home(remote_home)
    with open_registry(home) as registry:
        for marker in "ab":
            registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="replay")
        registry.promote("v0001", actor="daemon")
        append = registry.meta.append_audit

        def restart_then_append(entry):  # type: ignore[no-untyped-def]
            postgres_server.stop()  # the decision row is written, the transaction still open
            postgres_server.start()
            append(entry)
        registry.meta.append_audit = restart_then_append  # type: ignore[method-assign]
        with pytest.raises(MetadataUnavailable):
            UpdateCycle(home, registry).conclude("v0002", GateResult(True, ["better"]), {"m": 1})
        registry.meta.append_audit = append  # type: ignore[method-assign]
        assert registry.champion() == "v0001" and registry.decision("v0002") is None
    with other_host(tmp_path / "b", remote_home) as seen:
        assert seen.champion() == "v0001" and seen.decision("v0002") is None  # no "promoted" left unmade
        assert UpdateCycle(home, seen).conclude("v0002", GateResult(True, ["better"]), {"m": 1}) == "promoted"
        assert seen.champion() == "v0002" and seen.decision_record("v0002").metrics == {"m": 1}


def test_an_object_store_down_for_good_is_counted_in_the_daemons_metrics(home_root: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import S3_KEY, S3_SECRET

    for name, value in (("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    store = S3Artifacts(tmp_path / "r", "s3://lifelong/x",
                        client=make_client(endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=1),
                        backoff=retry.Backoff(attempts=3, base_seconds=0.01, max_seconds=0.02))
    metrics = Metrics(open_home(home_root))

    def counted() -> tuple[float, float]:
        text = metrics.exposition().decode()
        return tuple(float(next(line.split()[1] for line in text.splitlines()  # type: ignore[return-value]
                                if line.startswith(f"lifelong_artifact_store_{name}_total ")))
                     for name in ("retries", "failures"))
    before = counted()
    with pytest.raises(ArtifactStoreUnavailable):
        store.exists("v0001")
    assert counted() == (before[0] + 2, before[1] + 1)
