"""The gate as a pure function: every check, with its numbers in the reasons."""

from __future__ import annotations

from daemon.config import GateConfig
from daemon.update.gate import Scores, decide, majority_share, sign_test

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
    assert not small.passed and "not gated alone" in small.reasons[1] and "pooled (10 rows; 8 lost, 0 gained): 0.800 > 0.1" in small.reasons[-1]
    canary = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.9}, canary=0.7),
                    champion=Scores(per_experience={"1": 0.9, "2": 0.5}, canary=0.8), rows=ROWS, config=CONFIG)
    assert not canary.passed and canary.reasons[-1].startswith("canary drop: 0.100 > 0.0")


def test_small_earlier_sets_are_pooled_and_a_drop_within_noise_passes() -> None:
    rows = {"1": 12, "2": 12, "3": 12, "4": 100}
    # one more wrong row of 12 on batch 1 alone (0.083) is within one row of the 36-row pool
    one = decide(new="4", candidate=Scores(per_experience={"1": 10 / 12, "2": 1.0, "3": 1.0, "4": 0.9}),
                 champion=Scores(per_experience={"1": 11 / 12, "2": 1.0, "3": 1.0, "4": 0.5}), rows=rows, config=CONFIG)
    assert one.passed
    assert one.reasons[-1] == ("forgetting on batches 1, 2, 3 pooled (36 rows; 1 lost, 0 gained): 0.028 <= 0.0278 "
                               "(one row; max_forgetting 0.02 is finer)")
    # seven small sets, 210 rows: 20 rows lost and 14 gained is a net 0.029, a coin's worth of churn
    config = CONFIG.model_copy(update={"min_eval_rows": 100})
    rows = {str(e): 30 for e in range(1, 8)} | {"8": 100}
    lost = {str(e): 3 if e < 7 else 2 for e in range(1, 8)}
    churn = {e: {"lost": n, "gained": 2} for e, n in lost.items()}
    champion = Scores(per_experience={e: 0.6 for e in lost} | {"8": 0.4})
    candidate = Scores(per_experience={e: 0.6 - (n - 2) / 30 for e, n in lost.items()} | {"8": 0.7})
    noise = decide(new="8", candidate=candidate, champion=champion, rows=rows, config=config, paired=churn)
    assert noise.passed, noise.reasons
    assert noise.reasons[-1] == ("forgetting on batches 1, 2, 3, 4, 5, 6, 7 pooled (210 rows; 20 lost, 14 gained): "
                                 "0.029 > 0.02; sign test p=0.2 >= 0.05: within noise")
    # the same net drop with little churn is forgetting, not noise
    lopsided = {e: {"lost": int(e != "7"), "gained": 0} for e in lost}
    real = decide(new="8", candidate=candidate, champion=champion, rows=rows, config=config, paired=lopsided)
    assert not real.passed and real.reasons[-1].endswith("(210 rows; 6 lost, 0 gained): 0.029 > 0.02; sign test p=0.016 < 0.05"), real.reasons


def test_a_gain_on_one_small_set_never_hides_forgetting_on_another() -> None:
    rows = {"1": 12, "2": 12, "3": 12, "4": 100}
    hidden = decide(new="4", candidate=Scores(per_experience={"1": 0.5, "2": 1.0, "3": 1.0, "4": 0.9}),
                    champion=Scores(per_experience={"1": 1.0, "2": 0.5, "3": 1.0, "4": 0.5}), rows=rows, config=CONFIG,
                    paired={"1": {"lost": 6, "gained": 0}, "2": {"lost": 0, "gained": 6}, "3": {"lost": 0, "gained": 0}})
    assert not hidden.passed
    assert "forgetting on batch 1: 0.500 > 0.02 (6 rows lost, 0 gained of 12; sign test p=0.016 < 0.017)" in hidden.reasons
    assert hidden.reasons[-1].startswith("forgetting on batches 1, 2, 3 pooled (36 rows; 6 lost, 6 gained): 0.000 <= ")
    # a forgotten batch is caught however small its set
    forgotten = decide(new="2", candidate=Scores(per_experience={"1": 0.0, "2": 1.0}),
                       champion=Scores(per_experience={"1": 1.0, "2": 0.0}), rows={"1": 8, "2": 100}, config=CONFIG)
    assert not forgotten.passed and "1.000 > 0.125" in forgotten.reasons[-1]


def test_sign_test() -> None:
    assert sign_test(0, 0) == 1.0 and sign_test(0, 5) == 1.0
    assert sign_test(5, 0) == 1 / 32 and sign_test(1, 1) == 0.75
    assert abs(sign_test(20, 14) - 0.196) < 0.001
