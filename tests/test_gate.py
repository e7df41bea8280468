"""The gate as a pure function: every check, with its numbers in the reasons."""

from __future__ import annotations

from daemon.config import GateConfig
from daemon.update.gate import GateResult, Scores, decide, floor, majority_share, recheck, sign_test

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
    assert not small.passed and "not gated alone" in small.reasons[1] and small.reasons[-1].startswith(
        "forgetting on batch 1 (10 rows; 8 lost, 0 gained): 0.800 > 0.1")
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
                                 "0.029 > 0.02; <= 0.04 and sign test p=0.2 >= 0.05: within noise")
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
    assert not forgotten.passed
    assert "1.000 > 0.125 (one row; max_forgetting 0.02 is finer) and > 0.25" in forgotten.reasons[-1]


def test_sign_test() -> None:
    assert sign_test(0, 0) == 1.0 and sign_test(0, 5) == 1.0
    assert sign_test(5, 0) == 1 / 32 and sign_test(1, 1) == 0.75
    assert abs(sign_test(20, 14) - 0.196) < 0.001


# The two failures of issue 16, as score tables at the default gate config (min_eval_rows 100,
# max_forgetting 0.02): both were promoted before these rules.
DEFAULT = GateConfig()


def test_a_candidate_below_its_batchs_majority_baseline_is_never_promoted_on_a_small_set() -> None:
    # the third source brings three labels the champion does not know (so it scores 0 there): 31
    # held-out rows, 14 of the most common label; the candidate gets 2 right
    rows = {"1": 30, "2": 29, "3": 31}
    champion = Scores(per_experience={"1": 0.9, "2": 0.8, "3": 0.0})
    paired = {"1": {"lost": 1, "gained": 1}, "2": {"lost": 1, "gained": 1}}

    def gate(score: float) -> GateResult:
        return decide(new="3", candidate=Scores(per_experience={"1": 0.9, "2": 0.8, "3": score}), champion=champion,
                      rows=rows, config=DEFAULT, baseline=14 / 31, paired=paired)  # what the cycle passes today

    bad = gate(2 / 31)
    assert not bad.passed, bad.reasons
    assert bad.reasons[:2] == ["batch 3: 31 held-out rows < min_eval_rows 100; gain not gated",
                               "floor on batch 3: accuracy 0.065 < 0.452, the majority-class baseline (31 held-out rows); "
                               "never promoted below it, whatever the gain"]
    # above a uniform guess over its three labels (0.333) is not enough: one fixed answer does better
    assert not gate(12 / 31).passed
    good = gate(20 / 31)
    assert good.passed and good.reasons[1] == ("floor on batch 3: accuracy 0.645 >= 0.452, the majority-class baseline "
                                               "(31 held-out rows)")
    assert gate(14 / 31).passed  # as good as the constant is not below it
    # a large set is floored too, whatever its gain over a champion that never saw the labels
    large = decide(new="3", candidate=Scores(per_experience={"1": 0.9, "3": 0.3}),
                   champion=Scores(per_experience={"1": 0.9, "3": 0.0}),
                   rows={"1": 200, "3": 200}, config=DEFAULT, baseline=0.4, batch_labels=3, model_labels=5)
    assert not large.passed and large.reasons[0].startswith("gain on batch 3: +0.300 >= 0.0")
    assert "0.300 < 0.400" in large.reasons[1]


