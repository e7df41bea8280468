"""Hostile inbox entries, one attack a test: each stopped or starved ingestion before, and must now
end with the entry archived, quarantined or counted as stuck while every other file is ingested."""

from __future__ import annotations

import gzip
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.ingest.inbox import Inbox
from daemon.ingest.ingestor import Ingestor, Waiting
from daemon.ingest.store import Store
from tests.conftest import ROOT, archived, error_doc, jsonl, lifelong_cmd, open_home, quarantined, write_config

GOOD = jsonl([{"text": f"a fine sentence number {i}", "label": "ab"[i % 2]} for i in range(10)])


def ingest_once(root: Path, *args: str) -> tuple[int, dict, str]:
    done = subprocess.run(lifelong_cmd("ingest", "--once", "--home", str(root), "--json", *args), cwd=ROOT,
                          capture_output=True, timeout=120)
    return done.returncode, json.loads(done.stdout), done.stderr.decode("utf-8", "replace")


def stored_rows(root: Path) -> tuple[int, int]:
    """(rows the catalog counts, rows actually in segments): equal when nothing is doubled or lost."""
    with Store(root / "state" / "rows.sqlite") as store:
        return store.row_count(), sum(store.segment_rows().values())


def test_a_name_of_any_bytes_is_ingested_and_shown_escaped(home_root: Path) -> None:
    inbox = os.fsencode(home_root / "inbox")
    good_name = b"caf\xe9 \x1b[31mred\x1b[0m \xe2\x80\xaeevil.jsonl"  # latin-1 byte, ANSI escape, RLO
    bad_name = b"bad \xff\xfe.jsonl"
    with open(os.path.join(inbox, good_name), "wb") as handle:
        handle.write(GOOD.encode())
    with open(os.path.join(inbox, bad_name), "wb") as handle:
        handle.write(b"not json\n")
    (home_root / "inbox" / "zz-last.jsonl").write_text(jsonl([{"text": "the last one", "label": "a"}]))

    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    outcomes = {f["file"]: f["outcome"] for f in doc["files"]}
    assert outcomes == {"caf\\xe9 \\x1b[31mred\\x1b[0m \\u202eevil.jsonl": "accepted",
                        "bad \\xff\\xfe.jsonl": "quarantined", "zz-last.jsonl": "accepted"}
    assert os.listdir(inbox) == []
    assert os.path.exists(os.path.join(os.fsencode(home_root / "archive"), good_name))  # the exact bytes
    errors = os.path.join(os.fsencode(home_root / "quarantine"), bad_name + b".error.json")
    with open(errors, "rb") as handle:
        sidecar = json.loads(handle.read().decode("utf-8"))  # valid UTF-8 JSON
    assert sidecar["file"] == "bad \\xff\\xfe.jsonl" and bytes.fromhex(sidecar["file_name_bytes_hex"]) == bad_name
    assert stored_rows(home_root) == (11, 11)

    # the text output and the logs carry no raw control or bidi character
    done = subprocess.run(lifelong_cmd("ingest", "--once", "--home", str(home_root)), cwd=ROOT, capture_output=True)
    assert done.returncode == 0
    with open(os.path.join(inbox, b"\x1b]0;title\x07 \xff.jsonl"), "wb") as handle:
        handle.write(GOOD.encode() + b"x\n")
    done = subprocess.run(lifelong_cmd("ingest", "--once", "--home", str(home_root)), cwd=ROOT, capture_output=True)
    assert done.returncode == 0
    shown = done.stdout + done.stderr
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\xff" not in shown
    assert b"\\x1b]0;title\\x07 \\xff.jsonl" in done.stdout


def test_deep_nesting_in_an_extra_field_is_an_invalid_row(home_root: Path) -> None:
    deep = "[" * 1000 + "]" * 1000
    row = '{"text": "hello there", "label": "a", "extra": ' + deep + "}\n"
    (home_root / "inbox" / "a-deep.jsonl").write_text(row)
    (home_root / "inbox" / "b-good.jsonl").write_text(GOOD)
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    assert [(f["file"], f["outcome"]) for f in doc["files"]] == [("a-deep.jsonl", "quarantined"), ("b-good.jsonl", "accepted")]
    assert error_doc(home_root, "a-deep.jsonl")["errors"][0]["reason"] == "too_deeply_nested"

    write_config(home_root, inbox={"settle_seconds": 0, "on_bad_rows": "skip"})
    (home_root / "inbox" / "c-mixed.jsonl").write_text(row + jsonl([{"text": "kept row", "label": "b"}]))
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    assert doc["files"][0]["rows"] == {"train": 1, "eval": 0, "rejected": 1}
    rejected = [json.loads(line) for line in (home_root / "quarantine" / "c-mixed.jsonl.rejected.jsonl").open()]
    assert rejected[0]["errors"][0]["reason"] == "too_deeply_nested" and rejected[0]["row"] is None


