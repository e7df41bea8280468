"""The promotion gate: a pure function over score tables, with every check and its numbers in the reasons.

The first model must beat the majority-class baseline on its batch's held-out rows. Later ones:
gain on the new batch's held-out rows >= min_gain_new (sets of at least min_eval_rows), a score on
the new batch not below its floor (every set, however small), drop on every earlier batch's
held-out rows <= max_forgetting, canary drop <= max_canary_drop.

The floor. A candidate below what a model that ignores the text scores on the batch's own held-out
rows learned less from the batch than its label counts tell, so it is never promoted, small set or
not, gain or not. That model always says the batch's most common label: the floor is the
majority-class baseline (its share of the rows; in macro_f1, that constant's macro F1 over the
batch's labels). It holds for a batch that brings labels the champion did not know, too, rather than
a uniform guess (1 / the batch's label count): the majority share is never below the guess, the
constant is as easy to be as the guess, and on new labels the champion scores 0, so the gain says
nothing and the floor is the only check that the candidate learned the batch at all. A candidate
between the guess and the majority share answers these rows worse than one fixed answer would: that
is not what a user who dropped the file expects to be served. Where the held-out rows carry a single
label the constant is perfect and says nothing, so the floor is a uniform guess over the candidate's
labels (given `model_labels`; without it, and in macro_f1, such a batch has no floor). A metric other
than accuracy and macro_f1 has no floor here.

Forgetting. A held-out set smaller than min_eval_rows is too coarse to gate on alone (one row of
30 is 0.033, above the default tolerance): such earlier sets are pooled, and the pool is judged like
a large set, with the burden of proof on the candidate. Its net drop (rows the champion got right
and the candidate wrong, less the reverse, over the pool's rows) passes within the tolerance,
max_forgetting or one row of the pool where that is coarser. Beyond it, noise excuses the drop only
up to one more tolerance (NOISE_BAND: a margin tied to the pool's size through its one-row
resolution), and there only while a one-sided sign test over the changed rows says the losses could
be chance (p >= SIGNIFICANCE); a larger net drop fails whatever the sign test says, since on a pool
of 88 rows even 12 lost against 5 gained (0.080) is p = 0.072. A gain on one small set could hide
forgetting on another, so each small set is also tested alone (p < SIGNIFICANCE / number of small
sets): a set losing rows beyond chance fails.

The changed-row counts ("paired": lost and gained rows per set) come from the training child, which
scores candidate and champion on the same rows. Without them (older records, or macro_f1) they are
the fewest changed rows the two scores allow: |drop| x rows, all lost or all gained.

Entities. Entity F1 (token_classification) resolves entities, not sentences: a set of 160 sentences
holding 50 entities moves 0.02 with one of them. Such a set's size is its true entities (`entities`,
from the child), against min_eval_rows as rows are elsewhere; its drop, alone and in a pool (sets
weighed by their entities), is its F1's, and its sign test counts the sentences the task's `correct`
says changed (all its entities found by the champion and not by the candidate: lost; the reverse:
gained), past the noise band a set fails whatever that test says, as a loss does below.

Direction. Each metric is higher- or lower-is-better (strategies/tasks TASKS). For a lower-is-better
one (`answer_loss` of causal_lm, in nats) "drop" reads "rise": forgetting is the candidate's loss on
an earlier batch rising past max_forgetting, the gain on the new batch is the champion's loss less
the candidate's. Pooled small sets weigh each set's rise by its rows, the tolerance is
max_forgetting itself (a loss has no one-row resolution). A row's loss is a size, not a 0/1 outcome:
where the child kept each row's change (`paired[set][metric]["changes"]`, weighed as the set's loss
weighs its rows, so that their mean is the set's rise) the test is a sign-flip test on them, which
weighs each row's size; otherwise the sign test counts the rows whose own loss rose (lost) or fell
(gained) (`lost`/`gained`; without them every row of a set counts as moved the set's way). The sign
test sees only directions: a few rows whose loss rose far lift a set's mean while as many others fall
a little (measured on the chat stream: trivia up 0.263 nats with 8 rows lost and 8 gained, hidden in
a pool by a fall on another set; the sign-flip test gives p = 0.004 to 8 rises of 0.6 against 8 falls
of 0.07). And on a set of a few rows no test reaches the level divided among the small sets (7 rows:
p >= 1/128). So each small set alone also fails past the noise band (max_forgetting x (1 +
NOISE_BAND)), whatever the test says.

A task scored against the model it starts from (`first_against_base`: causal_lm's first model is
judged against the base model, scored side by side like a champion) passes only when it improves on
the new batch, whatever min_eval_rows says; earlier batches are not checked (the base never learned
them). The generation check (`stops`: prompts generated and how many ended with the end token, per
model) rejects a candidate that stops on a share of them more than STOP_DROP below the champion's:
a model that no longer ends its answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from daemon.config import GateConfig
from strategies.tasks import TASKS


@dataclass(frozen=True, kw_only=True)
class Scores:
    """One model's scores in the gate's metric: per experience ("1", "2", ...) and on the canary."""

    per_experience: dict[str, float | None]
    canary: float | None = None


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # the reasons that failed, in order: why it was rejected

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons)}


SIGNIFICANCE = 0.05
NOISE_BAND = 1.0  # beyond the pool's tolerance, noise may excuse at most this many tolerances more
# None: a candidate at or above its floor passes it. A level (0.05): in accuracy it must be above it
# beyond chance, a one-sided binomial test of its right rows against the floor's rate (measured in
# bench/gate_rules.py; off by default)
FLOOR_EVIDENCE: float | None = None
STOP_DROP = 0.2  # the most the share of generations ending with the end token may fall


def lower_is_better(metric: str) -> bool:
    return any(info.metrics.get(metric) == "lower" for info in TASKS.values())


def worse(metric: str, before: float, after: float) -> float:
    """How much worse `after` is than `before` (negative: better), in the metric's units."""
    return after - before if lower_is_better(metric) else before - after


