"""Malformed input: each kind is quarantined with the right reason code and ingestion carries on."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import archived, error_doc, jsonl, lifelong_cmd, ROOT, quarantined, write_config

GOOD = jsonl([{"text": "fine", "label": "pos"}, {"text": "also fine", "label": "neg"}])

# name -> (bytes or a special maker, expected reason)
CASES: dict[str, tuple[object, str]] = {
    "invalid-utf8.jsonl": (b'{"text": "caf\xe9", "label": "pos"}\n', "unreadable"),
    "binary-junk.jsonl": (bytes(range(256)) * 4, "unreadable"),
    "truncated.jsonl.gz": (gzip.compress(GOOD.encode() * 20)[:40], "unreadable"),
    "not-gzip.csv.gz": (b"text,label\nhello,pos\n", "unreadable"),
    "no-label-column.csv": (b"text,category\nhello,pos\n", "missing_columns"),
    "no-label-field.jsonl": (jsonl([{"text": "a", "category": "pos"}]).encode(), "missing_columns"),
    "header-only.csv": (b"text,label\n", "empty"),
    "zero-bytes.jsonl": (b"", "empty"),
    "blank-lines.jsonl": (b"\n\n   \n", "empty"),
    "not-an-object.jsonl": (GOOD.encode() + b'["text", "label"]\n', "invalid_rows"),
    "empty-text.jsonl": (jsonl([{"text": "  ", "label": "pos"}]).encode(), "invalid_rows"),
    "null-label.jsonl": (jsonl([{"text": "hello", "label": None}]).encode(), "invalid_rows"),
    "float-label.jsonl": (jsonl([{"text": "hello", "label": 1.5}]).encode(), "invalid_rows"),
    "bad-split.jsonl": (jsonl([{"text": "hello", "label": "pos", "split": "test"}]).encode(), "invalid_rows"),
    "unknown-label.jsonl": (jsonl([{"text": "hello", "label": "meh"}]).encode(), "invalid_rows"),
    "ragged.csv": (b"text,label\nhello,pos\nextra,neg,field\n", "invalid_rows"),
    "bad-json-lines.jsonl": (b"{not json}\n{also not\n", "unreadable"),
    "unterminated-quote.csv": (b'text,label\n"hello,pos\n', "invalid_rows"),
    "invalid-utf8.csv": (b"text,label\ncaf\xe9,pos\n", "unreadable"),
    "garbage.parquet": (b"PAR1 this is not parquet PAR1", "unreadable"),
    "notes.txt": (b"text,label\nhello,pos\n", "unsupported_format"),
    "oversize.jsonl": (GOOD.encode() * 400, "too_large"),
    "bomb.jsonl.gz": (gzip.compress(b" " * 1_000_000), "too_large"),
    "a-symlink.jsonl": ("symlink", "not_regular_file"),
    "a-fifo.jsonl": ("fifo", "not_regular_file"),
    "a-directory": ("directory", "not_regular_file"),
}


@pytest.fixture
def strict_home(home_root: Path) -> Path:
    write_config(home_root, inbox={"settle_seconds": 0, "max_file_bytes": 4096, "labels": ["pos", "neg"]})
    return home_root


def test_each_kind_of_bad_input_gets_its_reason_and_ingestion_carries_on(strict_home: Path, tmp_path: Path) -> None:
    assert len(CASES) >= 15
    inbox = strict_home / "inbox"
    outside = tmp_path / "outside-target.jsonl"
    outside.write_text(GOOD)
    for name, (payload, _) in CASES.items():
        if payload == "symlink":
            os.symlink(outside, inbox / name)
        elif payload == "fifo":
            os.mkfifo(inbox / name)
        elif payload == "directory":
            (inbox / name).mkdir()
            (inbox / name / "inner.jsonl").write_text(GOOD)
        else:
            (inbox / name).write_bytes(payload)  # type: ignore[arg-type]
    (inbox / "zz-good.jsonl").write_text(GOOD)  # sorts last: every bad file came before it

    done = subprocess.run(lifelong_cmd("ingest", "--once", "--home", str(strict_home), "--json"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcomes = {f["file"]: f for f in json.loads(done.stdout)["files"]}

    assert outcomes["zz-good.jsonl"]["outcome"] == "accepted"
    assert archived(strict_home) == ["zz-good.jsonl"]
    assert quarantined(strict_home) == sorted(CASES)
    assert os.listdir(inbox) == []
    for name, (_, reason) in CASES.items():
        doc = error_doc(strict_home, name)
        assert (name, doc["reason"]) == (name, reason), doc["message"]
        assert doc["file"] == name and doc["message"]
        assert outcomes[name]["reason"] == reason
    # the symlink itself was moved; its target outside the inbox is untouched
    assert (strict_home / "quarantine" / "a-symlink.jsonl").is_symlink()
    assert outside.read_text() == GOOD
    assert (strict_home / "quarantine" / "a-directory" / "inner.jsonl").read_text() == GOOD
    # row-level reasons name the line and field
    assert error_doc(strict_home, "null-label.jsonl")["errors"] == [
        {"line": 1, "field": "label", "reason": "null_label", "value": None}]
    assert error_doc(strict_home, "ragged.csv")["errors"][0]["line"] == 3
    assert error_doc(strict_home, "not-an-object.jsonl")["errors"][0]["reason"] == "not_object"
    assert error_doc(strict_home, "zero-bytes.jsonl")["sha256"] == \
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
