"""The gate in a lower-is-better metric (causal_lm's answer_loss, in nats): forgetting is a rise, the
gain a fall, small sets pooled by rows with the sign-flip test on paired per-row losses (the sign
test where only their directions are known), the first model judged against the base model, and the
generation check."""

from __future__ import annotations

import random

from daemon.config import GateConfig
from daemon.update.gate import Scores, decide, recheck, sign_flip_test, sign_test, worse
from strategies import tasks
from strategies.evaluate import paired_rows

LOSS = GateConfig(metric="answer_loss")


def test_a_loss_is_worse_when_it_rises() -> None:
    assert worse("answer_loss", 1.0, 1.5) == 0.5 and worse("accuracy", 0.75, 0.5) == 0.25
    assert worse("answer_loss", 1.0, 0.5) < 0 < worse("accuracy", 0.9, 0.5)


def test_a_rise_on_a_large_earlier_set_is_forgetting_and_a_fall_on_the_new_one_is_a_gain() -> None:
    rows = {"1": 200, "2": 200}
    champion = Scores(per_experience={"1": 0.50, "2": 2.00})
    kept = decide(new="2", candidate=Scores(per_experience={"1": 0.51, "2": 0.80}), champion=champion, rows=rows,
                  config=LOSS)
    assert kept.passed, kept.reasons
    assert any("gain on batch 2: +1.200" in r for r in kept.reasons), kept.reasons
    forgot = decide(new="2", candidate=Scores(per_experience={"1": 0.60, "2": 0.80}), champion=champion, rows=rows,
                    config=LOSS)
    assert not forgot.passed and any("forgetting on batch 1: 0.100 > 0.02 (answer_loss 0.500 -> 0.600)" in r
                                     for r in forgot.reasons), forgot.reasons
    unlearned = decide(new="2", candidate=Scores(per_experience={"1": 0.50, "2": 2.10}), champion=champion, rows=rows,
                       config=LOSS)
    assert not unlearned.passed  # the new batch's loss rose: a negative gain


def test_small_earlier_sets_are_pooled_by_rows_and_sign_tested_on_paired_row_losses() -> None:
    rows = {"1": 20, "2": 30, "3": 200}
    champion = Scores(per_experience={"1": 0.40, "2": 0.40, "3": 2.0})
    candidate = Scores(per_experience={"1": 0.43, "2": 0.43, "3": 1.0})  # a rise of 0.03: in the noise band
    churn = {"1": {"answer_loss": {"lost": 11, "gained": 9}}, "2": {"answer_loss": {"lost": 16, "gained": 14}}}
    noise = decide(new="3", candidate=candidate, champion=champion, rows=rows, config=LOSS, paired=churn)
    assert noise.passed and any("within noise" in r for r in noise.reasons), noise.reasons
    lopsided = {"1": {"answer_loss": {"lost": 19, "gained": 1}}, "2": {"answer_loss": {"lost": 28, "gained": 2}}}
    real = decide(new="3", candidate=candidate, champion=champion, rows=rows, config=LOSS, paired=lopsided)
    assert not real.passed and any("sign test p=" in r for r in real.reasons), real.reasons
    far = decide(new="3", candidate=Scores(per_experience={"1": 0.50, "2": 0.50, "3": 1.0}), champion=champion,
                 rows=rows, config=LOSS, paired=churn)
    assert not far.passed and any("beyond what noise may excuse" in r for r in far.reasons), far.reasons