def above_chance(right: int, rows: int, rate: float) -> float:
    """One-sided p-value of at least `right` of `rows` right, were each right with probability `rate`."""
    if rate >= 1.0:
        return 1.0  # nothing can be above a perfect floor
    if rows > 2000:  # the normal approximation, with continuity correction
        sd = math.sqrt(rows * rate * (1 - rate))
        return 0.5 * math.erfc((right - 0.5 - rows * rate) / (sd * math.sqrt(2))) if sd else float(right <= rows * rate)
    return min(1.0, sum(math.comb(rows, k) * rate ** k * (1 - rate) ** (rows - k) for k in range(right, rows + 1)))


@dataclass(frozen=True)
class Changed:
    """Rows of one held-out set that the champion got right and the candidate wrong (lost), and the reverse."""

    lost: int
    gained: int

    @classmethod
    def fewest(cls, drop: float, rows: int) -> "Changed":
        moved = round(abs(drop) * rows)
        return cls(moved, 0) if drop > 0 else cls(0, moved)


def sign_test(lost: int, gained: int) -> float:
    """One-sided p-value of at least `lost` losses among lost + gained changed rows, were each a coin flip."""
    n = lost + gained
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(lost, n + 1)) / 2 ** n)


EXACT_ROWS = 16  # the sign-flip test enumerates all 2^n signs up to this many rows
DRAWS = 20_000  # above, this many random signs (a fixed seed: the same changes, the same p)


