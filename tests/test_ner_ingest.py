"""Token classification (NER) inbox: JSONL and CoNLL sentences, BIO checked or repaired, entity
types as the store's labels, the held-out split by sentence."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from daemon.ingest.inbox import Inbox
from daemon.ingest.splits import is_eval
from daemon.ingest.store import Store
from strategies.tasks import bio
from tests.conftest import archived, error_doc, jsonl, open_home, quarantined, write_config

SENTENCES = [{"tokens": ["Alice", "flew", "to", "New", "York", f"#{i}"],
              "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]} for i in range(40)]
CONLL = """-DOCSTART- O

Alice B-PER
flew O
to O
New B-LOC
York I-LOC

# a comment line
EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
"""


@pytest.fixture()
def ner_root(home_root: Path) -> Path:
    write_config(home_root, model={"task": "token_classification"}, gate={"metric": "entity_f1"})
    return home_root


def ingest(root: Path) -> list:
    outcomes, left = Inbox(open_home(root)).drain(max_wait=5)
    assert not left
    return outcomes


def stored(root: Path) -> list[tuple[list[str], list[str]]]:
    with Store(root / "state" / "rows.sqlite") as store:
        store.close_batch("2026-01-01T00:00:00Z")
        return [row for split in ("train", "eval") for row in store.iter_rows(1, split, ("tokens", "tags"))]


def test_bio_reading_agrees_with_conlleval() -> None:
    # the cases seqeval's default (conlleval) mode reads this way: an I- after O or after another type starts an entity
    assert bio.spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7)]
    assert bio.spans(["O", "O"]) == [] and bio.spans(["B-X"]) == [("X", 0, 1)]
    assert bio.repair(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == (
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"], 3)
    assert bio.tag_labels(["PER", "LOC"]) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert bio.entity_types(bio.tag_labels(["PER", "LOC"])) == ["PER", "LOC"]
    for bad in ("PER", "B-", "E-PER", "b-PER", "B- PER", 3):
        with pytest.raises(bio.BadTag):
            bio.type_of(bad)


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.gz"])
def test_jsonl_sentences_are_stored_with_entity_types_as_labels(ner_root: Path, name: str) -> None:
    payload = jsonl(SENTENCES).encode()
    (ner_root / "inbox" / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    [outcome] = ingest(ner_root)
    assert outcome.outcome == "accepted" and outcome.rows_train + outcome.rows_eval == 40
    with Store(ner_root / "state" / "rows.sqlite") as store:
        assert store.labels() == ["PER", "LOC"]
    rows = stored(ner_root)
    assert sorted(rows) == sorted((s["tokens"], s["tags"]) for s in SENTENCES)
    # the held-out split is a hash of the sentence's tokens joined by spaces
    with Store(ner_root / "state" / "rows.sqlite") as store:
        held = list(store.iter_rows(1, "eval", ("tokens", "tags")))
    assert len(held) == sum(is_eval(" ".join(s["tokens"]), 0.1) for s in SENTENCES)


@pytest.mark.parametrize("name", ["c.conll", "c.conll.gz"])
def test_conll_files_with_docstart_comments_extra_columns_and_no_final_blank(ner_root: Path, name: str) -> None:
    payload = ("\ufeff" + CONLL).encode()  # a byte-order mark too
    (ner_root / "inbox" / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    [outcome] = ingest(ner_root)
    assert outcome.outcome == "accepted", error_doc(ner_root, name) if outcome.outcome != "accepted" else None
    rows = stored(ner_root)
    assert sorted(rows) == sorted([(["Alice", "flew", "to", "New", "York"], ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
                                   (["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"])])  # I-MISC repaired
    with Store(ner_root / "state" / "rows.sqlite") as store:
        assert store.labels() == ["PER", "LOC", "ORG", "MISC"]
        record = store.file_records()[0]
    message = store_message(ner_root, record.id)
    assert "1 BIO tags repaired" in message


def store_message(root: Path, file_id: int) -> str:
    import sqlite3

    with sqlite3.connect(root / "state" / "rows.sqlite") as db:
        return db.execute("SELECT message FROM files WHERE id = ?", (file_id,)).fetchone()[0]


def test_invalid_sentences_are_named(ner_root: Path) -> None:
    bad = [{"tokens": ["a", "b"], "tags": ["O"]},  # length
           {"tokens": ["a"], "tags": ["PER"]},  # not BIO
           {"tokens": ["a b"], "tags": ["O"]},  # a token with a space
           {"tokens": [], "tags": []},
           {"tokens": [0], "tags": ["O"]},
           {"text": "a", "label": "x"}]
    (ner_root / "inbox" / "bad.jsonl").write_text(jsonl(SENTENCES[:3] + bad))
    [outcome] = ingest(ner_root)
    assert outcome.outcome == "quarantined" and outcome.reason == "invalid_rows"
    reasons = [(e["line"], e["field"], e["reason"]) for e in error_doc(ner_root, "bad.jsonl")["errors"]]
    assert reasons[:4] == [(4, "tags", "length_mismatch"), (5, "tags", "bad_tag"), (6, "tokens", "bad_token"),
                           (7, "tokens", "not_token_list")]
    assert (8, "tokens", "bad_token") in reasons
    assert (9, "tokens", "missing_field") in reasons and (9, "tags", "missing_field") in reasons


def test_conll_edge_cases(ner_root: Path) -> None:
    (ner_root / "inbox" / "notag.conll").write_text("Alice B-PER\nflew\n\nBob B-PER\n")
    (ner_root / "inbox" / "empty.conll").write_text("-DOCSTART- O\n\n\n")
    write_config(ner_root, inbox={"settle_seconds": 0, "on_bad_rows": "skip"})
    outcomes = {o.name: o for o in ingest(ner_root)}
    assert outcomes["notag.conll"].outcome == "accepted" and outcomes["notag.conll"].rows_rejected == 1
    assert outcomes["empty.conll"].outcome == "quarantined" and outcomes["empty.conll"].reason == "empty"
    rejected = [json.loads(line) for line in (ner_root / "quarantine" / "notag.conll.rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["line"] == 1 and rejected[0]["errors"][0]["reason"] == "missing_tag"


def test_a_sentence_over_max_row_bytes_is_refused(ner_root: Path) -> None:
    write_config(ner_root, inbox={"settle_seconds": 0, "max_row_bytes": 64})
    long = "".join(f"word{i} O\n" for i in range(40))
    (ner_root / "inbox" / "long.conll").write_text("Alice B-PER\n\n" + long)
    [outcome] = ingest(ner_root)
    assert outcome.outcome == "quarantined"
    assert error_doc(ner_root, "long.conll")["errors"][0]["reason"] == "row_too_large"


def test_formats_follow_the_task(ner_root: Path, home_root: Path) -> None:
    (ner_root / "inbox" / "rows.csv").write_text("text,label\na,b\n")
    [outcome] = ingest(ner_root)
    assert outcome.reason == "unsupported_format" and quarantined(ner_root) == ["rows.csv"]


def test_a_sequence_classification_home_refuses_conll(home_root: Path) -> None:
    (home_root / "inbox" / "c.conll").write_text(CONLL)
    [outcome] = ingest(home_root)
    assert outcome.outcome == "quarantined" and outcome.reason == "unsupported_format"
    assert archived(home_root) == []


def test_entity_types_are_capped_and_may_be_fixed(ner_root: Path) -> None:
    write_config(ner_root, inbox={"settle_seconds": 0, "max_labels": 2, "on_bad_rows": "skip"})
    rows = [{"tokens": ["a", "b"], "tags": ["B-PER", "B-LOC"]}, {"tokens": ["c"], "tags": ["B-ORG"]},
            {"tokens": ["d"], "tags": [f"B-{'X' * 300}"]}]
    (ner_root / "inbox" / "capped.jsonl").write_text(jsonl(rows))
    [outcome] = ingest(ner_root)
    assert outcome.rows_rejected == 2
    reasons = [json.loads(line)["errors"][0]["reason"]
               for line in (ner_root / "quarantine" / "capped.jsonl.rejected.jsonl").read_text().splitlines()]
    assert reasons == ["too_many_labels", "label_too_long"]
    write_config(ner_root, inbox={"settle_seconds": 0, "max_labels": 10, "labels": ["PER", "LOC"], "on_bad_rows": "reject"})
    (ner_root / "inbox" / "fixed.jsonl").write_text(jsonl([{"tokens": ["c"], "tags": ["B-ORG"]}]))
    [outcome] = ingest(ner_root)
    assert outcome.reason == "invalid_rows"
    assert error_doc(ner_root, "fixed.jsonl")["errors"][0]["reason"] == "unknown_label"
