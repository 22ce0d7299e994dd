"""The statistical critic (the embedded default, offline): slice analysis in DuckDB over the traces.

For each regressed pin, every prompt feature's values (its prompt words, so numbers are in their
buckets) are ranked by error lift: the error rate among traced rows with that value over the error
rate of the pin's traced rows, with a Wilson interval. A value is implicated when its interval's
lower bound is above the pin's error rate and it covers most failing rows; the features are then
ordered by their mean leave-one-out attribution on the failing rows. The synthesis targets the
pin's own segment, with a replay buffer of the others.

When several pins regressed, the cause is looked for once across all of them (their traces pooled,
each row once): a policy change that spans segments (a threshold, a rule across verticals) is one
cause, not the worst segment's. The synthesis targets the cause (the values every failing row
shares) wherever it occurs in the union of the regressed segments (everywhere, when the `all` pin
or a segment-free pin regressed), with near misses (the cause's values outside the union) when
the union restricts it, so the data reaches every pin the change touched and the model sees where
the change stops.
"""

import hashlib
from dataclasses import replace

import duckdb
import polars as pl

from modelsmith.critics import CriticInput
from modelsmith.diagnosis import Diagnosis, Provenance, validate_diagnosis
from modelsmith.prompt import PROMPT_FEATURES, Bucketed, prompt_words
from scenario_data.policy import BOOLEAN
from modelsmith.stats import wilson_interval
from modelsmith.traces import ATTR_PREFIX

SLICE_SQL = """
SELECT pin, feature, word, count(*) AS n, sum(failed::INT) AS errors
FROM words
GROUP BY pin, feature, word
"""
MIN_COVERAGE = 0.5  # an implicated value covers at least half the failing rows
MIN_LIFT = 1.5
ALL_FAILURES = 0.95  # a value this share of the failing rows have is part of a cross-segment cause


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

    def __init__(self, rows_per_failure: int = 20, min_rows: int = 1_500, max_rows: int = 2_000, replay_ratio: float = 1.5,
                 contrast_share: float = 0.3, stages: tuple[str, ...] = ("sft",), segments_replay_ratio: float = 3.0,
                 max_training_rows: int | None = None, min_rows_per_segment: int = 100):
        self.rows_per_failure, self.min_rows, self.max_rows = rows_per_failure, min_rows, max_rows
        self.replay_ratio, self.contrast_share, self.stages = replay_ratio, contrast_share, stages
        # A cause found in some segments (a vertical's tablets) is taught with twice the replay: with 1.5,
        # the adapter learnt the cause in a vertical no pin asked for (measured on the travel_tablet drift).
        self.segments_replay_ratio = segments_replay_ratio
        # An optional time budget (None, the default: none; the README says why it is off): SFT time is rows
        # (target + replay) times epochs, and 14,400 rows (a cause in 8 segments, three replay rows per target
        # row) took 10 epochs of 18.5 s on 2 cores, a 254 s cycle.
        # The replay ratio is kept (it protects the other segments); the target rows give way, never below
        # `min_rows_per_segment` per regressed segment: 53 rows each for 38 segments left SFT unsettled and the
        # candidate 12 points worse everywhere (measured on threshold_high_floor; the README has the suite).
        self.max_training_rows, self.min_rows_per_segment = max_training_rows, min_rows_per_segment

    def diagnose(self, inp: CriticInput) -> Diagnosis:
        traces = inp.traces
        if traces.height == 0 or not inp.regressed:
            raise ValueError(f"cycle {inp.cycle}: no regressed pin and no failing row to diagnose")
        regressed = sorted(inp.regressed, key=lambda r: -(r.get("drop") or 0.0))
        many = len(regressed) > 1
        pooled = "the regressed pins"
        if many:  # one cause across segments: every traced row once, under one name
            traces = traces.unique("row_id", keep="first", maintain_order=True).with_columns(pl.lit(pooled).alias("pin"))
        target = pooled if many else regressed[0]["pin"]
        slices = feature_slices(traces)
        pin_errors = slices.filter(pl.col("pin") == target)
        base_rate = float(pin_errors["pin_errors"][0] / pin_errors["pin_rows"][0])
        implicated = pin_errors.filter((pl.col("ci_low") > base_rate) & (pl.col("coverage") >= MIN_COVERAGE)
                                       & (pl.col("lift") >= MIN_LIFT))
        if implicated.height == 0:  # mostly failing rows traced (a big regression on coarse pins): lift <= 1/base rate,
            # so MIN_LIFT may be out of reach; ask for half the lift attainable instead, still significant
            attainable = 1 + (1 / max(base_rate, 1e-9) - 1) / 2
            implicated = pin_errors.filter((pl.col("ci_low") > base_rate) & (pl.col("coverage") >= MIN_COVERAGE)
                                           & (pl.col("lift") >= min(MIN_LIFT, attainable)))
        failing = traces.filter(pl.col("failed") & (pl.col("pin") == target))
        attribution = {f.column: float(failing[f"{ATTR_PREFIX}{f.column}"].abs().mean() or 0.0) for f in PROMPT_FEATURES}
        findings = []
        for feature, group in implicated.group_by("feature", maintain_order=True):
            findings.append({"feature": feature[0], "values": [w.split("=", 1)[1] for w in group["word"]],
                             "error_lift": float(group["lift"].max()), "attribution": attribution[feature[0]],
                             "coverage": float(group["coverage"].sum())})
        findings.sort(key=lambda f: -f["attribution"])
        if not findings:  # nothing stands out: the whole segment is the finding
            top = max(attribution, key=attribution.get)
            findings = [{"feature": top, "values": [], "error_lift": 1.0, "attribution": attribution[top], "coverage": 0.0}]
        coverage, purity = _coverage_and_purity(traces.filter(pl.col("pin") == target), findings)
        expected = failing["expected"].mode().to_list()[0]
        predicted = failing["predicted"].mode().to_list()[0]
        if many:
            causes = _causes(findings)
            filters = _union_of_segments([inp.pin_filters[r["pin"]] for r in regressed])
        else:  # one segment: narrowed to the cause only when every failing row has it
            causes = [f for f in _causes(findings) if f["coverage"] >= ALL_FAILURES and _condition(f)]
            filters = dict(inp.pin_filters[regressed[0]["pin"]])
        segment = dict(filters)
        # Near misses (the cause's values outside the regressed segments) exist only when the
        # segments restrict the filter; a change across every segment is the whole filter.
        contrast = self.contrast_share if filters else 0.0
        narrowed = bool(contrast) and (many or bool(causes))  # a cause within some segments
        for cause in causes:
            filters |= _condition(cause)
        # Segments narrowed to their cause: the segments' own rows without the cause are near misses too
        # (labelled by the policy). Without them the adapter learnt the segment, or the cause's values,
        # alone (measured: the default story's Gaming app rewarded rows below the fold went to shade_high;
        # travel_tablet's Travel rows on phones and desktops went to shade_high, Travel/site 0.88 -> 0.56).
        near_in_segment = narrowed and all(filters.get(k) == c for k, c in segment.items()) and filters != segment
        findings = causes + [f for f in findings if f not in causes]
        named = ", ".join(f"{f['feature']} in {f['values']}" if f["values"] else f["feature"] for f in findings[:3])
        where = (f"Across {len(regressed)} regressed pins ({', '.join(r['pin'] for r in regressed[:4])}"
                 f"{', ...' if len(regressed) > 4 else ''}), one cause" if many else f"In {target}")
        hypothesis = (f"{where}: the failures concentrate where {named} (lift up to "
                      f"{max(f['error_lift'] for f in findings):.1f}x, {coverage:.0%} of failing rows): the model "
                      f"still answers {predicted} where the policy now expects {expected}.")
        rows = max(self.min_rows, min(self.max_rows * (2 if many else 1), self.rows_per_failure * failing.height))
        replay_ratio = self.segments_replay_ratio if narrowed else self.replay_ratio
        if self.max_training_rows is not None:
            budget = int(self.max_training_rows / (1 + replay_ratio))
            rows = min(rows, max(budget, self.min_rows_per_segment * len(regressed)))
        raw = {"segments": [r["pin"] for r in regressed],
               "features": [{k: v for k, v in f.items() if k != "coverage"} for f in findings],
               "hypothesis": hypothesis[:600], "confidence": round(coverage * purity, 3),
               "synthesis": {"filters": filters, "rows": rows,
                             "replay_ratio": replay_ratio,
                             "contrast_share": contrast, **({"segment": segment} if near_in_segment else {})},
               "recipe": {"stages": list(self.stages)}}
        provenance = Provenance("statistical", "duckdb slice analysis", hashlib.sha256(SLICE_SQL.encode()).hexdigest(),
                                inp.input_digest)
        diagnosis = validate_diagnosis(raw, cycle=inp.cycle, known_segments={r["pin"] for r in inp.regressed},
                                       provenance=provenance)
        table = implicated.select("feature", "word", "n", "errors", "error_rate", "ci_low", "ci_high", "lift", "coverage")
        return replace(diagnosis, extra={"slices": table.to_dicts(), "base_error_rate": base_rate,
                                         "coverage": coverage, "purity": purity, "attribution": attribution})