def test_the_caps_are_invalid_rows_with_their_reasons(home_root: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 0, "max_row_bytes": 2000, "max_text_chars": 500,
                                   "max_labels": 3, "max_label_chars": 10})
    inbox = home_root / "inbox"
    cases = {
        "row.jsonl": ('{"text": "x", "label": "a", "pad": "' + "p" * 3000 + '"}\n', "row_too_large"),
        "row.csv": ("text,label\n" + "q" * 3000 + ",a\n", "row_too_large"),
        "text.jsonl": (jsonl([{"text": "t" * 501, "label": "a"}]), "text_too_long"),
        "label.jsonl": (jsonl([{"text": "fine", "label": "l" * 11}]), "label_too_long"),
        "labels.jsonl": (jsonl([{"text": f"row {i}", "label": f"L{i}"} for i in range(4)]), "too_many_labels"),
    }
    for name, (payload, _) in cases.items():
        (inbox / name).write_text(payload)
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    for name, (_, reason) in cases.items():
        found = error_doc(home_root, name)
        assert (name, found["reason"]) == (name, "invalid_rows")
        assert reason in {e["reason"] for e in found["errors"]}, found
    # a row that exactly fits is fine, and the fast paths refuse what the exact one refuses
    (inbox / "fits.csv").write_text("text,label\n" + "q" * 500 + ",a\n")
    rc, doc, _ = ingest_once(home_root)
    assert [f["outcome"] for f in doc["files"]] == ["accepted"]


def test_200k_distinct_labels_are_refused_past_max_labels(home_root: Path) -> None:
    rows = "".join(f'{{"text": "sentence {i}", "label": "label-{i}"}}\n' for i in range(200_000))
    (home_root / "inbox" / "labels.jsonl").write_text(rows)
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    found = error_doc(home_root, "labels.jsonl")
    assert found["reason"] == "invalid_rows" and "199000 of 200000 rows are invalid" in found["message"]
    assert found["errors"][0]["reason"] == "too_many_labels" and found["errors"][0]["line"] == 1001
    assert stored_rows(home_root) == (0, 0)


def test_a_long_line_in_a_small_gzip_is_one_oversized_row_read_in_bounded_memory(home_root: Path) -> None:
    line = b'{"text": "' + b"a" * (200 << 20) + b'", "label": "x"}\n'
    payload = gzip.compress(line + GOOD.encode(), compresslevel=9)
    assert len(payload) < 300_000
    (home_root / "inbox" / "long.jsonl.gz").write_bytes(payload)
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *lifelong_cmd("ingest", "--once", "--home", str(home_root))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb < 300, peak_mb  # the 200 MB line was never held
    found = error_doc(home_root, "long.jsonl.gz")
    assert found["errors"][0]["reason"] == "row_too_large" and found["errors"][0]["line"] == 1


def test_a_parquet_bomb_is_too_large_however_small_the_file(home_root: Path, tmp_path: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 0, "max_file_bytes": 50 << 20})
    text = "x" * 240
    table = pa.table({"text": pa.array([text] * 1_000_000).dictionary_encode(), "label": pa.array(["a"] * 1_000_000)})
    path = home_root / "inbox" / "bomb.parquet"
    pq.write_table(table, path, compression="zstd", use_dictionary=True)
    assert path.stat().st_size < 100_000  # about 240 MB of rows once decoded
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    found = error_doc(home_root, "bomb.parquet")
    assert found["reason"] == "too_large", found
    assert stored_rows(home_root) == (0, 0)


def test_nested_parquet_columns_are_refused_before_they_are_decoded(home_root: Path) -> None:
    # eight rows each holding 200 uses of one dictionary-encoded 100 KB string: 160 MB once decoded
    table = pa.table({"text": ["a text"] * 8, "label": ["a"] * 8, "extra": [["y" * 100_000] * 200] * 8})
    pq.write_table(table, home_root / "inbox" / "nested.parquet", compression="zstd")
    categorical = pa.table({"text": pa.array(["one text", "another"]).dictionary_encode(),
                            "label": pa.array(["a", "b"]).dictionary_encode()})
    pq.write_table(categorical, home_root / "inbox" / "flat.parquet")
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    assert {f["file"]: f["outcome"] for f in doc["files"]} == {"flat.parquet": "accepted", "nested.parquet": "quarantined"}
    found = error_doc(home_root, "nested.parquet")
    assert found["reason"] == "unreadable" and "extra" in found["message"]


