"""Fuzzing the readers: random bytes and near-valid structures never crash ingestion, and every
file ends archived or quarantined."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from daemon import formats
from daemon.config import InboxConfig
from daemon.ingest import Ingestor
from daemon.store import Store
from registry.errors import FileRejected

SUFFIXES = [".jsonl", ".csv", ".jsonl.gz", ".csv.gz", ".parquet", ".ndjson"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
near_valid_rows = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "text": st.one_of(st.text(max_size=30), st.integers(), st.none()),
            "label": st.one_of(st.sampled_from(["pos", "neg", ""]), st.integers(-3, 3), st.none(), st.floats(), st.booleans()),
            "split": st.sampled_from(["train", "eval", "test", "", None]),
            "id": st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2)),
            "extra": json_values,
        },
    ),
    max_size=12,
)


def _ingest_bytes(name: str, payload: bytes, on_bad_rows: str = "reject") -> str:
    root = Path(tempfile.mkdtemp(prefix="lifelong-fuzz-"))
    try:
        for sub in ("inbox", "archive", "quarantine"):
            (root / sub).mkdir()
        (root / "inbox" / name).write_bytes(payload)
        with Store(root / "rows.sqlite") as store:
            ingestor = Ingestor(store=store, inbox=root / "inbox", archive=root / "archive", quarantine=root / "quarantine",
                                config=InboxConfig(settle_seconds=0, max_file_bytes=1 << 20, on_bad_rows=on_bad_rows))
            outcome = ingestor.ingest(root / "inbox" / name)
            assert outcome is not None
            rows = store.row_count()
        place = "archive" if outcome.outcome in ("accepted", "duplicate") else "quarantine"
        assert [p.name for p in (root / "inbox").iterdir()] == []
        assert (root / place / outcome.dest.name).read_bytes() == payload
        if outcome.outcome == "quarantined":
            doc = json.loads((root / "quarantine" / f"{outcome.dest.name}.error.json").read_text())
            assert doc["reason"] in FileRejected.REASONS
            assert rows == 0
        else:
            assert rows == outcome.rows_train + outcome.rows_eval > 0
        return outcome.outcome
    finally:
        shutil.rmtree(root)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_never_crash(payload: bytes, suffix: str) -> None:
    _ingest_bytes("fuzz" + suffix, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=near_valid_rows, as_csv=st.booleans(), gz=st.booleans(), skip=st.booleans(),
       junk=st.sampled_from([b"", b"\n", b"{", b'"', b"\xff", b",,,\n", b"\x00"]))
def test_near_valid_structures_never_crash(rows: list[dict], as_csv: bool, gz: bool, skip: bool, junk: bytes) -> None:
    if as_csv:
        out = io.StringIO()
        fields = sorted({key for row in rows for key in row} | {"text", "label"})
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        payload = out.getvalue().encode() + junk
    else:
        payload = "".join(json.dumps(row) + "\n" for row in rows).encode() + junk
    if gz:
        payload = gzip.compress(payload)
    name = "near" + (".csv" if as_csv else ".jsonl") + (".gz" if gz else "")
    _ingest_bytes(name, payload, "skip" if skip else "reject")


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".csv.gz"]))
def test_readers_raise_only_file_rejected(payload: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("x" + suffix)
        path.write_bytes(payload)
        try:
            for line, record in formats.read(path, 1 << 20):
                assert isinstance(line, int) and line >= 1
                assert isinstance(record, (dict, formats.RowError))
        except FileRejected as exc:
            assert exc.reason in FileRejected.REASONS
