"""Rebuilds the example story in examples/sentiment/ from the VADER ground truth (vaderSentiment
3.3.2's source archive, MIT): `python -m examples.build`. Deterministic; examples/README.md says
what each file holds and where it comes from."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench.streams import vader_sentences

OUT = Path(__file__).resolve().parent / "sentiment"
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
    movies, products = data["movie_reviews"], data["product_reviews"]
    taken: set[str] = set()
    movie, product = "vader/movieReviewSnippets", "vader/amazonReviewSnippets"
    flipped = [{**row, "label": {"positive": "negative", "negative": "positive"}[row["label"]]}
               for row in draw(movies, rng, taken, {"positive": 100, "negative": 100}, movie)]
    return {
        "1-movie-reviews.jsonl": draw(movies, rng, taken, {"positive": 150, "negative": 150}, movie),
        "2-movie-reviews-neutral.jsonl": draw(movies, rng, taken, {"positive": 80, "negative": 80, "neutral": 140}, movie),
        "3-product-reviews.jsonl": draw(products, rng, taken, {"positive": 100, "negative": 100, "neutral": 100}, product),
        "4-poisoned-flipped-labels.jsonl": flipped,
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, rows in build().items():
        (OUT / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        print(f"{OUT / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
