"""Ingestion: formats, temp names, settling, splits, labels, duplicates, skip."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.ingest.inbox import Inbox, Settler, ignored
from daemon.ingest.splits import is_eval
from daemon.ingest.store import Store
from tests.conftest import archived, cli, error_doc, jsonl, open_home, write_config

ROWS = [{"text": f"sample text number {i}", "label": ["pos", "neg", "neu"][i % 3]} for i in range(60)]


def csv_text(rows: list[dict], fields=("text", "label")) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def ingest(root: Path) -> list:
    outcomes, left = Inbox(open_home(root)).drain(max_wait=5)
    assert not left
    return outcomes


def row_count(root: Path) -> int:
    with Store(root / "state" / "rows.sqlite") as store:
        return store.row_count()


@pytest.mark.parametrize("name, payload", [
    ("a.jsonl", jsonl(ROWS).encode()),
    ("a.ndjson", jsonl(ROWS).encode()),
    ("a.jsonl.gz", gzip.compress(jsonl(ROWS).encode())),
    ("a.csv", csv_text(ROWS).encode()),
    ("a.csv.gz", gzip.compress(csv_text(ROWS).encode())),
])
def test_every_text_format_is_ingested(home_root: Path, name: str, payload: bytes) -> None:
    (home_root / "inbox" / name).write_bytes(payload)
    [outcome] = ingest(home_root)
    assert outcome.outcome == "accepted"
    assert outcome.rows_train + outcome.rows_eval == 60
    assert archived(home_root) == [name]
    assert (home_root / "archive" / name).read_bytes() == payload  # byte-identical
    assert row_count(home_root) == 60
    assert sorted(cli("status", "--home", str(home_root), "--json").stdout and
                  json.loads(cli("status", "--home", str(home_root), "--json").stdout)["labels"]) == ["neg", "neu", "pos"]


def test_parquet_with_integer_labels_and_extra_columns(home_root: Path) -> None:
    table = pa.table({"text": [r["text"] for r in ROWS], "label": [i % 2 for i in range(60)],
                      "source": ["web"] * 60, "id": [f"r{i}" for i in range(60)]})
    pq.write_table(table, home_root / "inbox" / "p.parquet", row_group_size=16)
    [outcome] = ingest(home_root)
    assert outcome.outcome == "accepted" and outcome.rows_train + outcome.rows_eval == 60
    with Store(home_root / "state" / "rows.sqlite") as store:
        assert store.labels() == ["0", "1"]


def test_csv_rfc4180_quoting_newlines_and_bom(home_root: Path) -> None:
    rows = [{"text": 'she said "hi",\nthen left', "label": "a"}, {"text": "plain", "label": "b"}]
    (home_root / "inbox" / "q.csv").write_bytes(b"\xef\xbb\xbf" + csv_text(rows).encode())
    [outcome] = ingest(home_root)
    assert outcome.outcome == "accepted"
    with Store(home_root / "state" / "rows.sqlite") as store:
        store.close_batch("now")
        texts = {t for split in ("train", "eval") for t, _ in store.iter_rows(1, split)}
    assert texts == {'she said "hi",\nthen left', "plain"}


def test_temp_names_are_ignored_until_renamed(home_root: Path) -> None:
    inbox = home_root / "inbox"
    names = [".hidden.jsonl", "a.jsonl.tmp", "b.jsonl.part", "c.jsonl.partial", "d.jsonl~"]
    for name in names:
        (inbox / name).write_text(jsonl(ROWS[:3]))
    assert ingest(home_root) == []
    assert sorted(os.listdir(inbox)) == sorted(names)
    os.rename(inbox / "a.jsonl.tmp", inbox / "a.jsonl")
    [outcome] = ingest(home_root)
    assert outcome.name == "a.jsonl" and outcome.outcome == "accepted"
    assert all(ignored(n) for n in names) and not ignored("a.jsonl")


def test_settle_rule_waits_for_size_and_mtime_to_be_still() -> None:
    now = [1000.0]
    settler = Settler(2.0, clock=lambda: now[0])

    class St:
        st_mode = 0o100644
        st_dev = st_ino = 0

        def __init__(self, size: int, mtime: float) -> None:
            self.st_size, self.st_mtime_ns = size, int(mtime * 1e9)

    ready, wait = settler.ready({"f.jsonl": St(10, 999.5)})
    assert ready == [] and wait == pytest.approx(1.5)
    now[0] = 1001.0
    ready, wait = settler.ready({"f.jsonl": St(20, 1000.9)})  # grew: the clock restarts
    assert ready == [] and wait == pytest.approx(1.9)
    now[0] = 1003.0
    ready, _ = settler.ready({"f.jsonl": St(20, 1000.9)})
    assert ready == ["f.jsonl"]
    # a file already older than the settle time is taken at once (dropped while the daemon was down)
    assert settler.ready({"old.jsonl": St(5, 900.0)})[0] == ["old.jsonl"]


def test_a_growing_file_is_not_taken(home_root: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 1.0})
    path = home_root / "inbox" / "slow.jsonl"
    path.write_text(jsonl(ROWS[:5]))
    inbox = Inbox(open_home(home_root))
    outcomes, wait = inbox.pass_once()
    assert outcomes == [] and wait is not None and wait > 0.5
    with open(path, "a") as handle:
        handle.write(jsonl(ROWS[5:10]))
    assert inbox.pass_once()[0] == []
    time.sleep(1.1)
    [outcome] = inbox.pass_once()[0]
    assert outcome.rows_train + outcome.rows_eval == 10


def test_eval_split_is_a_stable_hash_of_the_text(home_root: Path) -> None:
    rows = [{"text": f"row {i}", "label": "x"} for i in range(2000)]
    rows += [{"text": "row 5", "label": "x"}, {"text": "forced", "label": "x", "split": "eval"},
             {"text": "forced train", "label": "x", "split": "train"}]
    (home_root / "inbox" / "s.jsonl").write_text(jsonl(rows))
    [outcome] = ingest(home_root)
    expected_eval = sum(is_eval(r["text"], 0.1) for r in rows[:2001]) + 1
    assert outcome.rows_eval == expected_eval
    assert 150 < outcome.rows_eval < 250  # about 10%
    # the same text always lands in the same split, here and on every machine
    assert is_eval("row 5", 0.1) == is_eval("row 5", 0.1)
    # golden values: a change of hash would silently move rows between splits of an existing home
    assert [i for i in range(200) if is_eval(f"row {i}", 0.1)] == [32, 49, 50, 64, 87, 92, 117, 127, 148, 150, 165,
                                                                   171, 174, 188]


def test_duplicate_bytes_ingest_nothing(home_root: Path) -> None:
    inbox = home_root / "inbox"
    (inbox / "a.jsonl").write_text(jsonl(ROWS))
    ingest(home_root)
    (inbox / "a.jsonl").write_text(jsonl(ROWS))  # same name, same bytes
    (inbox / "copy.jsonl").write_text(jsonl(ROWS))  # other name, same bytes
    outcomes = ingest(home_root)
    assert {o.outcome for o in outcomes} == {"duplicate"}
    assert row_count(home_root) == 60
    assert len(archived(home_root)) == 3  # a.jsonl, a~N.jsonl, copy.jsonl
    status = json.loads(cli("status", "--home", str(home_root), "--json").stdout)
    assert status["inbox"]["files"] == {"accepted": 1, "duplicate": 2, "quarantined": 0}


def test_fixed_label_set_rejects_unknown_labels(home_root: Path) -> None:
    write_config(home_root, inbox={"labels": ["pos", "neg"], "settle_seconds": 0})
    (home_root / "inbox" / "a.jsonl").write_text(jsonl([{"text": "ok", "label": "pos"}, {"text": "x", "label": "meh"}]))
    [outcome] = ingest(home_root)
    assert outcome.outcome == "quarantined" and outcome.reason == "invalid_rows"
    doc = error_doc(home_root, "a.jsonl")
    assert doc["errors"] == [{"line": 2, "field": "label", "reason": "unknown_label", "value": "meh"}]


def test_growing_label_set_keeps_arrival_order(home_root: Path) -> None:
    inbox = home_root / "inbox"
    (inbox / "1.jsonl").write_text(jsonl([{"text": "a", "label": "zeta"}, {"text": "b", "label": "alpha"}]))
    ingest(home_root)
    (inbox / "2.jsonl").write_text(jsonl([{"text": "c", "label": "beta"}, {"text": "d", "label": "zeta"}]))
    ingest(home_root)
    with Store(home_root / "state" / "rows.sqlite") as store:
        assert store.labels() == ["zeta", "alpha", "beta"]


def test_skip_mode_ingests_good_rows_and_reports_bad_ones(home_root: Path) -> None:
    write_config(home_root, inbox={"on_bad_rows": "skip", "settle_seconds": 0})
    rows = ROWS[:10] + [{"text": "", "label": "pos"}, {"text": "no label"}, "not an object"]  # type: ignore[list-item]
    (home_root / "inbox" / "m.jsonl").write_text(jsonl(rows))  # type: ignore[arg-type]
    [outcome] = ingest(home_root)
    assert outcome.outcome == "accepted" and outcome.rows_rejected == 3
    assert archived(home_root) == ["m.jsonl"]
    rejected = [json.loads(l) for l in (home_root / "quarantine" / "m.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [11, 12, 13]
    assert [r["errors"][0]["reason"] for r in rejected] == ["empty_text", "missing_field", "not_object"]
    assert row_count(home_root) == 10


def test_reject_mode_lists_at_most_100_errors_and_counts_all(home_root: Path) -> None:
    rows = ROWS[:5] + [{"text": "", "label": "x"}] * 250
    (home_root / "inbox" / "bad.jsonl").write_text(jsonl(rows))
    [outcome] = ingest(home_root)
    doc = error_doc(home_root, "bad.jsonl")
    assert doc["reason"] == "invalid_rows" and len(doc["errors"]) == 100
    assert doc["message"].startswith("250 of 255 rows are invalid")
    assert set(doc) == {"file", "sha256", "received_at", "reason", "message", "errors"}
    assert row_count(home_root) == 0


def test_batches_group_pending_files(home_root: Path) -> None:
    inbox = home_root / "inbox"
    (inbox / "1.jsonl").write_text(jsonl(ROWS[:30]))
    ingest(home_root)
    with Store(home_root / "state" / "rows.sqlite") as store:
        assert store.close_batch("t1") == 1
        assert store.counts(pending=True) == {"train": 0, "eval": 0}
        assert store.close_batch("t2") is None
    (inbox / "2.jsonl").write_text(jsonl(ROWS[30:]))
    ingest(home_root)
    with Store(home_root / "state" / "rows.sqlite") as store:
        pending = store.counts(pending=True)
        assert pending["train"] + pending["eval"] == 30
        assert store.close_batch("t3") == 2
        assert store.batch_files(2) == ["2.jsonl"]
        got = [t for s in ("train", "eval") for t, _ in store.iter_rows(2, s)]
        assert sorted(got) == sorted(r["text"] for r in ROWS[30:])
        assert store.counts(pending=False)["train"] + store.counts(pending=False)["eval"] == 60


def test_ingest_cli_json_and_plain(home_root: Path) -> None:
    (home_root / "inbox" / "a.jsonl").write_text(jsonl(ROWS[:4]))
    (home_root / "inbox" / "b.txt").write_text("hello")
    result = cli("ingest", "--once", "--home", str(home_root), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert {f["file"]: f["outcome"] for f in doc["files"]} == {"a.jsonl": "accepted", "b.txt": "quarantined"}
    result = cli("ingest", "--once", "--home", str(home_root))
    assert "empty" in result.stdout and "\x1b[" not in result.stderr  # no progress bar off a terminal


def test_a_file_renamed_from_a_temp_name_is_taken_without_waiting(home_root: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 30})
    inbox = Inbox(open_home(home_root))
    temp = home_root / "inbox" / "batch.jsonl.part"
    temp.write_text(jsonl(ROWS[:5]))
    assert inbox.pass_once()[0] == []  # the pass sees the write in progress
    os.rename(temp, home_root / "inbox" / "batch.jsonl")
    [outcome] = inbox.pass_once()[0]  # no 30 s wait: the writer renamed it into place
    assert outcome.name == "batch.jsonl" and outcome.outcome == "accepted"
    (home_root / "inbox" / "direct.jsonl").write_text(jsonl(ROWS[5:9]))
    outcomes, wait = inbox.pass_once()
    assert outcomes == [] and wait is not None and wait > 25  # written in place: it must settle


def test_a_quick_rename_seen_by_the_watcher_is_taken_without_waiting(home_root: Path) -> None:
    """No pass saw the temporary name: the file-system event of the rename says the write is done."""
    from daemon.service.loop import start_watching
    from tests.test_service import wait_for

    write_config(home_root, inbox={"settle_seconds": 30})
    home = open_home(home_root)
    inbox = Inbox(home)
    wake = threading.Event()
    observer = start_watching(home, wake, inbox)
    try:
        temp = home_root / "inbox" / "quick.jsonl.part"
        temp.write_text(jsonl(ROWS[:5]))
        os.rename(temp, home_root / "inbox" / "quick.jsonl")
        (home_root / "inbox" / "inplace.jsonl").write_text(jsonl(ROWS[5:9]))
        os.rename(home_root / "inbox" / "inplace.jsonl", home_root / "inbox" / "moved.jsonl")  # not from a temp name
        wait_for(lambda: "quick.jsonl" in inbox._renamed, timeout=10)
        outcomes, wait = inbox.pass_once()
    finally:
        observer.stop()
    assert [o.name for o in outcomes] == ["quick.jsonl"] and wait is not None and wait > 25