def sign_flip_test(changes: list[float]) -> float:
    """One-sided p-value of rows' changes summing to at least theirs, were each change as likely to have
    come out with the other sign: a paired permutation test that weighs each row's size, where
    sign_test counts only its direction. Exact up to EXACT_ROWS rows; above, DRAWS random signs
    ((hits + 1) / (DRAWS + 1)). Not the normal approximation, which is far off where a few rows carry
    the sum: three rows rising alike among seventeen still, 0.042 against the exact 0.125."""
    observed = sum(changes)
    sizes = [abs(x) for x in changes]
    slack = 1e-9 * (1 + sum(sizes))  # the observed signs themselves, summed in another order
    if len(sizes) <= EXACT_ROWS:
        sums = [0.0]
        for size in sizes:
            sums = [s + size for s in sums] + [s - size for s in sums]
        return sum(s >= observed - slack for s in sums) / len(sums)
    import numpy as np  # only here: the daemon's parent imports it for a set of more than EXACT_ROWS rows

    rng, weights, hits = np.random.default_rng(len(sizes)), np.asarray(sizes), 0
    for _ in range(DRAWS // 2_000):  # 2,000 draws at a time: memory bounded for sets of a thousand rows
        signs = rng.integers(0, 2, size=(2_000, len(sizes))) * 2 - 1
        hits += int(np.count_nonzero(signs @ weights >= observed - slack))
    return (hits + 1) / (DRAWS + 1)


def decide(*, new: str, candidate: Scores, champion: Scores | None, rows: dict[str, int], config: GateConfig,
           baseline: float | None = None, canary_rows: int = 0, paired: dict[str, dict] | None = None,
           batch_labels: int = 0, model_labels: int = 0, first_against_base: bool = False,
           stops: dict[str, dict] | None = None, entities: dict[str, int] | None = None) -> GateResult:
    """`baseline`: the majority label's share of the new batch's held-out rows; `batch_labels`: how many
    labels those rows carry, `model_labels`: how many the candidate predicts among (0: not known);
    `first_against_base`: `champion` holds the base model's scores and the candidate is the first
    model; `stops`: {"candidate"|"champion": {"generated", "stopped"}}, the generation check;
    `entities`: the true entities in each held-out set (entity_f1), its size against min_eval_rows."""
    metric = config.metric
    sizes = {e: (entities or {}).get(e, n) if metric == "entity_f1" else n for e, n in rows.items()}
    unit = "entities" if metric == "entity_f1" and entities else "rows"
    reasons: list[str] = []
    failures: list[str] = []

    def checked(ok: bool) -> bool:
        """`ok` for the reason just added; a failed one is also one of `failures`."""
        if not ok:
            failures.append(reasons[-1])
        return ok

    passed = True
    score = candidate.per_experience.get(new)
    if first_against_base and champion is not None:
        before = champion.per_experience.get(new)
        if score is None or before is None or not rows.get(new):
            return _refused(f"first model: batch {new} has no held-out rows to score it on")
        change = worse(metric, before, score)
        ok = change < 0
        reasons.append(f"first model: {metric} on batch {new} {before:.3f} (base model) -> {score:.3f}, "
                       + ("better" if ok else "not better: the model learned nothing from the batch"))
        ok = checked(ok) & _stops(stops, reasons, failures)
        return GateResult(ok, reasons, failures)
    if champion is None:
        if score is None or not rows.get(new):
            return _refused(f"first model: batch {new} has no held-out rows to score it on")
        base = baseline if baseline is not None else 0.0
        ok = score > base
        reasons.append(f"first model: {metric} on batch {new} {score:.3f} {'>' if ok else '<='} majority-class baseline {base:.3f}")
        return GateResult(checked(ok), reasons, failures)

    before = champion.per_experience.get(new)
    if score is None or before is None or sizes.get(new, 0) < config.min_eval_rows:
        reasons.append(f"batch {new}: {sizes.get(new, 0)} held-out {unit} < min_eval_rows {config.min_eval_rows}; gain not gated")
    else:
        gain = -worse(metric, before, score)
        ok = gain >= config.min_gain_new
        reasons.append(f"gain on batch {new}: {gain:+.3f} {'>=' if ok else '<'} {config.min_gain_new} "
                       f"({metric} {before:.3f} -> {score:.3f})")
        passed &= checked(ok)
    found = floor(metric, baseline, batch_labels, model_labels) if score is not None and rows.get(new) else None
    if found is not None:
        level, what = found
        ok = round(score, 9) >= round(level, 9)  # type: ignore[arg-type]  # the same fraction, computed twice
        reasons.append(f"floor on batch {new}: {metric} {score:.3f} {'>=' if ok else '<'} {level:.3f}, {what} "
                       f"({rows[new]} held-out rows)" + ("" if ok else "; never promoted below it, whatever the gain"))
        passed &= checked(ok)
        if ok and FLOOR_EVIDENCE is not None and metric == "accuracy":
            p = above_chance(round(score * rows[new]), rows[new], level)  # type: ignore[operator]
            ok = p < FLOOR_EVIDENCE
            reasons.append(f"above the floor on batch {new} beyond chance: binomial p={p:.2g} "
                           f"{'<' if ok else '>='} {FLOOR_EVIDENCE}")
            passed &= checked(ok)
    small: list[str] = []
    for experience in sorted(candidate.per_experience, key=int):
        if experience == new:
            continue
        now, then = candidate.per_experience.get(experience), champion.per_experience.get(experience)
        if now is None or then is None or sizes.get(experience, 0) < config.min_eval_rows:
            if now is not None and then is not None and sizes.get(experience, 0):
                small.append(experience)
            reasons.append(f"batch {experience}: {sizes.get(experience, 0)} held-out {unit} < min_eval_rows "
                           f"{config.min_eval_rows}; not gated alone")
            continue
        drop = worse(metric, then, now)
        ok = drop <= config.max_forgetting
        reasons.append(f"forgetting on batch {experience}: {drop:.3f} {'<=' if ok else '>'} {config.max_forgetting}"
                       + (f" ({metric} {then:.3f} -> {now:.3f})" if lower_is_better(metric) else ""))
        passed &= checked(ok)
    if small:
        passed &= _pooled(small, candidate, champion, sizes, unit, config, paired or {}, reasons, failures)
    if candidate.canary is not None and champion.canary is not None:
        drop = worse(metric, champion.canary, candidate.canary)
        ok = drop <= config.max_canary_drop
        reasons.append(f"canary drop: {drop:.3f} {'<=' if ok else '>'} {config.max_canary_drop} ({canary_rows} rows)")
        passed &= checked(ok)
    passed &= _stops(stops, reasons, failures)
    return GateResult(passed, reasons, failures)


def _refused(reason: str) -> GateResult:
    return GateResult(False, [reason], [reason])


def _stops(stops: dict[str, dict] | None, reasons: list[str], failures: list[str]) -> bool:
    """The generation check: the candidate still ends its answers as often as the champion, within STOP_DROP."""
    mine, theirs = (stops or {}).get("candidate") or {}, (stops or {}).get("champion") or {}
    if not mine.get("generated") or not theirs.get("generated"):
        return True
    now, then = mine["stopped"] / mine["generated"], theirs["stopped"] / theirs["generated"]
    ok = now >= then - STOP_DROP
    reasons.append(f"generation check: {mine['stopped']} of {mine['generated']} answers end with the end token "
                   f"({now:.2f}; champion {then:.2f}) " + ("" if ok else f"< {then:.2f} - {STOP_DROP}: the model no "
                                                          "longer stops its answers"))
    if not ok:
        failures.append(reasons[-1])
    return ok


# metrics whose sign test counts the rows the task's `correct` says changed (the child's paired
# "lost"/"gained"): a row right or wrong, or for entity_f1 a sentence whose entities are all found
ROW_PAIRED = ("accuracy", "entity_f1")


def _pooled(small: list[str], candidate: Scores, champion: Scores, sizes: dict[str, int], unit: str,
            config: GateConfig, paired: dict[str, dict], reasons: list[str], failures: list[str]) -> bool:
    metric = config.metric
    lower = lower_is_better(metric)
    # the drop of a set is its score's, except in accuracy, where it is the changed rows' net count
    scored = metric != "accuracy"
    changed, drops, counted, rowwise = {}, {}, set(), {}
    for e in small:
        drops[e] = worse(metric, champion.per_experience[e], candidate.per_experience[e])  # type: ignore[arg-type]
        counts = (paired.get(e) or {}).get(metric) if lower else paired.get(e) if metric in ROW_PAIRED else None
        if counts:  # the child counted the set's changed rows in this metric's own terms
            counted.add(e)
            if lower and counts.get("changes"):  # and kept each row's change: tested with its size
                rowwise[e] = [float(x) for x in counts["changes"]]
        changed[e] = (Changed(int(counts["lost"]), int(counts["gained"])) if counts
                      else Changed(sizes[e], 0) if lower and drops[e] > 0 else Changed(0, sizes[e]) if lower
                      else Changed.fewest(drops[e], sizes[e]))
    ok = True
    ceiling = round(config.max_forgetting * (1 + NOISE_BAND), 12)
    for e in small:  # forgetting confined to one small set, hidden in the pool by gains elsewhere
        c = changed[e]
        drop = drops[e] if scored else (c.lost - c.gained) / sizes[e]
        alpha = SIGNIFICANCE / len(small)
        p, test = _tested(rowwise.get(e), c) if drop > config.max_forgetting else (1.0, "")  # read only past it
        if drop > config.max_forgetting and p < alpha:
            ok = False
            reasons.append(f"forgetting on batch {e}: {drop:.3f} > {config.max_forgetting} ({c.lost} rows lost, "
                           f"{c.gained} gained {_of(sizes[e], unit)}; {test} p={p:.2g} < {alpha:.2g})")
            failures.append(reasons[-1])
        elif scored and e in counted and len(small) > 1 and drop > ceiling:
            # a row's loss, or a set's F1, is a size the sign test does not see: a few rows whose loss
            # rose far (entities lost in a few sentences) lift a set's figure while as many rows move
            # the other way a little; the sign-flip test sees sizes, but on a set of a few rows it
            # cannot reach the level divided among the sets (7 rows: p >= 1/128). Past the noise band
            # that is forgetting
            ok = False
            reasons.append(f"forgetting on batch {e}: {drop:.3f} > {ceiling:.3g} ({c.lost} rows lost, {c.gained} "
                           f"gained {_of(sizes[e], unit)}), beyond what noise may excuse: forgetting, whatever the "
                           f"{test} (p={p:.2g})")
            failures.append(reasons[-1])
    pooled = sum(sizes[e] for e in small)
    lost, gained = sum(changed[e].lost for e in small), sum(changed[e].gained for e in small)
    if lower:  # a rise in nats, each set weighed by its rows
        drop = round(sum(drops[e] * sizes[e] for e in small) / pooled, 12)
        tolerance = config.max_forgetting
    else:
        drop = round((sum(drops[e] * sizes[e] for e in small) if scored else lost - gained) / pooled, 12)
        tolerance = max(config.max_forgetting, round(1 / pooled, 12))  # a pool cannot resolve less than one row
    ceiling = round(tolerance * (1 + NOISE_BAND), 12)
    within = drop <= tolerance
    every = len(rowwise) == len(small)  # every set's rows' changes kept: the pool's, with their sizes
    p, test = (1.0, "") if within else _tested([x for e in small for x in rowwise[e]] if every else None,
                                               Changed(lost, gained))
    band = not within and drop <= ceiling
    noise = band and p >= SIGNIFICANCE
    ok &= within or noise
    what = f"batch {small[0]}" if len(small) == 1 else f"batches {', '.join(small)} pooled"
    reasons.append(f"forgetting on {what} ({pooled} {unit}; {lost} {'' if unit == 'rows' else 'rows '}lost, {gained} gained): "
                   f"{drop:.3f} {'<=' if within else '>'} {tolerance:.3g}"
                   + (f" (one {'entity' if unit == 'entities' else 'row'}; max_forgetting {config.max_forgetting} is finer)"
                      if tolerance > config.max_forgetting else "")
                   + ("" if within
                      else f"; <= {ceiling:.3g} and {test} p={p:.2g} >= {SIGNIFICANCE}: within noise" if noise
                      else f"; {test} p={p:.2g} < {SIGNIFICANCE}" if band
                      else f" and > {ceiling:.3g}, beyond what noise may excuse: forgetting, whatever the {test} "
                           f"(p={p:.2g})"))
    if not (within or noise):
        failures.append(reasons[-1])
    return ok


def _tested(changes: list[float] | None, changed: Changed) -> tuple[float, str]:
    """The p-value that rows moved this way by chance, and the test's name: the sign-flip test on each
    row's change where the child kept them, the sign test on the changed rows' counts otherwise."""
    if changes:
        return sign_flip_test(changes), "sign-flip test"
    return sign_test(changed.lost, changed.gained), "sign test"


def _of(size: int, unit: str) -> str:
    return f"of {size}" if unit == "rows" else f"of a set of {size} {unit}"


def floor(metric: str, baseline: float | None, batch_labels: int = 0, model_labels: int = 0) -> tuple[float, str] | None:
    """The score a model that ignores the text reaches on the new batch's held-out rows, and what it is (None: no floor)."""
    if baseline is None or not 0 < baseline <= 1:
        return None
    if batch_labels == 1 or (batch_labels == 0 and baseline >= 1 - 1e-9):
        # one label: always saying it is perfect and proves nothing, so the floor is a guess over the model's labels
        if metric == "accuracy" and model_labels >= 2:
            return 1 / model_labels, f"a uniform guess over the model's {model_labels} labels (the rows carry one label)"
        return None
    if metric == "accuracy":
        return baseline, "the majority-class baseline"
    if metric == "macro_f1" and batch_labels >= 2:  # over the labels present: its F1 on its label, 0 on the others
        return (2 * baseline / (1 + baseline) / batch_labels,
                f"the macro F1 of always saying the most common of its {batch_labels} labels")
    return None  # a metric whose constant score is not known here


def majority_share(labels: list[str]) -> float | None:
    if not labels:
        return None
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)


