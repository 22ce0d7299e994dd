"""Pinning: a model version's predictions on the replayed auctions, scored per pin, against a reference.

The composite score of a pin is `accuracy x min(1, budget / p99 latency)`: accuracy, discounted
in proportion when the segment's p99 latency is over its budget. The composite of a model version
is the mean over its pins (unweighted: a small segment counts as much as a big one, because the
stability of unrelated segments matters as much as the repaired one).

Every judgement that fails a pin needs evidence, weighed across the whole run:

- *below its floor*: the exact binomial test of "accuracy < floor" is significant;
- *regressed*: the paired test against the reference finds a drop, and the drop's one-sided 95 %
  upper confidence bound is above the pin's `max_drop`, its non-inferiority margin (a drop whose
  bound stays inside the margin is reported in the pin's notes, not failed);
- *over its latency budget*: significantly more than 1 % of the segment's decisions took longer
  than the budget (its p99), by the exact binomial test; a p99 over the budget without that
  evidence (one slow micro-batch in a small segment) is a note.

The p-values of one run (a floor, a latency and a paired test per pin) are one family, adjusted with
Holm's procedure at the pin file's `alpha`. Holm, not Benjamini-Hochberg: the gate's verdict is
"no pin failed", so what must be bounded is the chance that *any* pin of a good candidate fails
by chance (the family-wise error rate, which Holm controls), not the share of false flags among
the flags (the false discovery rate, which BH controls and which lets that chance grow with the
number of pins).

A pin is *inconclusive* (never "ok") when it did not fail but cannot vouch either: its segment is
too small for even the best case of its `max_drop` to be significant at the run's Bonferroni level
(`alpha / number of tests`), a drop was neither significant nor ruled out by its bound, or its
accuracy is below the floor without evidence. "ok" means shown: inside the floor and the margin.
"""

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from modelsmith.pins import Pin, PinSet
from modelsmith.stats import (PairedResult, drop_upper_bound, floor_test, holm, min_detectable_drop, over_budget_test,
                             paired_test, wilson_interval)
from scenario_data.policy import DECISIONS


@dataclass(frozen=True)
class PinResult:
    pin: str
    check_name: str
    segment: str
    rows: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    composite: float
    accuracy_floor: float
    latency_p99_budget_ms: float
    max_drop: float
    reference_rows: int
    reference_accuracy: float | None
    drop: float | None
    worse: int
    better: int
    p_value: float | None
    test: str
    regressed: bool
    passed: bool
    reasons: str
    floor_p_value: float = 1.0
    floor_p_adjusted: float = 1.0
    p_adjusted: float | None = None
    drop_upper: float | None = None
    min_detectable_drop: float = 1.0
    inconclusive: bool = False
    status: str = "ok"  # ok | inconclusive | failed
    notes: str = ""  # why a pin is inconclusive, or a significant drop inside its margin

    def as_dict(self) -> dict:
        return asdict(self)


def predictions_frame(labelled: pl.DataFrame, decided: pl.DataFrame) -> pl.DataFrame:
    """The labelled rows with the engine's decision, label probabilities, latency and `correct`."""
    if labelled.height != decided.height:
        raise ValueError(f"{decided.height} decisions for {labelled.height} rows")
    out = labelled.hstack(decided)
    return out.with_columns((pl.col("predicted") == pl.col("expected")).alias("correct"))


def _quantiles(latency: np.ndarray) -> tuple[float, float, float]:
    if latency.size == 0:
        return 0.0, 0.0, 0.0
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    return float(p50), float(p95), float(p99)


@dataclass(frozen=True)
class _Measured:
    pin: Pin
    rows: int
    correct: int
    latency: tuple[float, float, float]
    paired: PairedResult | None
    floor_p: float
    latency_p: float
    over_budget: int


def _measure(pin: Pin, preds: pl.DataFrame, reference: pl.DataFrame | None, test: str) -> _Measured:
    seg = preds.filter(pin.mask(preds))
    n, correct = seg.height, int(seg["correct"].sum()) if seg.height else 0
    paired: PairedResult | None = None
    if reference is not None and n:
        both = seg.select("row_id", "correct").join(reference, on="row_id", how="inner")
        if both.height:
            paired = paired_test(both["reference_correct"].to_numpy(), both["correct"].to_numpy(), test)
    latency = seg["latency_ms"].to_numpy()
    over = int((latency > pin.latency_p99_ms).sum())
    return _Measured(pin, n, correct, _quantiles(latency), paired, floor_test(correct, n, pin.accuracy_floor),
                     over_budget_test(over, n), over)


TESTS_PER_PIN = 3