def test_a_large_rise_on_one_small_set_fails_though_its_rows_split_and_a_fall_elsewhere_hides_it_in_the_pool() -> None:
    """The chat benchmark's replay run: trivia's loss rose 2.037 -> 2.300 with its rows moving both ways,
    while a set the champion had never learned fell 0.465; the pool's net was a fall."""
    rows = {"1": 16, "2": 17, "3": 21}
    champion = Scores(per_experience={"1": 2.037, "2": 3.937, "3": 3.9})
    candidate = Scores(per_experience={"1": 2.300, "2": 3.472, "3": 3.3})
    split = {"1": {"answer_loss": {"lost": 8, "gained": 8}}, "2": {"answer_loss": {"lost": 1, "gained": 16}}}
    config = GateConfig(metric="answer_loss", max_forgetting=0.05)
    hidden = decide(new="3", candidate=candidate, champion=champion, rows=rows, config=config, paired=split)
    assert not hidden.passed, hidden.reasons
    assert hidden.failures == ["forgetting on batch 1: 0.263 > 0.1 (8 rows lost, 8 gained of 16), beyond what noise "
                               "may excuse: forgetting, whatever the sign test (p=0.6)"], hidden.reasons
    assert any(r.startswith("forgetting on batches 1, 2 pooled (33 rows; 9 lost, 24 gained): -0.112 <= 0.05")
               for r in hidden.reasons)
    within = decide(new="3", candidate=Scores(per_experience={"1": 2.120, "2": 3.472, "3": 3.3}), champion=champion,
                    rows=rows, config=config, paired=split)  # 0.083: inside the band, rows split: noise
    assert within.passed, within.reasons


def test_the_first_model_must_lower_the_new_batchs_loss_below_the_base_models_however_few_rows() -> None:
    base = Scores(per_experience={"1": 3.0})
    better = decide(new="1", candidate=Scores(per_experience={"1": 1.2}), champion=base, rows={"1": 5}, config=LOSS,
                    first_against_base=True)
    assert better.passed and better.reasons[0].startswith("first model: answer_loss on batch 1 3.000 (base model)")
    same = decide(new="1", candidate=Scores(per_experience={"1": 3.0}), champion=base, rows={"1": 5}, config=LOSS,
                  first_against_base=True)
    assert not same.passed and "learned nothing" in same.reasons[0]


def test_a_model_that_stops_its_answers_less_often_is_rejected() -> None:
    champion = Scores(per_experience={"1": 1.0, "2": 2.0})
    candidate = Scores(per_experience={"1": 1.0, "2": 0.5})
    rows = {"1": 200, "2": 200}
    stops = {"candidate": {"generated": 20, "stopped": 4}, "champion": {"generated": 20, "stopped": 19}}
    lost = decide(new="2", candidate=candidate, champion=champion, rows=rows, config=LOSS, stops=stops)
    assert not lost.passed and any("no longer stops" in r for r in lost.reasons), lost.reasons
    stops["candidate"]["stopped"] = 17
    assert decide(new="2", candidate=candidate, champion=champion, rows=rows, config=LOSS, stops=stops).passed
    recorded = {"candidate": {"per_experience": {"1": 1.2}}, "champion": {"per_experience": {"1": 3.0}},
                "rows": {"1": 5}, "first_against_base": True,
                "stops": {"candidate": {"generated": 5, "stopped": 0}, "champion": {"generated": 5, "stopped": 5}}}
    again = recheck(recorded, "1", LOSS)  # `lifelong promote` re-checks the recorded decision the same way
    assert not again.passed and any("no longer stops" in r for r in again.reasons), again.reasons


