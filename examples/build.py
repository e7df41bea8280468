"""Rebuilds the example stories: examples/sentiment/ from the VADER ground truth (vaderSentiment
3.3.2's source archive, MIT) and examples/chat/ from chatterbot-corpus 1.3.3 (BSD-3-Clause):
`python -m examples.build`. Deterministic; examples/README.md says what each file holds and where
it comes from."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.streams import chatterbot_pairs, vader_sentences

OUT = Path(__file__).resolve().parent / "sentiment"
CHAT = Path(__file__).resolve().parent / "chat"
CHAT_FILES = (("1-greetings-and-small-talk.jsonl", ("greetings", "conversations", "emotion")),
              ("2-new-topics-ai-science-computers.jsonl", ("ai", "science", "computers")))
STRONG = 1.0  # mean human score beyond +-1.0 (of -4..4): clearly positive or negative
NEUTRAL = 0.25  # within +-0.25: neutral


def label(score: float) -> str | None:
    return "positive" if score >= STRONG else "negative" if score <= -STRONG else "neutral" if abs(score) <= NEUTRAL else None


def draw(rows: list[tuple[str, float]], rng: random.Random, taken: set[str], want: dict[str, int],
         source: str) -> list[dict]:
    """`want[label]` rows of each label not drawn before, in a shuffled order."""
    pool = [(text, label(score)) for text, score in rows if text not in taken and label(score) in want]
    rng.shuffle(pool)
    found: list[dict] = []
    counts = dict.fromkeys(want, 0)
    for text, name in pool:
        if counts[name] < want[name]:
            counts[name] += 1
            taken.add(text)
            found.append({"text": text, "label": name, "source": source})
    if counts != want:
        raise ValueError(f"{source}: found {counts}, wanted {want}")
    rng.shuffle(found)
    return found


def build(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    data = vader_sentences()
    taken: set[str] = set()
    movie, product, tweet = "vader/movieReviewSnippets", "vader/amazonReviewSnippets", "vader/tweets"
    flipped = [{**row, "label": {"positive": "negative", "negative": "positive"}[row["label"]]}
               for row in draw(data["movie_reviews"], rng, taken, {"positive": 150, "negative": 150}, movie)]
    return {
        "1-movie-reviews.jsonl": draw(data["movie_reviews"], rng, taken, {"positive": 250, "negative": 250}, movie),
        "2-product-reviews-neutral.jsonl": draw(data["product_reviews"], rng, taken,
                                                {"neutral": 200, "positive": 150, "negative": 150}, product),
        "3-tweets.jsonl": draw(data["tweets"], rng, taken, {"positive": 170, "negative": 170, "neutral": 160}, tweet),
        "4-poisoned-flipped-labels.jsonl": flipped,
    }


def build_chat(seed: int = 0) -> dict[str, list[dict]]:
    """Two files of chatterbot's topics (statement -> response pairs), then the first file's prompts
    with their completions shuffled among them (poisoned: every answer belongs to another prompt)."""
    rng = random.Random(seed)
    pairs = chatterbot_pairs()
    files: dict[str, list[dict]] = {}
    for name, topics in CHAT_FILES:
        rows = [{"prompt": prompt, "completion": completion, "source": f"chatterbot-corpus/english/{topic}.yml"}
                for topic in topics for prompt, completion in pairs[topic]]
        rng.shuffle(rows)
        files[name] = rows
    first = files[CHAT_FILES[0][0]][:150]
    answers = [row["completion"] for row in first]
    rng.shuffle(answers)
    files["3-poisoned-shuffled-answers.jsonl"] = [{**row, "completion": answer} for row, answer in zip(first, answers)
                                                  if answer != row["completion"]]
    return files


def main() -> None:
    for folder, files in ((OUT, build()), (CHAT, build_chat())):
        folder.mkdir(exist_ok=True)
        for name, rows in files.items():
            (folder / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                       encoding="utf-8")
            print(f"{folder / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
