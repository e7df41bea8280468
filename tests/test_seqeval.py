"""Our entity-level scorer (strategies/tasks/bio.py `figures`, what the gate's `entity_f1` and every
per-type figure come from) agrees with seqeval, the library the field scores NER with: micro and
per-type precision, recall, F1 and support, on edge cases written out and on random tag sequences.

seqeval's default mode reads BIO as conlleval does (an `I-X` that does not continue an `X` starts
one), as we do; its strict IOB2 mode (an entity must begin with `B-`) agrees with us once the tags
are repaired as the inbox repairs them (`bio.repair`).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.tasks import bio

seqeval_metrics = pytest.importorskip("seqeval.metrics", reason="seqeval is in lifelong[test] (make venv installs it)")
from seqeval.scheme import IOB2  # noqa: E402

# (truth, predicted) sentences, each a case seqeval and conlleval are known to read in a particular way
SHARED: list[tuple[list[str], list[str]]] = [
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),  # exact
    (["O", "I-PER", "I-PER", "O"], ["O", "B-PER", "I-PER", "O"]),  # I- without B- starts an entity
    (["B-PER", "I-LOC", "O"], ["B-PER", "I-PER", "O"]),  # type change mid-span: two entities, not one
    (["O", "O", "B-ORG", "I-ORG"], ["O", "O", "B-ORG", "O"]),  # a span at the sentence end; a prediction too short
    (["B-LOC", "B-LOC", "I-LOC"], ["B-LOC", "I-LOC", "I-LOC"]),  # B- after B-: two entities
    (["B-geo-loc", "I-geo-loc"], ["B-geo-loc", "I-geo-loc"]),  # a type with a hyphen (WNUT-16's)
    (["O", "O"], ["B-MISC", "O"]),  # a type only predicted (support 0)
    (["B-PER"], ["O"]),  # a type never predicted
    (["I-PER", "B-PER", "I-PER"], ["I-LOC", "I-PER", "I-PER"]),  # I- starts of several types
    (["B-ORG", "I-ORG", "I-ORG"], ["I-ORG", "I-ORG", "I-ORG"]),  # the same span, begun with I-
    (["O"], ["O"]),  # nothing in either
]


def ours(truth: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    found = bio.figures(truth, predicted)
    return {"micro": (found["precision"], found["recall"], found["entity_f1"]),
            "per_type": {kind: (row["precision"], row["recall"], row["f1"], row["support"])
                         for kind, row in found["per_type"].items()}}


def theirs(truth: list[list[str]], predicted: list[list[str]], **mode: Any) -> dict[str, Any]:
    report = seqeval_metrics.classification_report(truth, predicted, output_dict=True, zero_division=0, **mode)
    micro = report.pop("micro avg")
    for average in ("macro avg", "weighted avg"):
        report.pop(average)
    return {"micro": (micro["precision"], micro["recall"], micro["f1-score"]),
            "per_type": {kind: (row["precision"], row["recall"], row["f1-score"], row["support"])
                         for kind, row in report.items()}}


def agree(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["micro"] == pytest.approx(b["micro"]), (a, b)
    assert set(a["per_type"]) == set(b["per_type"]), (a, b)
    for kind, row in a["per_type"].items():
        assert row == pytest.approx(b["per_type"][kind]), (kind, a, b)


def test_the_shared_edge_cases_score_as_seqeval_scores_them() -> None:
    truth, predicted = [t for t, _ in SHARED], [p for _, p in SHARED]
    agree(ours(truth, predicted), theirs(truth, predicted))
    # and each case alone, where one pooled figure could hide two errors cancelling
    for t, p in SHARED:
        if bio.spans(t) or bio.spans(p):
            agree(ours([t], [p]), theirs([t], [p]))
    assert ours([["O"]], [["O"]])["micro"] == (None, None, None)  # nothing to score: no figure (seqeval: 0)
    found = bio.figures(truth, predicted)
    assert 0 < found["entity_f1"] < 1 and found["per_type"]["MISC"]["support"] == 0


def test_strict_iob2_agrees_once_the_tags_are_repaired() -> None:
    truth = [bio.repair(t)[0] for t, _ in SHARED]
    predicted = [bio.repair(p)[0] for _, p in SHARED]
    agree(ours(truth, predicted), theirs(truth, predicted, mode="strict", scheme=IOB2))
    # repairing changes no entity: the default reading of the raw tags is the same
    agree(ours(truth, predicted), ours([t for t, _ in SHARED], [p for _, p in SHARED]))


TAG = st.sampled_from(["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-geo-loc", "I-geo-loc"])
SENTENCE = st.integers(1, 8).flatmap(lambda n: st.tuples(st.lists(TAG, min_size=n, max_size=n),
                                                         st.lists(TAG, min_size=n, max_size=n)))


@settings(max_examples=200, deadline=None)
@given(st.lists(SENTENCE, min_size=1, max_size=6))
def test_random_tag_sequences_score_as_seqeval_scores_them(pairs: list[tuple[list[str], list[str]]]) -> None:
    truth, predicted = [t for t, _ in pairs], [p for _, p in pairs]
    if not any(bio.spans(t) or bio.spans(p) for t, p in pairs):
        return  # no entity anywhere: we give no figure, seqeval 0 (checked above)
    agree(ours(truth, predicted), theirs(truth, predicted))