def test_the_sign_flip_test_weighs_sizes_and_is_the_sign_test_when_every_row_moved_alike() -> None:
    assert sign_flip_test([0.5, 0.1, -0.2]) == 3 / 8  # of the 8 signs, +0.8, +0.6 and +0.4 reach the observed +0.4
    assert sign_flip_test([0.6] * 8 + [-0.07] * 8) == 2 ** 8 / 2 ** 16  # every large rise must keep its sign
    assert sign_flip_test([-0.6] * 8 + [0.07] * 8) > 0.99
    rng = random.Random(3)
    for _ in range(20):
        n, size = rng.randint(1, 16), rng.uniform(0.01, 2.0)
        lost = rng.randint(0, n)
        assert abs(sign_flip_test([size] * lost + [-size] * (n - lost)) - sign_test(lost, n - lost)) < 1e-12
    # above EXACT_ROWS, random signs: near the exact value (2^17 signs enumerated here), also where a
    # few rows carry the sum (three rising far among seventeen: exact 0.125)
    for changes in ([1.0, 1.0, 1.0] + [0.0] * 14, [rng.gauss(0.1, 0.5) for _ in range(17)]):
        sums = [0.0]
        for size in (abs(x) for x in changes):
            sums = [s + size for s in sums] + [s - size for s in sums]
        exact = sum(s >= sum(changes) - 1e-9 for s in sums) / len(sums)
        assert abs(sign_flip_test(changes) - exact) < 0.01, (sign_flip_test(changes), exact)
    assert sign_flip_test([1.0, 1.0, 1.0] + [0.0] * 14) > 0.1
    many = [rng.gauss(0.05, 0.3) for _ in range(1000)]
    assert sign_flip_test(many) == sign_flip_test(list(many))  # the same changes, the same p
    assert 0.0 < sign_flip_test(many) < 1.0 and sign_flip_test([0.2] * 1000) == 1 / 20_001


def test_the_childs_per_row_changes_weigh_rows_as_the_set_loss_does() -> None:
    task = tasks.load("causal_lm")
    before = [{"answer_loss": 1.0, "answer_tokens": 2}, {"answer_loss": 2.0, "answer_tokens": 6},
              {"answer_loss": 0.5, "answer_tokens": 4}]
    after = [{"answer_loss": 1.5, "answer_tokens": 2}, {"answer_loss": 1.9, "answer_tokens": 6},
             {"answer_loss": 0.5, "answer_tokens": 4}]
    rows = [{"prompt": "q", "completion": "a"}] * 3
    rise = task.score(rows, after, [])["answer_loss"] - task.score(rows, before, [])["answer_loss"]
    found = paired_rows("causal_lm", "answer_loss", before, after)
    assert (found["lost"], found["gained"]) == (1, 1)  # the third row did not move
    assert abs(sum(found["changes"]) / len(found["changes"]) - rise) < 1e-6
    assert found["changes"][0] > 0 > found["changes"][1] and found["changes"][2] == 0


def test_the_pools_band_is_judged_on_the_rows_sizes_where_the_child_kept_them() -> None:
    """Two small sets whose rows split evenly by count: a rise in the band is noise to the sign test.
    With each row's change, four rows rising far in each set is forgetting; a rise carried by one row
    of each set stays noise."""
    rows = {"1": 8, "2": 8, "3": 200}
    champion = Scores(per_experience={"1": 1.0, "2": 1.0, "3": 2.0})
    candidate = Scores(per_experience={"1": 1.08, "2": 1.08, "3": 1.0})  # pooled 0.08: in the band (0.05, 0.1]
    config = GateConfig(metric="answer_loss", max_forgetting=0.05)
    even = [0.23, 0.23, 0.23, 0.23, -0.07, -0.07, -0.07, -0.07]  # mean 0.08: four rows rose far, four fell a little
    spread = {e: {"answer_loss": {"lost": 4, "gained": 4, "changes": even}} for e in ("1", "2")}
    counted = {e: {"answer_loss": {"lost": 4, "gained": 4}} for e in ("1", "2")}
    assert decide(new="3", candidate=candidate, champion=champion, rows=rows, config=config, paired=counted).passed
    forgot = decide(new="3", candidate=candidate, champion=champion, rows=rows, config=config, paired=spread)
    assert not forgot.passed and any("sign-flip test p=0.0" in r for r in forgot.failures), forgot.reasons
    one = [0.88, -0.04, -0.04, -0.04, -0.04, -0.04, -0.04, 0.0]  # mean 0.08 again, carried by one row
    single = {e: {"answer_loss": {"lost": 1, "gained": 6, "changes": one}} for e in ("1", "2")}
    noise = decide(new="3", candidate=candidate, champion=champion, rows=rows, config=config, paired=single)
    assert noise.passed and any("sign-flip test p=" in r and "within noise" in r for r in noise.reasons), noise.reasons