def recheck(metrics: dict, new: str, config: GateConfig) -> GateResult:
    """The gate again, under the current config, over the score tables a decision recorded. The tables
    hold one metric, the one judged then (`metric`): under another `gate.metric` (or another task's),
    their figures would be read as what they are not (a loss as an accuracy), so the re-check fails,
    saying why."""
    recorded = metrics.get("metric")
    if recorded and recorded != config.metric:
        return _refused(f"its scores were recorded in {recorded} and gate.metric is {config.metric}: the gate cannot "
                        f"be re-checked in another metric (set gate.metric = \"{recorded}\")")

    def scores(who: str) -> Scores | None:
        table = metrics.get(who)
        if not table:
            return None
        return Scores(per_experience=dict(table.get("per_experience") or {}), canary=table.get("canary"))

    candidate = scores("candidate")
    if candidate is None:
        return GateResult(False, ["no recorded scores to check the gate on"])
    rows = {k: int(v) for k, v in (metrics.get("rows") or {}).items()}
    return decide(new=new, candidate=candidate, champion=scores("champion"), rows=rows, config=config,
                  baseline=metrics.get("baseline"), canary_rows=rows.get("canary", 0), paired=metrics.get("paired"),
                  batch_labels=int(metrics.get("batch_labels") or 0), model_labels=int(metrics.get("model_labels") or 0),
                  first_against_base=bool(metrics.get("first_against_base")), stops=metrics.get("stops"),
                  entities=metrics.get("entities"))
