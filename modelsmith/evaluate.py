"""Pinning: a model version's predictions on the replayed auctions, scored per pin, against a reference.

The composite score of a pin is `accuracy x min(1, budget / p99 latency)`: accuracy, discounted
in proportion when the segment's p99 latency is over its budget. The composite of a model version
is the mean over its pins (unweighted: a small segment counts as much as a big one, because the
stability of unrelated segments matters as much as the repaired one).

A pin passes when its accuracy is at least the floor, its p99 latency within the budget, and it
did not regress. It regresses when, on the rows it shares with the reference, the paired test
finds the drop significant (p < alpha) and the drop is larger than the pin's `max_drop`.
"""

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from modelsmith.pins import Pin, PinSet
from modelsmith.stats import PairedResult, paired_test, wilson_interval
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


def score_pin(pin: Pin, preds: pl.DataFrame, reference: pl.DataFrame | None, test: str, alpha: float) -> PinResult:
    """One pin on one model version's predictions; `reference` is (row_id, reference_correct) or None."""
    seg = preds.filter(pin.mask(preds))
    n, correct = seg.height, int(seg["correct"].sum()) if seg.height else 0
    accuracy = correct / n if n else 0.0
    ci_low, ci_high = wilson_interval(correct, n)
    p50, p95, p99 = _quantiles(seg["latency_ms"].to_numpy())
    composite = accuracy * (min(1.0, pin.latency_p99_ms / p99) if p99 > 0 else 1.0)
    paired: PairedResult | None = None
    if reference is not None and n:
        both = seg.select("row_id", "correct").join(reference, on="row_id", how="inner")
        if both.height:
            paired = paired_test(both["reference_correct"].to_numpy(), both["correct"].to_numpy(), test)
    regressed = bool(paired is not None and paired.p_value < alpha and paired.drop > pin.max_drop)
    reasons = []
    if n < pin.min_rows:
        reasons.append(f"{n} rows < min_rows {pin.min_rows}")
    if accuracy < pin.accuracy_floor:
        reasons.append(f"accuracy {accuracy:.4f} < floor {pin.accuracy_floor}")
    if p99 > pin.latency_p99_ms:
        reasons.append(f"p99 latency {p99:.1f} ms > budget {pin.latency_p99_ms} ms")
    if regressed:
        reasons.append(f"regressed by {paired.drop:.4f} (> {pin.max_drop}), {test} p = {paired.p_value:.2g} < {alpha}")
    return PinResult(
        pin=pin.name, check_name=pin.check_name, segment=pin.describe(), rows=n, correct=correct, accuracy=accuracy,
        ci_low=ci_low, ci_high=ci_high, latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
        composite=composite, accuracy_floor=pin.accuracy_floor, latency_p99_budget_ms=pin.latency_p99_ms,
        max_drop=pin.max_drop, reference_rows=paired.n if paired else 0,
        reference_accuracy=paired.reference_accuracy if paired else None, drop=paired.drop if paired else None,
        worse=paired.worse if paired else 0, better=paired.better if paired else 0,
        p_value=paired.p_value if paired else None, test=test, regressed=regressed, passed=not reasons,
        reasons="; ".join(reasons),
    )


def score_pins(pins: PinSet, preds: pl.DataFrame, reference: pl.DataFrame | None = None) -> list[PinResult]:
    return [score_pin(p, preds, reference, pins.test, pins.alpha) for p in pins.pins]


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
    lines = ["| pin | rows | accuracy | 95% CI | p99 ms | composite | drop | p | passed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        drop = f"{r.drop:+.4f}" if r.drop is not None else "–"
        p = f"{r.p_value:.2g}" if r.p_value is not None else "–"
        lines.append(f"| {r.pin} | {r.rows} | {r.accuracy:.4f} | {r.ci_low:.3f}–{r.ci_high:.3f} | {r.latency_p99_ms:.1f} "
                     f"| {r.composite:.4f} | {drop} | {p} | {'✅' if r.passed else '❌ ' + r.reasons} |")
    return "\n".join(lines)