def test_the_floor_of_a_one_label_batch_is_a_guess_and_macro_f1_has_its_own() -> None:
    # held-out rows of one label: always saying it scores 1.000, which proves nothing
    assert floor("accuracy", 1.0, 1, 5) == (0.2, "a uniform guess over the model's 5 labels (the rows carry one label)")
    assert floor("accuracy", 1.0, 0, 5)[0] == 0.2  # type: ignore[index]  # a record without the label count
    assert floor("accuracy", 1.0, 1, 0) is None and floor("macro_f1", 1.0, 1, 5) is None
    assert floor("accuracy", None) is None and floor("accuracy", 0.6) == (0.6, "the majority-class baseline")
    assert floor("macro_f1", 0.6, 0, 4) is None  # the label count is needed for macro F1
    assert floor("token_f1", 0.6, 2, 4) is None  # a metric whose constant score the gate does not know
    level, what = floor("macro_f1", 0.6, 2)  # type: ignore[misc]
    assert abs(level - 0.375) < 1e-12 and what == "the macro F1 of always saying the most common of its 2 labels"
    rows = {"1": 200, "2": 20}
    champion = Scores(per_experience={"1": 0.9, "2": 0.0})
    one = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.9}), champion=champion, rows=rows,
                 config=DEFAULT, baseline=1.0, batch_labels=1, model_labels=5)
    assert one.passed and one.reasons[1].startswith("floor on batch 2: accuracy 0.900 >= 0.200, a uniform guess")
    none = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.1}), champion=champion, rows=rows,
                  config=DEFAULT, baseline=1.0, batch_labels=1, model_labels=5)
    assert not none.passed and "0.100 < 0.200" in none.reasons[1]
    unknown = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.9}), champion=champion, rows=rows,
                     config=DEFAULT, baseline=1.0)
    assert unknown.passed and not any(r.startswith("floor") for r in unknown.reasons)
    macro = DEFAULT.model_copy(update={"metric": "macro_f1"})
    f1 = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": 0.3}), champion=champion, rows=rows,
                config=macro, baseline=0.6, batch_labels=2)
    assert not f1.passed and "macro_f1 0.300 < 0.375" in f1.reasons[1]
    # nothing to score: no floor
    empty = decide(new="2", candidate=Scores(per_experience={"1": 0.9, "2": None}), champion=champion,
                   rows={"1": 200, "2": 0}, config=DEFAULT, baseline=0.5)
    assert empty.passed and not any(r.startswith("floor") for r in empty.reasons)


def _poisoned(paired: dict[str, dict]) -> GateResult:
    """Batch 4 is the first source again with its labels flipped; batches 1-3 are small (88 rows pooled)."""
    rows = {"1": 29, "2": 28, "3": 31, "4": 30}
    champion = {"1": 0.9, "2": 0.8, "3": 0.7}
    candidate = {e: champion[e] - (c["lost"] - c["gained"]) / rows[e] for e, c in paired.items()}
    return decide(new="4", candidate=Scores(per_experience=candidate | {"4": 0.9}),
                  champion=Scores(per_experience=champion | {"4": 0.1}), rows=rows, config=DEFAULT,
                  baseline=0.5, paired=paired)


def test_a_net_drop_beyond_what_noise_may_excuse_fails_whatever_the_sign_test() -> None:
    # 12 rows lost and 5 gained of 88: a net 0.080, four times max_forgetting; the sign test's p=0.072
    # made it "within noise" before; no small set alone loses beyond chance (batch 1: p=0.062)
    poisoned = _poisoned({"1": {"lost": 6, "gained": 1}, "2": {"lost": 3, "gained": 2}, "3": {"lost": 3, "gained": 2}})
    assert not poisoned.passed, poisoned.reasons
    assert poisoned.reasons[-1] == ("forgetting on batches 1, 2, 3 pooled (88 rows; 12 lost, 5 gained): 0.080 > 0.02 "
                                    "and > 0.04, beyond what noise may excuse: forgetting, whatever the sign test (p=0.072)")
    assert sum(r.startswith("forgetting on batch ") for r in poisoned.reasons) == 0  # the pool caught it
    assert poisoned.failures == [poisoned.reasons[-1]]  # what status shows: the check that failed, not the first one
    four = _poisoned({"1": {"lost": 4, "gained": 0}, "2": {"lost": 0, "gained": 0}, "3": {"lost": 0, "gained": 0}})
    assert not four.passed and "0.045 > 0.02 and > 0.04" in four.reasons[-1]