def test_csv_rows_near_the_cap_are_read_in_bounded_memory(home_root: Path) -> None:
    # 400 rows of 1 MB, each just under max_row_bytes: never held 4096 at a time. The third column
    # makes Arrow's reader give way after reading ahead: the exact reader must start at byte 0 anyway.
    write_config(home_root, inbox={"settle_seconds": 0, "max_text_chars": 2_000_000})
    row = "t" * 1_000_000
    with open(home_root / "inbox" / "wide.csv", "w") as handle:
        handle.write("text,label,note\n")
        for i in range(400):
            handle.write(f"{i} {row},a,\"quoted, so Arrow's fast reader gives way\"\n")
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *lifelong_cmd("ingest", "--once", "--home", str(home_root))],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) / 1024 < 300
    assert archived(home_root) == ["wide.csv"] and stored_rows(home_root) == (400, 400)


def test_a_file_the_daemon_may_not_read_is_quarantined_as_unreadable(home_root: Path) -> None:
    import shutil

    setpriv = shutil.which("setpriv")
    if os.getuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to ingest without the power to read any file")
    (home_root / "inbox" / "secret.jsonl").write_text(GOOD)
    os.chmod(home_root / "inbox" / "secret.jsonl", 0o000)
    (home_root / "inbox" / "zz-fine.jsonl").write_text(GOOD)
    # root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys file permissions like any service user
    command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search",
               *lifelong_cmd("ingest", "--once", "--home", str(home_root), "--json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    outcomes = {f["file"]: (f["outcome"], f["reason"]) for f in json.loads(done.stdout)["files"]}
    assert outcomes == {"secret.jsonl": ("quarantined", "unreadable"), "zz-fine.jsonl": ("accepted", None)}
    assert "Permission denied" in error_doc(home_root, "secret.jsonl")["message"]
    assert (home_root / "quarantine" / "secret.jsonl").exists() and os.listdir(home_root / "inbox") == []


def test_skip_mode_never_overwrites_a_file_in_quarantine(home_root: Path) -> None:
    write_config(home_root, inbox={"settle_seconds": 0, "on_bad_rows": "skip"})
    inbox = home_root / "inbox"
    (inbox / "a.jsonl.rejected.jsonl").write_bytes(b"\x00 a user's own file, quarantined as unreadable")
    assert ingest_once(home_root)[0] == 0
    original = (home_root / "quarantine" / "a.jsonl.rejected.jsonl").read_bytes()
    (inbox / "a.jsonl").write_text(GOOD + '{"text": "", "label": "a"}\n')
    rc, doc, stderr = ingest_once(home_root)
    assert rc == 0, stderr
    assert (home_root / "quarantine" / "a.jsonl.rejected.jsonl").read_bytes() == original
    written = [p.name for p in (home_root / "quarantine").iterdir() if p.name.endswith(".rejected.jsonl")]
    assert len(written) == 2
    assert archived(home_root) == ["a.jsonl"]


def test_an_unexpected_failure_quarantines_that_file_as_internal_error_and_the_rest_go_on(home_root: Path) -> None:
    home = open_home(home_root)
    (home.inbox / "a-trips.jsonl").write_text(GOOD)
    (home.inbox / "b-fine.jsonl").write_text(GOOD.replace("fine", "good"))
    inbox = Inbox(home)
    calls = {"n": 0}

    def tick() -> None:  # the first file's reading meets an error nobody predicted
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyError("an error nobody predicted")
    inbox.tick = tick
    outcomes, _ = inbox.pass_once()
    assert [(o.name, o.outcome, o.reason) for o in outcomes] == [
        ("a-trips.jsonl", "quarantined", "internal_error"), ("b-fine.jsonl", "accepted", None)]
    assert "KeyError" in error_doc(home_root, "a-trips.jsonl")["message"]
    assert inbox.errors["internal_error"] == 1 and not inbox.stuck
    assert stored_rows(home_root) == (10, 10)


def test_an_entry_that_cannot_be_moved_is_stuck_counted_retried_and_finished_later(home_root: Path) -> None:
    home = open_home(home_root)
    (home.inbox / "a-immutable.jsonl").write_text(GOOD)
    (home.inbox / "b-fine.jsonl").write_text(GOOD.replace("fine", "good"))
    if subprocess.run(["chattr", "+i", str(home.inbox / "a-immutable.jsonl")], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this file system")
    now = [1000.0]
    inbox = Inbox(home, clock=lambda: now[0])
    try:
        outcomes, wait = inbox.pass_once()
        assert [o.name for o in outcomes] == ["b-fine.jsonl"]
        assert set(inbox.stuck) == {"a-immutable.jsonl"} and inbox.stuck["a-immutable.jsonl"].reason == "permission_denied"
        assert inbox.errors["permission_denied"] == 1 and wait is not None and 0 < wait <= 10
        assert json.loads((home.state / "inbox-entries.json").read_text())["stuck"][0]["file"] == "a-immutable.jsonl"
        inbox.pass_once()  # not due yet: neither retried nor counted again
        assert inbox.errors["permission_denied"] == 1
        now[0] += 11
        inbox.pass_once()  # due: retried, fails again, waits twice as long
        assert inbox.stuck["a-immutable.jsonl"].attempts == 2 and inbox.errors["permission_denied"] == 2
        assert inbox.stuck["a-immutable.jsonl"].retry_at == pytest.approx(now[0] + 20)
    finally:
        subprocess.run(["chattr", "-i", str(home.inbox / "a-immutable.jsonl")], check=True)
    now[0] += 21
    inbox.pass_once()
    assert not inbox.stuck and sorted(archived(home_root)) == ["a-immutable.jsonl", "b-fine.jsonl"]
    assert stored_rows(home_root) == (20, 20)  # recorded once, moved later: no row twice


def test_a_swap_after_the_check_is_never_followed_or_blocked_on(home_root: Path, tmp_path: Path) -> None:
    home = open_home(home_root)
    secret = tmp_path / "secret.jsonl"
    secret.write_text(GOOD)
    path = home.inbox / "swapped.jsonl"
    with Store(home.store_path) as store:
        ingestor = Ingestor(store=store, inbox=home.inbox, archive=home.archive, quarantine=home.quarantine,
                            config=home.config.inbox)
        for swap in ("fifo", "symlink"):
            path.write_text(GOOD)
            chosen = os.lstat(path)
            path.unlink()
            os.mkfifo(path) if swap == "fifo" else os.symlink(secret, path)
            assert ingestor.ingest(path, chosen=chosen) is None  # returned at once, nothing read
            path.unlink()
        assert store.row_count() == 0

        # other hard links, or a writer holding it open: not taken until it is alone
        path.write_text(GOOD)
        os.link(path, tmp_path / "another-name")
        assert isinstance(ingestor.ingest(path), Waiting)
        (tmp_path / "another-name").unlink()
        with open(path, "a") as writer:
            result = ingestor.ingest(path)
            writer.write("")
        assert isinstance(result, Waiting) and "open for writing" in result.why
        assert ingestor.ingest(path).outcome == "accepted"  # type: ignore[union-attr]


@pytest.fixture
def other_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tmpfs mounted for the test: a second file system, as an inbox volume is under Kubernetes."""
    mount = tmp_path / "volume"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_special_entries_on_another_file_system_are_set_aside_never_copied(home_root: Path, other_fs: Path) -> None:
    inbox = other_fs / "inbox"
    inbox.mkdir()
    write_config(home_root, inbox={"settle_seconds": 0, "path": str(inbox)})
    folder = inbox / "a-folder"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock"))
    os.mkfifo(inbox / "b-fifo.jsonl")
    (inbox / "c-good.jsonl").write_text(GOOD)
    try:
        for _ in range(2):  # a second pass must not trip on what the first one did
            rc, doc, stderr = ingest_once(home_root)
            assert rc == 0, stderr
        assert quarantined(home_root) == [] and archived(home_root) == ["c-good.jsonl"]
        aside = inbox / ".lifelong-quarantine"
        assert sorted(os.listdir(aside)) == ["a-folder", "b-fifo.jsonl"]
        assert sorted(os.listdir(aside / "a-folder")) == ["pipe", "sock"]
        found = error_doc(home_root, "a-folder")
        assert found["reason"] == "not_regular_file" and found["moved_to"] == str(aside / "a-folder")
        assert sorted(os.listdir(inbox)) == [".lifelong-quarantine"]
    finally:
        listener.close()
    assert stored_rows(home_root) == (10, 10)
