"""An adapter epoch judged on the validation pack with the pins' own paired tests, before the pins see it.

The held-out slice of the training rows is too small to show a 1.5-point loss on one large segment
(a few rows of it fall there), yet the gate's pins see that loss on their 800 rows. The validation
pack is drawn like the pinned pack, so every pin's segment has about as many rows there as on the
pins: an epoch *holds* when no pin's drop against the champion is significant beyond its margin
(`regressed`), and, on every pin large enough to vouch (its smallest detectable drop is within its
margin), the drop's upper bound is within `max_drop` as well: what the pins call "ok". Latency is not
judged here (it is the served engine's, measured by the candidate's pin run).
"""

from dataclasses import dataclass

import polars as pl

from modelsmith.evaluate import PinResult, score_pins
from modelsmith.pins import PinSet


@dataclass(frozen=True)
class ValidationVerdict:
    holds: bool
    failing: tuple[str, ...]  # "pin: why" for each pin that does not hold
    worst_upper: float  # the largest drop upper bound among the pins that vouch (how far from holding)

    def as_dict(self) -> dict:
        return {"holds": self.holds, "failing": list(self.failing), "worst_upper": self.worst_upper}


def _vouches(r: PinResult) -> bool:
    """Large enough to detect a drop of its margin, with a paired drop measured."""
    return r.min_detectable_drop <= r.max_drop and r.drop_upper is not None


def _why_not(r: PinResult) -> str | None:
    if r.regressed:
        return f"{r.pin}: regressed by {r.drop:.4f} (upper bound {r.drop_upper:.4f} > max_drop {r.max_drop})"
    if _vouches(r) and r.drop_upper > r.max_drop:
        return (f"{r.pin}: drop {r.drop:+.4f} on {r.reference_rows} rows not ruled out "
                f"(upper bound {r.drop_upper:.4f} > max_drop {r.max_drop})")
    return None


def judge_on_validation(pins: PinSet, rows: pl.DataFrame, predicted: list[str]) -> ValidationVerdict:
    """`rows`: validation rows with `row_id`, the policy's `expected` and the `champion`'s decision."""
    preds = rows.with_columns(pl.Series("predicted", predicted, dtype=pl.String), pl.lit(0.0).alias("latency_ms"))
    preds = preds.with_columns((pl.col("predicted") == pl.col("expected")).alias("correct"))
    reference = rows.select("row_id", (pl.col("champion") == pl.col("expected")).alias("reference_correct"))
    results = score_pins(pins, preds, reference)
    failing = tuple(why for why in map(_why_not, results) if why)
    uppers = [r.drop_upper for r in results if _vouches(r)]
    return ValidationVerdict(holds=not failing, failing=failing, worst_upper=max(uppers, default=0.0))
