"""The gate as a pure function: every check, with its numbers in the reasons."""

from __future__ import annotations

from daemon.config import GateConfig
from daemon.gate import Scores, decide, majority_share

CONFIG = GateConfig(max_forgetting=0.02, min_gain_new=0.0, min_eval_rows=30, max_canary_drop=0.0)
ROWS = {"1": 100, "2": 100, "3": 100}


def test_first_model_must_beat_the_majority_baseline() -> None:
    ok = decide(new="1", candidate=Scores(per_experience={"1": 0.8}), champion=None, rows=ROWS, config=CONFIG, baseline=0.6)
    assert ok.passed and ok.reasons == ["first model: accuracy on batch 1 0.800 > majority-class baseline 0.600"]
    bad = decide(new="1", candidate=Scores(per_experience={"1": 0.6}), champion=None, rows=ROWS, config=CONFIG, baseline=0.6)
    assert not bad.passed
    empty = decide(new="1", candidate=Scores(per_experience={"1": None}), champion=None, rows={"1": 0}, config=CONFIG)
    assert not empty.passed and "no held-out rows" in empty.reasons[0]
    assert majority_share(["a", "a", "b", "c"]) == 0.5


def test_forgetting_beyond_tolerance_rejects_naming_the_batch() -> None:
    result = decide(new="3", candidate=Scores(per_experience={"1": 0.90, "2": 0.759, "3": 0.9}),
                    champion=Scores(per_experience={"1": 0.91, "2": 0.80, "3": 0.5}), rows=ROWS, config=CONFIG)
    assert not result.passed
    assert result.reasons == ["gain on batch 3: +0.400 >= 0.0 (accuracy 0.500 -> 0.900)",
                              "forgetting on batch 1: 0.010 <= 0.02", "forgetting on batch 2: 0.041 > 0.02"]


def test_gain_small_sets_and_canary() -> None:
    result = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.7}, canary=0.8),
                    champion=Scores(per_experience={"1": 0.9, "2": 0.75}, canary=0.8), rows=ROWS, config=CONFIG,
                    canary_rows=50)
    assert not result.passed and result.reasons[0].startswith("gain on batch 2: -0.050 < 0.0")
    assert result.reasons[-1] == "canary drop: 0.000 <= 0.0 (50 rows)"
    small = decide(new="2", candidate=Scores(per_experience={"1": 0.1, "2": 0.9}),
                   champion=Scores(per_experience={"1": 0.9, "2": 0.5}), rows={"1": 10, "2": 100}, config=CONFIG)
    assert not small.passed and "not gated alone" in small.reasons[1] and "pooled (10 rows, losses only): 0.800 > 0.1" in small.reasons[-1]
    canary = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.9}, canary=0.7),
                    champion=Scores(per_experience={"1": 0.9, "2": 0.5}, canary=0.8), rows=ROWS, config=CONFIG)
    assert not canary.passed and canary.reasons[-1].startswith("canary drop: 0.100 > 0.0")


def test_small_earlier_sets_are_pooled_counting_losses_only() -> None:
    rows = {"1": 12, "2": 12, "3": 12, "4": 100}
    # one more wrong row of 12 on batch 1 alone (0.083) is within one row of the 36-row pool
    noise = decide(new="4", candidate=Scores(per_experience={"1": 10 / 12, "2": 1.0, "3": 1.0, "4": 0.9}),
                   champion=Scores(per_experience={"1": 11 / 12, "2": 1.0, "3": 1.0, "4": 0.5}), rows=rows, config=CONFIG)
    assert noise.passed
    assert noise.reasons[-1] == ("forgetting on batches 1, 2, 3 pooled (36 rows, losses only): 0.028 <= 0.0278 "
                                 "(one row; max_forgetting 0.02 is finer)")
    # two rows lost are not, even when another batch gains two: gains never hide forgetting
    hidden = decide(new="4", candidate=Scores(per_experience={"1": 9 / 12, "2": 1.0, "3": 1.0, "4": 0.9}),
                    champion=Scores(per_experience={"1": 11 / 12, "2": 10 / 12, "3": 1.0, "4": 0.5}), rows=rows, config=CONFIG)
    assert not hidden.passed and hidden.reasons[-1].startswith("forgetting on batches 1, 2, 3 pooled (36 rows, losses only): 0.056 > ")
    # a forgotten batch is caught however small its set
    forgotten = decide(new="2", candidate=Scores(per_experience={"1": 0.0, "2": 1.0}),
                       champion=Scores(per_experience={"1": 1.0, "2": 0.0}), rows={"1": 8, "2": 100}, config=CONFIG)
    assert not forgotten.passed and "1.000 > 0.125" in forgotten.reasons[-1]
