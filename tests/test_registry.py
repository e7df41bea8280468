"""The registry contract, run against every backend: versions, integrity, champion alias, rollback."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

import pytest

from registry.errors import Conflict, IntegrityError, UsageError, VersionNotFound, VersionPruned
from registry.backends import open_backends
from registry.registry import Registry
from tests.conftest import stage_full
from tests.servers import BACKENDS, backend_urls, postgres_server, seaweedfs_server  # noqa: F401 (fixtures)


@pytest.fixture(params=BACKENDS)
def make_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Registry]:
    """Opens (and reopens) one registry of the parameter's pair: SQLite+local files, PostgreSQL+local
    files, PostgreSQL+S3, the servers real and on loopback."""
    urls = backend_urls(request, request.param)
    opened: list[Registry] = []

    def make(**kwargs: object) -> Registry:
        root = tmp_path / "registry"
        root.mkdir(exist_ok=True)
        metadata, artifacts = open_backends(root, *urls)
        registry = Registry(root, metadata=metadata, artifacts=artifacts, **kwargs)  # type: ignore[arg-type]
        opened.append(registry)
        return registry

    yield make
    for registry in opened:
        registry.close()


def writable(path: Path) -> None:
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)


def test_versions_are_numbered_immutable_and_have_a_manifest(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    v1 = registry.create_version(stage_full(registry, tiny_model, "one"), parent=None, strategy="finetune",
                                 info={"data": {"experience": 1, "train_rows": 10, "eval_rows": 2, "files": ["a.jsonl"]},
                                       "libraries": {"torch": "x"}})
    v2 = registry.create_version(stage_full(registry, tiny_model, "two"), parent="v0001", strategy="replay")
    assert (v1.version, v2.version, v2.parent) == ("v0001", "v0002", "v0001")
    root = registry.artifacts.local_path("v0001")
    files = json.loads((root / "manifest.json").read_text())["files"]
    assert {"model/model.safetensors", "model/config.json", "state/marker.txt", "version.json"} <= set(files)
    assert all(len(entry["sha256"]) == 64 for entry in files.values())
    assert not os.access(root / "model" / "model.safetensors", os.W_OK) or os.geteuid() == 0
    assert stat.S_IMODE(os.stat(root / "model" / "model.safetensors").st_mode) == 0o444
    lineage = json.loads((root / "version.json").read_text())
    assert lineage["data"]["files"] == ["a.jsonl"] and lineage["parent"] is None
    assert registry.get("v0002").info["libraries"]["transformers"]  # recorded without importing it
    assert v1.info["libraries"] == {"torch": "x"}  # what the caller states wins
    assert [r.version for r in registry.versions()] == ["v0001", "v0002"]
    assert not list(registry.model_dir("v0001").glob("*.bin"))  # safetensors only
    with pytest.raises(VersionNotFound):
        registry.get("v0099")
    with pytest.raises(UsageError):
        registry.create_version(registry.new_staging(), parent=None, strategy="finetune")


def test_champion_link_loads_with_plain_from_pretrained(make_registry, tiny_model: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    registry = make_registry()
    registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="finetune")
    assert registry.champion() is None and not os.path.lexists(registry.link)
    entry = registry.promote("v0001", actor="daemon", reason="first")
    assert (entry.from_, entry.to, entry.actor, entry.action) == (None, "v0001", "daemon", "promote")
    assert registry.link.is_symlink() and not os.path.isabs(os.readlink(registry.link))
    model = AutoModelForSequenceClassification.from_pretrained(registry.link)
    AutoTokenizer.from_pretrained(registry.link)
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_lora_version_stores_only_the_adapter_and_materialises_merged_weights(make_registry, tiny_model: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from daemon.update.launcher import spawn_materializer
    from tests.tiny import tiny_lora_version

    registry = make_registry(materializer=spawn_materializer)
    registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="finetune")
    staging = tiny_lora_version(registry.new_staging(), tiny_model, ["neg", "pos", "neu"])
    record = registry.create_version(staging, parent="v0001", strategy="lora")
    assert record.kind == "lora"
    stored = registry.artifacts.local_path("v0002")
    assert not list(stored.rglob("model.safetensors"))  # no second copy of the base weights
    assert registry.size("v0002") < registry.size("v0001")

    registry.promote("v0002", actor="daemon")
    merged = AutoModelForSequenceClassification.from_pretrained(registry.link)  # no peft involved
    assert merged.config.id2label == {0: "neg", 1: "pos", 2: "neu"}
    # the merged weights give the same logits as base + adapter
    tokenizer = AutoTokenizer.from_pretrained(registry.link)
    batch = tokenizer(["a fine day", "dreadful"], return_tensors="pt", padding=True)
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, config=AutoConfig.from_pretrained(stored / "model-config"), ignore_mismatched_sizes=True)
    peft_model = PeftModel.from_pretrained(base, stored / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**batch).logits, peft_model(**batch).logits, atol=1e-5)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "extra", "manifest"])
def test_a_tampered_version_is_refused_naming_the_file(make_registry, tiny_model: Path, damage: str) -> None:
    registry = make_registry()
    for marker in ("a", "b"):
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="finetune")
    registry.promote("v0001", actor="cli")
    registry.verify("v0002", full=True)  # verified once: later checks must still see the damage
    root = registry.artifacts.local_path("v0002")
    target = root / "model" / "model.safetensors"
    writable(target)
    expected_file = "model/model.safetensors"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete":
        target.unlink()
    elif damage == "extra":
        (root / "model" / "pytorch_model.bin").write_bytes(b"pickle!")
        expected_file = "model/pytorch_model.bin"
    else:
        writable(root / "manifest.json")
        (root / "manifest.json").write_text((root / "manifest.json").read_text().replace('"size": ', '"size":  '))
        expected_file = "manifest.json"
    with pytest.raises(IntegrityError) as info:
        registry.promote("v0002", actor="cli")
    assert info.value.file == expected_file and expected_file in str(info.value)
    assert registry.champion() == "v0001"
    assert os.readlink(registry.link).endswith("v0001/model")
    with pytest.raises(IntegrityError):
        registry.export("v0002", registry.root.parent / "out")


def test_rollback_marks_and_never_auto_promotes_again(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    for marker in "abcd":
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="finetune")
    with pytest.raises(Conflict):
        registry.rollback(actor="cli")
    registry.promote("v0001", actor="daemon")
    with pytest.raises(Conflict, match="first champion"):
        registry.rollback(actor="cli")
    registry.promote("v0002", actor="daemon")
    registry.promote("v0003", actor="daemon")
    entry = registry.rollback(actor="cli", reason="bad predictions")
    assert (entry.from_, entry.to, entry.reason) == ("v0003", "v0002", "bad predictions")
    assert registry.decision("v0003") == "rolled_back"
    with pytest.raises(Conflict, match="rolled back"):
        registry.promote("v0003", actor="daemon")  # never automatically again
    assert registry.rollback(actor="cli").to == "v0001"  # skips the rolled-back v0003
    assert registry.rolled_back() == {"v0002", "v0003"}
    registry.promote("v0003", actor="cli", manual=True, reason="fixed upstream")  # an operator may
    assert registry.champion() == "v0003"
    assert registry.rollback(to="v0004", actor="cli", pin=True).to == "v0004"
    assert registry.pinned()
    registry.unpin(actor="cli")
    assert not registry.pinned()
    audit = registry.audit()
    assert [e.action for e in audit[:3]] == ["unpin", "pin", "rollback"]
    assert [e.action for e in registry.audit("v0002")] == ["rollback", "rollback", "promote", "promote"]
    assert all(set(e.as_dict()) == {"at", "actor", "action", "from", "to", "reason"} for e in audit)


def test_export_writes_a_self_contained_model(make_registry, tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    registry = make_registry()
    registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="finetune")
    out = registry.export("v0001", tmp_path / "exported")
    assert not (out / "manifest.json").exists()
    AutoModelForSequenceClassification.from_pretrained(out)
    with pytest.raises(UsageError):
        registry.export("v0001", tmp_path / "exported")


def test_hook_runs_after_every_switch_and_never_undoes_it(make_registry, tiny_model: Path, tmp_path: Path) -> None:
    from daemon.service.hooks import champion_hook

    log = tmp_path / "hook.log"
    hook = champion_hook(f'echo "$LIFELONG_VERSION $LIFELONG_MODEL_DIR" >> {log}; exit 3')
    registry = make_registry(on_switch=hook)
    for marker in "ab":
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="finetune")
    registry.promote("v0001", actor="daemon")
    registry.promote("v0002", actor="daemon")
    registry.rollback(actor="cli")
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["v0001", "v0002", "v0001"]
    assert log.read_text().split()[1] == str(registry.link.resolve())
    assert registry.champion() == "v0001"  # the failing hook changed nothing
    slow = champion_hook("sleep 5", timeout=0.5)
    registry.on_switch = slow
    registry.promote("v0002", actor="cli", manual=True)
    assert registry.champion() == "v0002"


def test_open_cleans_leftovers_and_repairs_the_link(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    for marker in "ab":
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="finetune")
    registry.promote("v0001", actor="daemon")
    registry.promote("v0002", actor="daemon")
    # a crash after the audit entry but before the link moved; a half-written staging dir; a
    # version whose files were published but never recorded
    os.replace(registry.root / "champion", registry.root / "old")
    os.symlink("versions/v0001/model", registry.root / "champion")
    stage_full(registry, tiny_model)
    orphan = registry.artifacts.local_path("v0003")
    orphan.mkdir()
    (orphan / "junk").write_text("x")
    registry.close()
    reopened = make_registry()
    assert os.readlink(reopened.link) == "versions/v0002/model"
    assert not orphan.exists()
    assert list((reopened.root / ".staging").iterdir()) == []
    assert [r.version for r in reopened.versions()] == ["v0001", "v0002"]
    assert reopened.create_version(stage_full(reopened, tiny_model, "c"), parent=None, strategy="x").version == "v0003"


def test_a_write_whose_record_was_never_committed_does_not_block_the_next(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    registry.create_version(stage_full(registry, tiny_model, "a"), parent=None, strategy="finetune")
    add_version = registry.meta.add_version

    def lost(record) -> None:  # type: ignore[no-untyped-def]
        raise ConnectionError("the database went away before the record was committed")
    registry.meta.add_version = lost  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        registry.create_version(stage_full(registry, tiny_model, "b"), parent=None, strategy="finetune")
    registry.meta.add_version = add_version  # type: ignore[method-assign]
    assert [r.version for r in registry.versions()] == ["v0001"] and registry.artifacts.has_files("v0002")
    # the same registry, not reopened (a daemon's next update): the leftover goes and v0002 is the new one
    record = registry.create_version(stage_full(registry, tiny_model, "c"), parent=None, strategy="finetune")
    assert record.version == "v0002"
    path = registry.verify("v0002", full=True)
    assert (path / "state" / "marker.txt").read_text() == "c"
    assert registry.artifacts.versions_present() == {"v0001", "v0002"}


def test_a_correct_link_is_left_alone_when_the_registry_is_opened_by_a_relative_path(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with Registry(tmp_path / "registry") as registry:
        registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="finetune")
        registry.promote("v0001", actor="daemon")
    stamp = os.lstat(tmp_path / "registry" / "champion").st_mtime_ns
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"), Registry(Path("registry")) as relative:
        assert relative.champion() == "v0001"
    assert "repaired" not in caplog.text  # it once compared a resolved link with a relative path
    assert os.lstat(tmp_path / "registry" / "champion").st_mtime_ns == stamp


def promote_history(registry: Registry, tiny_model: Path) -> None:
    """v0001..v0003 promoted in turn, v0004 and v0005 rejected, v0006 held: the champion is v0003."""
    for marker in "abcdef":
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="replay")
    for version in ("v0001", "v0002", "v0003"):
        registry.record_decision(version, "promoted")
        registry.promote(version, actor="daemon")
    for version, decision in (("v0004", "rejected"), ("v0005", "rejected"), ("v0006", "held")):
        registry.record_decision(version, decision, gate={"passed": decision == "held", "reasons": ["r"]})


def test_metadata_records_pruned_versions(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    for marker in "ab":
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="replay")
    assert registry.meta.pruned() == {}
    with registry.meta.transaction():
        registry.meta.mark_pruned("v0001", "2026-01-01T00:00:00.000Z")
        registry.meta.mark_pruned("v0001", "2026-02-02T00:00:00.000Z")  # the first record stands
    assert registry.meta.pruned() == {"v0001": "2026-01-01T00:00:00.000Z"}
    assert registry.meta.file_stamps("v0001") == {} and registry.meta.file_stamps("v0002")
    registry.artifacts.prune("v0001")
    registry.artifacts.prune("v0001")  # idempotent: a retry after a crash
    assert not registry.artifacts.exists("v0001") and registry.artifacts.versions_present() == {"v0002"}
    registry.close()
    reopened = make_registry()
    assert reopened.pruned() == {"v0001": "2026-01-01T00:00:00.000Z"}
    assert [r.version for r in reopened.versions()] == ["v0001", "v0002"]  # the record stays


def test_gc_keeps_the_champion_its_rollback_history_and_the_newest(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    promote_history(registry, tiny_model)
    before = {r.version: registry.size(r.version) for r in registry.versions()}
    dry = registry.gc(3, dry_run=True)
    assert (dry.dry_run, dry.pruned, dry.kept) == (True, ["v0004", "v0005"], ["v0001", "v0002", "v0003", "v0006"])
    assert dry.bytes_freed == {"v0004": before["v0004"], "v0005": before["v0005"]}
    assert registry.pruned() == {} and registry.artifacts.versions_present() == set(before)  # nothing moved
    report = registry.gc(3)
    assert report.pruned == ["v0004", "v0005"] and set(registry.pruned()) == {"v0004", "v0005"}
    assert registry.artifacts.versions_present() == {"v0001", "v0002", "v0003", "v0006"}
    for version in report.kept:
        registry.verify(version, full=True)
    # what stays of a pruned version: its record, decision and gate; its files are gone
    assert registry.get("v0004").strategy == "replay" and registry.decision("v0004") == "rejected"
    with pytest.raises(VersionPruned) as info:
        registry.verify("v0004")
    assert isinstance(info.value, VersionNotFound) and info.value.version == "v0004"
    assert "pruned" in str(info.value) and "keep_versions" in str(info.value)
    for attempt in (lambda: registry.promote("v0004", actor="cli", manual=True),
                    lambda: registry.rollback(to="v0005", actor="cli"),
                    lambda: registry.export("v0004", registry.root.parent / "out"),
                    lambda: registry.model_dir("v0005")):
        with pytest.raises(VersionPruned):
            attempt()
    assert registry.champion() == "v0003"
    again = registry.gc(3)
    assert again.pruned == [] and again.pruned_before == ["v0004", "v0005"]
    # keep 1: only the champion, and the newest version (the candidate an update is deciding)
    assert registry.gc(1).pruned == ["v0001", "v0002"]
    assert registry.artifacts.versions_present() == {"v0003", "v0006"}


def test_rollback_walks_the_kept_history_and_names_pruned_champions(make_registry, tiny_model: Path) -> None:
    registry = make_registry()
    promote_history(registry, tiny_model)
    assert registry.gc(2).pruned == ["v0001", "v0004", "v0005"]  # v0002 is the rollback target within the bound
    assert registry.rollback(actor="cli").to == "v0002"
    with pytest.raises(VersionPruned) as info:  # v0001, the champion before, was beyond the bound
        registry.rollback(actor="cli")
    assert info.value.version == "v0001" and registry.champion() == "v0002"
    assert registry.decision("v0001") == "promoted" and registry.audit("v0001")  # its history stays


def test_automatic_rollback_skips_a_pruned_champion_beyond_the_bound(make_registry, tiny_model: Path) -> None:
    from tests.test_registry_crash import copy_materializer, fake_version

    registry = make_registry(materializer=copy_materializer)
    for marker in "ab":
        registry.create_version(stage_full(registry, tiny_model, marker), parent=None, strategy="replay")
    registry.create_version(fake_version(registry, "c", lora=True), parent="v0001", strategy="lora")
    for version in ("v0001", "v0002", "v0003"):
        registry.promote(version, actor="daemon")
    # keep 1: the champion v0003 and v0001, the weights it adapts; v0002, the champion before, goes
    assert registry.gc(1).pruned == ["v0002"]
    assert registry.rollback(actor="cli").to == "v0001"


def test_gc_keeps_the_weights_a_kept_lora_version_adapts(make_registry, tiny_model: Path) -> None:
    from tests.test_registry_crash import copy_materializer, fake_version

    registry = make_registry(materializer=copy_materializer)
    registry.create_version(stage_full(registry, tiny_model, "a"), parent=None, strategy="lora")
    for parent in ("v0001", "v0002", "v0003"):
        registry.create_version(fake_version(registry, parent, lora=True), parent=parent, strategy="lora")
        registry.promote(f"v{int(parent[1:]) + 1:04d}", actor="daemon")
    registry.create_version(stage_full(registry, tiny_model, "b"), parent=None, strategy="replay")  # rejected
    registry.create_version(stage_full(registry, tiny_model, "c"), parent=None, strategy="replay")  # newest
    assert registry.gc(1).pruned == ["v0005"]  # the champion v0004 adapts v0003, v0002 and v0001
    for leftover in registry.serving.root.iterdir():
        shutil.rmtree(leftover)
    registry.meta.set_serving_manifest("v0004", None)
    assert (registry.model_dir("v0004") / "adapter.txt").read_text() == "v0004"  # merged again from kept weights


def test_an_older_sqlite_registry_gains_the_pruned_table(tmp_path: Path, tiny_model: Path) -> None:
    import sqlite3

    with Registry(tmp_path / "registry") as registry:
        registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay")
    with sqlite3.connect(tmp_path / "registry" / "registry.sqlite") as db:
        db.execute("DROP TABLE pruned")  # as a registry made before retention
    with Registry(tmp_path / "registry") as registry:
        assert registry.pruned() == {} and registry.gc(1).pruned == []
        registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay")
        registry.create_version(stage_full(registry, tiny_model), parent=None, strategy="replay")
        registry.promote("v0003", actor="cli")
        assert registry.gc(1).pruned == ["v0001", "v0002"]