def bonferroni_level(alpha: float, pins: int) -> float:
    """The Bonferroni level of a run of `pins` pins (`alpha` over a floor, a latency and a paired test per pin)."""
    return alpha / (TESTS_PER_PIN * pins)


def detection_level(pins: PinSet) -> float:
    """What a lone drop faces in a run of `pins`: the smallest level Holm compares a p-value with."""
    return bonferroni_level(pins.alpha, len(pins.pins))


def _judge(m: _Measured, floor_p_adj: float, latency_p_adj: float, p_adj: float | None, test: str, alpha: float,
           level: float) -> PinResult:
    pin, n, paired = m.pin, m.rows, m.paired
    accuracy = m.correct / n if n else 0.0
    ci_low, ci_high = wilson_interval(m.correct, n)
    p50, p95, p99 = m.latency
    composite = accuracy * (min(1.0, pin.latency_p99_ms / p99) if p99 > 0 else 1.0)
    upper = drop_upper_bound(paired.worse, paired.better, paired.n) if paired else None
    significant_drop = paired is not None and p_adj is not None and p_adj < alpha and paired.drop > 0
    regressed = bool(significant_drop and upper > pin.max_drop)
    mdd = min_detectable_drop(paired.n if paired else n, level)
    reasons, notes = [], []
    if n < pin.min_rows:
        reasons.append(f"{n} rows < min_rows {pin.min_rows}")
    if n and floor_p_adj < alpha:
        reasons.append(f"accuracy {accuracy:.4f} below floor {pin.accuracy_floor} (binomial p = {floor_p_adj:.2g} "
                       f"adjusted < {alpha})")
    elif accuracy < pin.accuracy_floor:
        notes.append(f"accuracy {accuracy:.4f} under floor {pin.accuracy_floor}, not significantly "
                     f"(p = {floor_p_adj:.2g} adjusted)")
    if p99 > pin.latency_p99_ms:
        slow = (f"p99 latency {p99:.2f} ms > budget {pin.latency_p99_ms} ms ({m.over_budget} of {n} decisions over it, "
                f"binomial p = {latency_p_adj:.2g} adjusted")
        if latency_p_adj < alpha:
            reasons.append(slow + f" < {alpha})")
        else:
            notes.append(slow + ", not significant)")
    undecided = False  # a drop neither shown (significant) nor ruled out (bound inside the margin)
    if regressed:
        reasons.append(f"regressed by {paired.drop:.4f} (upper bound {upper:.4f} > max_drop {pin.max_drop}), "
                       f"{test} p = {p_adj:.2g} adjusted < {alpha}")
    elif paired is not None and upper <= pin.max_drop:
        if paired.drop > 0:
            notes.append(f"dropped {paired.drop:.4f} (p = {p_adj:.2g} adjusted), inside the non-inferiority margin: "
                         f"upper bound {upper:.4f} <= max_drop {pin.max_drop}")
    elif paired is not None:
        undecided = True
        notes.append(f"drop {paired.drop:+.4f} not significant (p = {p_adj:.2g} adjusted) and not ruled out: "
                     f"upper bound {upper:.4f} > max_drop {pin.max_drop}")
    small = mdd > pin.max_drop
    if small:
        notes.append(f"{paired.n if paired else n} rows cannot detect a drop of {pin.max_drop} "
                     f"(smallest detectable: {mdd:.3f})")
    passed = not reasons
    inconclusive = passed and (small or undecided or accuracy < pin.accuracy_floor)
    return PinResult(
        pin=pin.name, check_name=pin.check_name, segment=pin.describe(), rows=n, correct=m.correct, accuracy=accuracy,
        ci_low=ci_low, ci_high=ci_high, latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
        composite=composite, accuracy_floor=pin.accuracy_floor, latency_p99_budget_ms=pin.latency_p99_ms,
        max_drop=pin.max_drop, reference_rows=paired.n if paired else 0,
        reference_accuracy=paired.reference_accuracy if paired else None, drop=paired.drop if paired else None,
        worse=paired.worse if paired else 0, better=paired.better if paired else 0,
        p_value=paired.p_value if paired else None, test=test, regressed=regressed, passed=passed,
        reasons="; ".join(reasons), floor_p_value=m.floor_p, floor_p_adjusted=floor_p_adj, p_adjusted=p_adj,
        drop_upper=upper, min_detectable_drop=mdd, inconclusive=inconclusive,
        status="failed" if not passed else ("inconclusive" if inconclusive else "ok"), notes="; ".join(notes),
    )


