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

from daemon.config import InboxConfig
from daemon.ingest import formats
from daemon.ingest.ingestor import Ingestor
from daemon.ingest.store import Store
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
            for chunk in formats.read(path, 1 << 20):
                assert len(chunk.lines) == len(chunk.records)
                for line, record in zip(chunk.lines, chunk.records):
                    assert isinstance(line, int) and line >= 1
                    assert isinstance(record, (dict, formats.RowError))
        except FileRejected as exc:
            assert exc.reason in FileRejected.REASONS


plain_records = st.lists(
    st.fixed_dictionaries({
        "text": st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        "label": st.sampled_from(["pos", "neg", " pos", "pos ", "", "new", "zeta", "alpha", "new "]),
    }),
    min_size=1, max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(records=plain_records, fraction=st.sampled_from([0.0, 0.1, 0.5]))
def test_fast_chunk_agrees_with_the_exact_row_check(records: list[dict], fraction: float) -> None:
    from daemon.ingest.formats import Chunk
    from daemon.ingest.rows import LabelSet, Validator

    fast_labels = LabelSet.of(["pos", "neg"])
    fast = Validator(fast_labels, fraction).fast_chunk(Chunk(range(1, len(records) + 1), records))
    exact_labels = LabelSet.of(["pos", "neg"])
    exact = [Validator(exact_labels, fraction)(i, dict(r)) for i, r in enumerate(records, 1)]
    if fast is None:
        return  # the exact path decides; nothing to compare
    assert all(type(row) is tuple for row in exact), "fast path accepted a row the exact check rejects"
    splits, labels, texts = fast
    assert splits.to_pylist() == [row[0] for row in exact]
    assert labels.to_pylist() == [row[1] for row in exact]
    assert texts.to_pylist() == [row[2] for row in exact]
    assert fast_labels.added == exact_labels.added  # new labels admitted in the same order


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(max_size=40), min_size=1, max_size=30))
def test_scalar_and_vector_split_hashes_agree(texts: list[str]) -> None:
    from daemon.ingest import splits

    assert [splits.text_hash(t) for t in texts] == [int(h) for h in splits.text_hashes(texts)]
    assert [splits.is_eval(t, 0.3) for t in texts] == splits.eval_mask(texts, 0.3).tolist()


csv_cells = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\t') + ["é", "x"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(cells=st.lists(st.tuples(csv_cells, st.sampled_from(["pos", "neg", "new", '"q"', "a,b"])), max_size=15),
       raw_tail=st.sampled_from(["", "\n", '"ab"c,pos\n', "\n\n", "x\n", '"open,pos\n']))
def test_arrow_and_python_csv_readers_agree(cells: list[tuple[str, str]], raw_tail: str) -> None:
    """The fast (Arrow) CSV reader either gives way or yields exactly what the exact reader does."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows(cells)
    payload = (out.getvalue() + raw_tail).encode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.csv"
        path.write_bytes(payload)

        def rows(fast: bool) -> list[object] | str:
            try:
                return [r for chunk in formats.read(path, 1 << 20, fast=fast) for r in chunk.records]
            except FileRejected as exc:
                return exc.reason
        try:
            fast_rows = rows(True)
        except formats.NotFast:
            return
        exact = rows(False)
        exact_dicts = exact if isinstance(exact, str) else [r for r in exact if isinstance(r, dict)]
        assert fast_rows == exact_dicts and (isinstance(exact, str) or len(exact_dicts) == len(exact))
