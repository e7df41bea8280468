"""Metrics: every documented name with its labels, present from the start, and clean by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.service.metrics import Metrics
from tests.conftest import open_home

REQUIRED = {  # the names and labels docs/reference.md promises users and dashboards
    "lifelong_build_info": {"version"},
    "lifelong_champion_info": {"version", "strategy", "base_model"},
    "lifelong_inbox_files_total": {"outcome"},
    "lifelong_ingested_rows_total": {"split"},
    "lifelong_rejected_rows_total": set(),
    "lifelong_pending_rows": set(),
    "lifelong_replay_buffer_rows": set(),
    "lifelong_updates_total": {"outcome"},
    "lifelong_update_duration_seconds": {"stage"},
    "lifelong_train_samples_per_second": set(),
    "lifelong_eval_score": {"model", "set"},
    "lifelong_entity_f1": {"set", "type"},  # token_classification homes (tests/test_ner.py)
    "lifelong_forgetting_max": set(),
    "lifelong_rollbacks_total": set(),
    "lifelong_last_update_timestamp_seconds": set(),
    "lifelong_last_promotion_timestamp_seconds": set(),
    "lifelong_registry_bytes": set(),
    "lifelong_update_in_progress": set(),
    # bad input and resources
    "lifelong_ingest_errors_total": {"reason"},
    "lifelong_inbox_stuck_files": set(),
    "lifelong_inbox_waiting_files": set(),
    "lifelong_disk_free_bytes": set(),
    "lifelong_versions": {"state"},
    # a remote artifact store (registry.artifacts)
    "lifelong_artifact_store_retries_total": set(),
    "lifelong_artifact_store_failures_total": set(),
    # an active/standby group (several daemons on one PostgreSQL registry)
    "lifelong_daemon_active": set(),
}


def test_every_required_metric_is_exposed_from_the_start(home_root: Path) -> None:
    text = Metrics(open_home(home_root)).exposition().decode()
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    for name in REQUIRED:
        base = name.removesuffix("_total")
        assert name in helps or base in helps, name
    assert 'lifelong_updates_total{outcome="failed"} 0.0' in text
    assert 'lifelong_inbox_files_total{outcome="quarantined"} 0.0' in text
    assert 'lifelong_update_duration_seconds_count{stage="train"} 0.0' in text
    assert 'lifelong_ingested_rows_total{split="eval"} 0.0' in text
    assert 'lifelong_ingest_errors_total{reason="internal_error"} 0.0' in text
    assert "lifelong_inbox_stuck_files 0.0" in text


def test_the_inbox_errors_and_stuck_entries_of_the_running_inbox(home_root: Path) -> None:
    from daemon.ingest.inbox import Inbox

    home = open_home(home_root)
    inbox = Inbox(home)
    (home.inbox / "f.jsonl").write_text('{"text": "x", "label": "a"}\n')
    inbox.errors["permission_denied"] += 2
    inbox._stick("f.jsonl", PermissionError(13, "Permission denied"))
    text = Metrics(home, inbox=inbox).exposition().decode()
    assert 'lifelong_ingest_errors_total{reason="permission_denied"} 3.0' in text
    assert "lifelong_inbox_stuck_files 1.0" in text


def test_promtool_finds_nothing_to_complain_about(home_root: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (make tools unpacks it from Debian's prometheus package)")
    text = Metrics(open_home(home_root)).exposition()
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == b"" and done.stderr.strip() == b"", done