def score_pins(pins: PinSet, preds: pl.DataFrame, reference: pl.DataFrame | None = None) -> list[PinResult]:
    """Every pin of `pins`, judged together: one Holm family over the run's floor, latency and paired tests."""
    measured = [_measure(p, preds, reference, pins.test) for p in pins.pins]
    family = ([m.floor_p for m in measured] + [m.latency_p for m in measured]
              + [m.paired.p_value for m in measured if m.paired])
    adjusted = iter(holm(family))
    floor_adj = [next(adjusted) for _ in measured]
    latency_adj = [next(adjusted) for _ in measured]
    paired_adj = [next(adjusted) if m.paired else None for m in measured]
    level = detection_level(pins)
    return [_judge(m, f, lat, p, pins.test, pins.alpha, level)
            for m, f, lat, p in zip(measured, floor_adj, latency_adj, paired_adj, strict=True)]


def composite(results: list[PinResult]) -> float:
    return float(np.mean([r.composite for r in results])) if results else 0.0


def results_frame(results: list[PinResult]) -> pl.DataFrame:
    return pl.DataFrame([r.as_dict() for r in results], infer_schema_length=None)


def decision_metrics(pins: PinSet, preds: pl.DataFrame) -> pl.DataFrame:
    """Per pin and per decision: support, precision and recall (null where undefined)."""
    rows = []
    for pin in pins.pins:
        seg = preds.filter(pin.mask(preds))
        for d in DECISIONS:
            tp = int(((seg["expected"] == d) & (seg["predicted"] == d)).sum()) if seg.height else 0
            predicted = int((seg["predicted"] == d).sum()) if seg.height else 0
            actual = int((seg["expected"] == d).sum()) if seg.height else 0
            rows.append({"pin": pin.name, "decision": d, "support": actual, "predicted": predicted,
                         "precision": tp / predicted if predicted else None, "recall": tp / actual if actual else None})
    return pl.DataFrame(rows, schema={"pin": pl.String, "decision": pl.String, "support": pl.Int64,
                                      "predicted": pl.Int64, "precision": pl.Float64, "recall": pl.Float64})


def reference_from_predictions(preds: pl.DataFrame, expected: pl.DataFrame | None = None) -> pl.DataFrame:
    """(row_id, reference_correct) from another run's predictions.

    With `expected` (row_id, expected: today's labels) the reference is that model's decisions
    judged by today's labels: candidate vs champion on the same rows. Without, it is that run's
    own correctness: the champion now vs at its last passing pin.
    """
    if expected is None:
        return preds.select("row_id", pl.col("correct").alias("reference_correct"))
    return (preds.select("row_id", "predicted").join(expected.select("row_id", "expected"), on="row_id", how="inner")
            .select("row_id", (pl.col("predicted") == pl.col("expected")).alias("reference_correct")))


def markdown_table(results: list[PinResult]) -> str:
    lines = ["| pin | rows | accuracy | 95% CI | p99 ms | composite | drop | p (Holm) | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        drop = f"{r.drop:+.4f}" if r.drop is not None else "–"
        p = f"{r.p_adjusted:.2g}" if r.p_adjusted is not None else "–"
        lines.append(f"| {r.pin} | {r.rows} | {r.accuracy:.4f} | {r.ci_low:.3f}–{r.ci_high:.3f} | {r.latency_p99_ms:.2f} "
                     f"| {r.composite:.4f} | {drop} | {p} | {status_text(r)} |")
    return "\n".join(lines)


STATUS_MARK = {"ok": "✅ ok", "inconclusive": "❔ inconclusive", "failed": "❌ failed"}


def status_text(r: PinResult) -> str:
    """A pin's status with why: the reasons of a failure, the notes of an inconclusive or noted pin."""
    why = r.reasons if r.status == "failed" else r.notes
    return STATUS_MARK[r.status] + (f": {why}" if why else "")


STATUS_ORDER = {"failed": 0, "inconclusive": 1, "ok": 2}


def failing_first(results: list[PinResult]) -> list[PinResult]:
    """Failed pins, then inconclusive ones, then the rest, each in pin-file order."""
    return sorted(results, key=lambda r: STATUS_ORDER[r.status])


def every_pin_sentence(results: list[PinResult]) -> str:
    """One sentence: which pins fail and why, or that every pin holds."""
    failed = [r for r in results if r.status == "failed"]
    inconclusive = sum(r.status == "inconclusive" for r in results)
    if not failed:
        return f"every pin holds: {len(results) - inconclusive} ok, {inconclusive} inconclusive"
    return f"{len(failed)} of {len(results)} pins fail: " + "; ".join(f"{r.pin} ({r.reasons})" for r in failed)
