"""The statistical critic (the embedded default, offline): slice analysis in DuckDB over the traces.

For each regressed pin, every prompt feature's values (its prompt words, so numbers are in their
buckets) are ranked by error lift: the error rate among traced rows with that value over the error
rate of the pin's traced rows, with a Wilson interval. A value is implicated when its interval's
lower bound is above the pin's error rate and it covers most failing rows; the features are then
ordered by their mean leave-one-out attribution on the failing rows. The synthesis targets the
pin's own segment, with a replay buffer of the others.
"""

import hashlib
from dataclasses import replace

import duckdb
import polars as pl

from modelsmith.critics import CriticInput
from modelsmith.diagnosis import Diagnosis, Provenance, validate_diagnosis
from modelsmith.prompt import PROMPT_FEATURES, prompt_words
from modelsmith.stats import wilson_interval
from modelsmith.traces import ATTR_PREFIX

SLICE_SQL = """
SELECT pin, feature, word, count(*) AS n, sum(failed::INT) AS errors
FROM words
GROUP BY pin, feature, word
"""
MIN_COVERAGE = 0.5  # an implicated value covers at least half the failing rows
MIN_LIFT = 1.5


def feature_slices(traces: pl.DataFrame) -> pl.DataFrame:
    """Per pin, feature and value (prompt word): rows, errors, error rate, Wilson interval, lift, coverage."""
    words = pl.DataFrame(
        [{"pin": pin, "failed": failed, "feature": f.column, "word": w}
         for pin, failed, row in zip(traces["pin"], traces["failed"], traces.iter_rows(named=True), strict=True)
         for f, w in zip(PROMPT_FEATURES, prompt_words(row), strict=True)],
        schema={"pin": pl.String, "failed": pl.Boolean, "feature": pl.String, "word": pl.String},
    )
    con = duckdb.connect()
    con.register("words", words)
    slices = con.execute(SLICE_SQL).pl().with_columns(pl.col("n", "errors").cast(pl.Int64))
    totals = traces.group_by("pin").agg(pl.len().alias("pin_rows"), pl.col("failed").sum().cast(pl.Int64).alias("pin_errors"))
    slices = slices.join(totals, on="pin").with_columns(
        (pl.col("errors") / pl.col("n")).alias("error_rate"),
        (pl.col("errors") / pl.col("pin_errors").cast(pl.Float64)).alias("coverage"),
        ((pl.col("errors") / pl.col("n")) / (pl.col("pin_errors") / pl.col("pin_rows").cast(pl.Float64))).alias("lift"),
    )
    lows, highs = zip(*(wilson_interval(int(e), int(n)) for e, n in zip(slices["errors"], slices["n"], strict=True)),
                      strict=True) if slices.height else ((), ())
    return slices.with_columns(pl.Series("ci_low", lows, dtype=pl.Float64), pl.Series("ci_high", highs, dtype=pl.Float64)
                               ).sort(["pin", "lift"], descending=[False, True])


class StatisticalCritic:
    name = "statistical"

    def __init__(self, rows_per_failure: int = 20, min_rows: int = 500, max_rows: int = 2_000, replay_ratio: float = 1.5,
                 contrast_share: float = 0.3, stages: tuple[str, ...] = ("sft",)):
        self.rows_per_failure, self.min_rows, self.max_rows = rows_per_failure, min_rows, max_rows
        self.replay_ratio, self.contrast_share, self.stages = replay_ratio, contrast_share, stages

    def diagnose(self, inp: CriticInput) -> Diagnosis:
        traces = inp.traces
        if traces.height == 0 or not inp.regressed:
            raise ValueError(f"cycle {inp.cycle}: no regressed pin and no failing row to diagnose")
        slices = feature_slices(traces)
        regressed = sorted(inp.regressed, key=lambda r: -(r.get("drop") or 0.0))
        target = regressed[0]["pin"]
        pin_errors = slices.filter(pl.col("pin") == target)
        base_rate = float(pin_errors["pin_errors"][0] / pin_errors["pin_rows"][0])
        implicated = pin_errors.filter((pl.col("ci_low") > base_rate) & (pl.col("coverage") >= MIN_COVERAGE)
                                       & (pl.col("lift") >= MIN_LIFT))
        failing = traces.filter(pl.col("failed") & (pl.col("pin") == target))
        attribution = {f.column: float(failing[f"{ATTR_PREFIX}{f.column}"].abs().mean() or 0.0) for f in PROMPT_FEATURES}
        findings = []
        for feature, group in implicated.group_by("feature", maintain_order=True):
            findings.append({"feature": feature[0], "values": [w.split("=", 1)[1] for w in group["word"]],
                             "error_lift": float(group["lift"].max()), "attribution": attribution[feature[0]]})
        findings.sort(key=lambda f: -f["attribution"])
        if not findings:  # nothing stands out: the whole segment is the finding
            top = max(attribution, key=attribution.get)
            findings = [{"feature": top, "values": [], "error_lift": 1.0, "attribution": attribution[top]}]
        coverage, purity = _coverage_and_purity(traces.filter(pl.col("pin") == target), findings)
        expected = failing["expected"].mode().to_list()[0]
        predicted = failing["predicted"].mode().to_list()[0]
        named = ", ".join(f"{f['feature']} in {f['values']}" if f["values"] else f["feature"] for f in findings[:3])
        hypothesis = (f"In {target}, the failures concentrate where {named} (lift up to "
                      f"{max(f['error_lift'] for f in findings):.1f}x, {coverage:.0%} of failing rows): the model "
                      f"still answers {predicted} where the policy now expects {expected}.")
        rows = max(self.min_rows, min(self.max_rows, self.rows_per_failure * failing.height))
        raw = {"segments": [r["pin"] for r in regressed], "features": findings, "hypothesis": hypothesis[:600],
               "confidence": round(coverage * purity, 3),
               "synthesis": {"filters": inp.pin_filters[target], "rows": rows, "replay_ratio": self.replay_ratio,
                             "contrast_share": self.contrast_share},
               "recipe": {"stages": list(self.stages)}}
        provenance = Provenance("statistical", "duckdb slice analysis", hashlib.sha256(SLICE_SQL.encode()).hexdigest(),
                                inp.input_digest)
        diagnosis = validate_diagnosis(raw, cycle=inp.cycle, known_segments={r["pin"] for r in inp.regressed},
                                       provenance=provenance)
        table = implicated.select("feature", "word", "n", "errors", "error_rate", "ci_low", "ci_high", "lift", "coverage")
        return replace(diagnosis, extra={"slices": table.to_dicts(), "base_error_rate": base_rate,
                                         "coverage": coverage, "purity": purity, "attribution": attribution})


def _coverage_and_purity(traces: pl.DataFrame, findings: list[dict]) -> tuple[float, float]:
    """Share of failing rows with every implicated value, and the error rate among rows that have them."""
    columns = [f.column for f in PROMPT_FEATURES]
    hit, hit_failed = 0, 0
    for row in traces.iter_rows(named=True):
        values = dict(zip(columns, (w.split("=", 1)[1] for w in prompt_words(row)), strict=True))
        if all(values[f["feature"]] in f["values"] for f in findings if f["values"]):
            hit += 1
            hit_failed += bool(row["failed"])
    failing = int(traces["failed"].sum())
    return hit_failed / max(1, failing), hit_failed / max(1, hit)