def _causes(findings: list[dict]) -> list[dict]:
    """The findings every failing row shares (written as one conjunctive filter), else the widest one."""
    usable = [f for f in findings if f["values"] and _condition(f)]
    shared = [f for f in usable if f["coverage"] >= ALL_FAILURES]
    return shared or [max(usable or findings, key=lambda f: (f["coverage"], f["error_lift"]))]


def _condition(finding: dict) -> dict[str, dict]:
    """A finding's values (prompt words: buckets, '1', 'Video_Gaming') as a filter in the policy grammar."""
    feature = next((f for f in PROMPT_FEATURES if f.column == finding["feature"]), None)
    values = [v for v in finding["values"] if v != "none"]
    if feature is None or not values:
        return {}
    if isinstance(feature, Bucketed):
        labels = feature.labels()
        index = sorted(labels.index(v) for v in values if v in labels)
        if not index:
            return {}
        edges = (float("-inf"), *feature.edges, float("inf"))
        lo, hi = edges[index[0]], edges[index[-1] + 1]  # contiguous cover of the implicated buckets
        cond = {**({"gte": lo} if lo != float("-inf") else {}), **({"lt": hi} if hi != float("inf") else {})}
        return {feature.column: cond} if cond else {}
    if feature.column in BOOLEAN:
        return {feature.column: {"eq": values[0] == "1"}} if len(values) == 1 else {}
    if feature.column == "gdpr":
        return {feature.column: {"in": [int(v) for v in values]}}
    return {feature.column: {"in": [v.replace("_", " ") for v in values]}}


def _union_of_segments(wheres: list[dict[str, dict]]) -> dict[str, dict]:
    """The regressed pins' segments as one filter: per column, the `eq` values any of them names.

    A column a pin leaves free (or constrains otherwise) is left free: the union may be wider than
    the segments, never narrower; target rows are labelled by the policy, so wider is safe.
    """
    columns = set().union(*(w.keys() for w in wheres)) if wheres else set()
    out = {}
    for column in sorted(columns):
        conds = [w.get(column) for w in wheres]
        if all(c is not None and set(c) == {"eq"} for c in conds):
            out[column] = {"in": sorted({c["eq"] for c in conds}, key=str)}
    return out


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
