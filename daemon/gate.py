"""The promotion gate: a pure function over score tables, with every check and its numbers in the reasons.

The first model must beat the majority-class baseline on its batch's held-out rows. Later ones:
gain on the new batch's held-out rows >= min_gain_new, drop on every earlier batch's held-out rows
<= max_forgetting, canary drop <= max_canary_drop. A held-out set smaller than min_eval_rows is
too coarse to gate on alone (one row of 30 is 0.033, above the default tolerance): such earlier
sets are pooled, counting only losses (a gain on one batch never hides forgetting on another), and
the pool's loss must stay within max_forgetting, or within one row of the pool when that is coarser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.config import GateConfig


@dataclass(frozen=True, kw_only=True)
class Scores:
    """One model's scores in the gate's metric: per experience ("1", "2", ...) and on the canary."""

    per_experience: dict[str, float | None]
    canary: float | None = None


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons)}


def decide(*, new: str, candidate: Scores, champion: Scores | None, rows: dict[str, int], config: GateConfig,
           baseline: float | None = None, canary_rows: int = 0) -> GateResult:
    metric = config.metric
    reasons: list[str] = []
    passed = True
    score = candidate.per_experience.get(new)
    if champion is None:
        if score is None or not rows.get(new):
            return GateResult(False, [f"first model: batch {new} has no held-out rows to score it on"])
        base = baseline if baseline is not None else 0.0
        ok = score > base
        reasons.append(f"first model: {metric} on batch {new} {score:.3f} {'>' if ok else '<='} majority-class baseline {base:.3f}")
        return GateResult(ok, reasons)

    before = champion.per_experience.get(new)
    if score is None or before is None or rows.get(new, 0) < config.min_eval_rows:
        reasons.append(f"batch {new}: {rows.get(new, 0)} held-out rows < min_eval_rows {config.min_eval_rows}; gain not gated")
    else:
        gain = score - before
        ok = gain >= config.min_gain_new
        passed &= ok
        reasons.append(f"gain on batch {new}: {gain:+.3f} {'>=' if ok else '<'} {config.min_gain_new} "
                       f"({metric} {before:.3f} -> {score:.3f})")
    small: list[str] = []
    for experience in sorted(candidate.per_experience, key=int):
        if experience == new:
            continue
        now, then = candidate.per_experience.get(experience), champion.per_experience.get(experience)
        if now is None or then is None or rows.get(experience, 0) < config.min_eval_rows:
            if now is not None and then is not None and rows.get(experience, 0):
                small.append(experience)
            reasons.append(f"batch {experience}: {rows.get(experience, 0)} held-out rows < min_eval_rows "
                           f"{config.min_eval_rows}; not gated alone")
            continue
        drop = then - now
        ok = drop <= config.max_forgetting
        passed &= ok
        reasons.append(f"forgetting on batch {experience}: {drop:.3f} {'<=' if ok else '>'} {config.max_forgetting}")
    if small:
        pooled = sum(rows[e] for e in small)
        # rows lost per set (a set's own gains and losses net out; other sets' gains do not count)
        lost = sum(max(0.0, champion.per_experience[e] - candidate.per_experience[e]) * rows[e] for e in small)  # type: ignore[operator]
        drop = round(lost / pooled, 12)
        tolerance = max(config.max_forgetting, round(1 / pooled, 12))  # a pool cannot resolve less than one row
        ok = drop <= tolerance
        passed &= ok
        reasons.append(f"forgetting on batches {', '.join(small)} pooled ({pooled} rows, losses only): {drop:.3f} "
                       f"{'<=' if ok else '>'} {tolerance:.3g}"
                       + (f" (one row; max_forgetting {config.max_forgetting} is finer)" if tolerance > config.max_forgetting else ""))
    if candidate.canary is not None and champion.canary is not None:
        drop = champion.canary - candidate.canary
        ok = drop <= config.max_canary_drop
        passed &= ok
        reasons.append(f"canary drop: {drop:.3f} {'<=' if ok else '>'} {config.max_canary_drop} ({canary_rows} rows)")
    return GateResult(passed, reasons)


def majority_share(labels: list[str]) -> float | None:
    if not labels:
        return None
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)


def recheck(metrics: dict, new: str, config: GateConfig) -> GateResult:
    """The gate again, under the current config, over the score tables a decision recorded."""
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
                  baseline=metrics.get("baseline"), canary_rows=rows.get("canary", 0))