def test_a_clean_streams_noise_on_small_sets_still_promotes() -> None:
    clean = _poisoned({"1": {"lost": 1, "gained": 0}, "2": {"lost": 1, "gained": 1}, "3": {"lost": 0, "gained": 0}})
    assert clean.passed, clean.reasons
    assert clean.failures == []
    assert clean.reasons[-1] == "forgetting on batches 1, 2, 3 pooled (88 rows; 2 lost, 1 gained): 0.011 <= 0.02"
    assert clean.reasons[1] == "floor on batch 4: accuracy 0.900 >= 0.500, the majority-class baseline (30 held-out rows)"
    # two rows net with churn on both sides: within one more tolerance and like a coin
    churn = _poisoned({"1": {"lost": 2, "gained": 1}, "2": {"lost": 1, "gained": 1}, "3": {"lost": 1, "gained": 0}})
    assert churn.passed, churn.reasons
    assert churn.reasons[-1] == ("forgetting on batches 1, 2, 3 pooled (88 rows; 4 lost, 2 gained): 0.023 > 0.02; "
                                 "<= 0.04 and sign test p=0.34 >= 0.05: within noise")
    assert _poisoned({"1": {"lost": 0, "gained": 3}, "2": {"lost": 1, "gained": 0}, "3": {"lost": 0, "gained": 0}}).passed


def test_recheck_applies_the_rules_to_recorded_metrics_old_and_new() -> None:
    metrics = {"candidate": {"per_experience": {"1": 0.9, "2": 0.8, "3": 2 / 31}, "canary": None},
               "champion": {"per_experience": {"1": 0.9, "2": 0.8, "3": 0.0}, "canary": None},
               "rows": {"1": 30, "2": 29, "3": 31}, "baseline": 14 / 31, "metric": "accuracy",
               "paired": {"1": {"lost": 0, "gained": 0}, "2": {"lost": 0, "gained": 0}}}
    old = recheck(metrics, "3", DEFAULT)  # recorded before batch_labels and model_labels: the baseline alone floors it
    assert not old.passed and "0.065 < 0.452" in old.reasons[1]
    one = metrics | {"baseline": 1.0, "candidate": {"per_experience": {"1": 0.9, "2": 0.8, "3": 0.3}}}
    assert recheck(one, "3", DEFAULT).passed  # one label, no label count recorded: no floor, as before
    assert not recheck(one | {"batch_labels": 1, "model_labels": 2}, "3", DEFAULT).passed
    assert recheck(one | {"batch_labels": 1, "model_labels": 4}, "3", DEFAULT).passed


def test_recheck_refuses_scores_recorded_in_another_metric() -> None:
    # answer losses that passed nothing (batch 1 up 0.5 nats), re-checked by a home whose config names
    # another metric (or task): read as accuracies they would pass; they are refused, naming both
    metrics = {"candidate": {"per_experience": {"1": 3.0, "2": 1.0}}, "champion": {"per_experience": {"1": 2.5, "2": 2.0}},
               "rows": {"1": 200, "2": 10}, "metric": "answer_loss"}
    loss = GateConfig(metric="answer_loss", max_forgetting=0.05, min_eval_rows=100)
    assert not recheck(metrics, "2", loss).passed  # its own metric: the rise fails it
    other = recheck(metrics, "2", CONFIG)
    assert not other.passed and other.reasons == other.failures
    assert other.reasons == ["its scores were recorded in answer_loss and gate.metric is accuracy: the gate cannot be "
                             're-checked in another metric (set gate.metric = "answer_loss")']
    assert recheck({k: v for k, v in metrics.items() if k != "metric"}, "2", CONFIG).passed  # no metric recorded: as before


def test_the_floor_can_ask_for_evidence_beyond_chance() -> None:
    from daemon.update import gate

    assert gate.above_chance(54, 66, 0.67) < 0.01  # well above a 0.67 floor
    assert gate.above_chance(25, 45, 0.55) > 0.5  # at the floor: no evidence
    assert gate.above_chance(3, 3, 1.0) == 1.0  # nothing is above a perfect floor
    assert abs(gate.above_chance(2600, 5000, 0.5) - 0.0024) < 0.0005  # the normal approximation past 2000 rows
