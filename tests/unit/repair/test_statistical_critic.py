"""The statistical critic on real generated rows: a v1-perfect model judged by policy v2."""

import polars as pl
import pytest

from modelsmith.critics import CriticInput
from modelsmith.diagnosis import DiagnosisError, Provenance, validate_diagnosis
from modelsmith.prompt import PROMPT_COLUMNS
from modelsmith.statistical_critic import StatisticalCritic, feature_slices
from modelsmith.synthesis import filter_expr
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import DECISIONS, shipped_policy

PIN = "Video Gaming/app"
WHERE = {"vertical": {"eq": "Video Gaming"}, "inventory_type": {"eq": "app"}}


@pytest.fixture(scope="module")
def traces() -> pl.DataFrame:
    """Every Gaming/app row of a pack: expected by v2, predicted as v1 would (what the default champion does)."""
    requests = generate_requests(6000, seed=21)
    v1, v2 = label_requests(requests, shipped_policy(1)), label_requests(requests, shipped_policy(2))
    rows = v2.with_columns(v1["expected"].alias("predicted")).filter(
        (pl.col("vertical") == "Video Gaming") & (pl.col("inventory_type") == "app"))
    return rows.with_columns(
        pl.lit(PIN).alias("pin"), (pl.col("predicted") != pl.col("expected")).alias("failed"),
        pl.lit(0.99).alias("confidence"),
        *(pl.when(pl.col("predicted") == d).then(0.99).otherwise(0.0025).alias(f"p_{d}") for d in DECISIONS),
        *(pl.lit(0.5 if c in ("rewarded", "position") else 0.01).alias(f"attr_{c}") for c in PROMPT_COLUMNS),
    )


def _input(traces: pl.DataFrame) -> CriticInput:
    failing = int(traces["failed"].sum())
    return CriticInput("c1", "m" * 64, "p" * 64, [{"pin": PIN, "rows": traces.height, "drop": failing / traces.height,
                                                     "p_value": 1e-9}], {PIN: WHERE}, traces)


def test_it_names_gaming_and_the_layout_signals(traces):
    assert traces["failed"].sum() > 20  # v2 changed rewarded, above-the-fold Gaming rows
    d = StatisticalCritic().diagnose(_input(traces))
    assert d.segments == (PIN,)
    named = {f.feature: f.values for f in d.features}
    assert named.get("rewarded") == ("1",) and named.get("position") == ("atf",)
    assert set(named) <= {"rewarded", "position", "media", "size"}  # nothing unrelated carries the failures
    # every failing row is rewarded and above the fold: the data targets the cause within the segment,
    # with near misses outside it and the replay of a cause within some segments
    assert d.synthesis.filters == {**WHERE, "rewarded": {"eq": True}, "position": {"in": ["atf"]}}
    assert 500 <= d.synthesis.rows <= 2000
    assert d.synthesis.contrast_share == 0.3 and d.synthesis.replay_ratio == 3.0
    assert d.synthesis.segment == WHERE  # in-segment near misses: Gaming/app without the cause
    failing = traces.filter("failed")
    assert failing.filter(filter_expr(d.synthesis.filters)).height == failing.height  # the data reaches every failure
    assert "Video Gaming/app" in d.hypothesis and "bid:shade_high" in d.hypothesis
    assert d.confidence > 0.9  # every failing row has both values; most rows with both fail
    assert d.provenance.critic == "statistical" and len(d.provenance.input_digest) == 64
    assert d.recipe.stages == ("sft",)


def test_slices_carry_lift_and_wilson_intervals(traces):
    s = feature_slices(traces).filter(pl.col("word") == "rew=1").row(0, named=True)
    assert s["errors"] == traces.filter(pl.col("rewarded") & pl.col("failed")).height
    assert s["ci_low"] < s["error_rate"] < s["ci_high"] and s["lift"] > 1.5 and s["coverage"] == 1.0
    clean = feature_slices(traces).filter(pl.col("word") == "rew=0").row(0, named=True)
    assert clean["errors"] == 0 and clean["lift"] == 0.0


@pytest.mark.parametrize("patch, field", [
    ({"segments": ["all"]}, "segments"),
    ({"features": [{"feature": "page_title", "values": [], "error_lift": 1}]}, "features[0].feature"),
    ({"confidence": 1.5}, "confidence"),
    ({"synthesis": {"filters": WHERE, "rows": 50_000, "replay_ratio": 1.0}}, "synthesis.rows"),
    ({"synthesis": {"filters": {"vertical": {"regex": ".*"}}, "rows": 500, "replay_ratio": 1.0}}, "synthesis.filters.vertical"),
    ({"synthesis": {"filters": WHERE, "rows": 500, "replay_ratio": 1.0, "segment": {"page_title": {"eq": "x"}}}},
     "synthesis.segment.page_title"),
    ({"synthesis": {"filters": WHERE, "rows": 500, "replay_ratio": 1.0, "segment": {"vertical": {"eq": "Sports"}}}},
     "synthesis.segment"),  # a segment the filters do not narrow
    ({"synthesis": {"filters": WHERE, "rows": 500, "replay_ratio": 1.0, "segment": []}}, "synthesis.segment"),
    ({"recipe": {"stages": ["grpo"]}}, "recipe.stages"),
    ({"actions": ["promote"]}, "(root)"),
])
def test_a_diagnosis_outside_what_exists_or_the_bounds_is_refused(patch, field):
    raw = {"segments": [PIN], "features": [{"feature": "rewarded", "values": ["1"], "error_lift": 2.0}],
           "hypothesis": "Layout signals in Gaming.", "confidence": 0.8,
           "synthesis": {"filters": WHERE, "rows": 500, "replay_ratio": 1.0}, "recipe": {"stages": ["sft"]}}
    prov = Provenance("test", "none", "0" * 64, "0" * 64)
    assert validate_diagnosis(raw, cycle="c", known_segments={PIN}, provenance=prov).segments == (PIN,)
    with pytest.raises(DiagnosisError, match=field.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        validate_diagnosis({**raw, **patch}, cycle="c", known_segments={PIN}, provenance=prov)


def _threshold_traces(pins: dict) -> pl.DataFrame:
    """The high-floor threshold moves from 2.0 to 1.5 in every vertical; a v1 model's traces in `pins`."""
    from modelsmith.synthesis import filter_expr
    from scenario_data.policy import load_policy
    from tests.conftest import REPO

    requests = generate_requests(6000, seed=22)
    v1 = label_requests(requests, shipped_policy(1))
    drift = label_requests(requests, load_policy(REPO / "scenario_data" / "drifts" / "threshold_high_floor.yaml"))
    rows = drift.with_columns(v1["expected"].alias("predicted"), pl.int_range(pl.len()).cast(pl.String).alias("row_id"))
    parts = [rows.filter(filter_expr(where)).with_columns(pl.lit(name).alias("pin")) for name, where in pins.items()]
    return pl.concat(parts).with_columns(
        (pl.col("predicted") != pl.col("expected")).alias("failed"), pl.lit(0.99).alias("confidence"),
        *(pl.when(pl.col("predicted") == d).then(0.99).otherwise(0.0025).alias(f"p_{d}") for d in DECISIONS),
        *(pl.lit(0.5 if c == "floor" else 0.01).alias(f"attr_{c}") for c in PROMPT_COLUMNS))


def test_one_segment_whose_failures_share_no_cause_is_targeted_whole(traces):
    # failures the layout signals do not explain (a tenth of the rows without them): no value covers
    # every failing row, so the data must target the whole segment, not a cause that misses failures
    others = traces.filter(~pl.col("failed")).with_row_index("i")
    noise = others.filter(pl.col("i") % 10 == 0)["row_id"]
    assert noise.len() > 0.1 * traces["failed"].sum()
    noisy = traces.with_columns((pl.col("failed") | pl.col("row_id").is_in(noise.to_list())).alias("failed"))
    d = StatisticalCritic().diagnose(_input(noisy))
    assert d.synthesis.filters == WHERE
    assert d.synthesis.contrast_share == 0.3 and d.synthesis.replay_ratio == 1.5
    assert d.synthesis.segment == {}  # not narrowed: no in-segment near misses


def _diagnose(pins: dict, traces: pl.DataFrame):
    regressed = [{"pin": n, "rows": 100, "drop": 0.05 + i / 100, "p_value": 1e-6} for i, n in enumerate(pins)]
    return StatisticalCritic().diagnose(CriticInput("c2", "m" * 64, "p" * 64, regressed, pins, traces))


def test_a_change_across_every_segment_is_one_cause_and_the_data_targets_it_everywhere():
    from modelsmith.synthesis import filter_expr

    pins = {"all": {}, "Sports/site": {"vertical": {"eq": "Sports"}, "inventory_type": {"eq": "site"}},
            "Travel/app": {"vertical": {"eq": "Travel"}, "inventory_type": {"eq": "app"}}}
    traces = _threshold_traces(pins)
    d = _diagnose(pins, traces)
    assert set(d.segments) == set(pins) and d.hypothesis.startswith("Across 3 regressed pins")
    assert d.features[0].feature == "floor" and d.features[0].values == ("1.5-2",)
    assert d.synthesis.filters == {"floor": {"gte": 1.5, "lt": 2.0}} and d.synthesis.contrast_share == 0.0
    failing = traces.filter("failed").unique("row_id")
    assert failing.filter(filter_expr(d.synthesis.filters)).height == failing.height  # the data reaches every failure


def test_a_change_across_some_segments_targets_the_cause_in_their_union_with_near_misses_outside():
    pins = {f"{v}/{t}": {"vertical": {"eq": v}, "inventory_type": {"eq": t}}
            for v, t in (("Sports", "site"), ("Politics", "site"), ("Travel", "app"))}
    d = _diagnose(pins, _threshold_traces(pins))
    assert d.features[0].feature == "floor" and d.hypothesis.startswith("Across 3 regressed pins")
    assert d.synthesis.filters == {"inventory_type": {"in": ["app", "site"]}, "floor": {"gte": 1.5, "lt": 2.0},
                                   "vertical": {"in": ["Politics", "Sports", "Travel"]}}
    assert d.synthesis.contrast_share == 0.3  # the same floors in the verticals that did not regress
    assert d.synthesis.replay_ratio == 3.0  # and twice the replay, so the cause is not learnt where it does not apply
    # and the segments' own rows without the cause, labelled by the policy (in-segment near misses)
    assert d.synthesis.segment == {"inventory_type": {"in": ["app", "site"]},
                                   "vertical": {"in": ["Politics", "Sports", "Travel"]}}


def test_the_training_rows_stay_within_the_cycles_budget_but_not_below_a_floor_per_segment():
    """Target plus replay stays within `max_training_rows` (SFT time is rows times epochs), the target rows
    giving way and the replay ratio kept; never below `min_rows_per_segment` per regressed segment."""
    pins = {f"{v}/{t}": {"vertical": {"eq": v}, "inventory_type": {"eq": t}}
            for v, t in (("Sports", "site"), ("Politics", "site"), ("Travel", "app"))}
    traces = _threshold_traces(pins)
    regressed = [{"pin": n, "rows": 100, "drop": 0.05 + i / 100, "p_value": 1e-6} for i, n in enumerate(pins)]
    inp = CriticInput("c3", "m" * 64, "p" * 64, regressed, pins, traces)
    unbounded = StatisticalCritic(rows_per_failure=100).diagnose(inp).synthesis  # the default: no budget
    assert unbounded.rows == 4_000 and unbounded.replay_ratio == 3.0  # 16,000 rows in all
    bounded = StatisticalCritic(rows_per_failure=100, max_training_rows=8_000).diagnose(inp).synthesis
    assert bounded.replay_ratio == 3.0 and bounded.rows == 2_000  # 8,000 in all
    assert bounded.filters == unbounded.filters and bounded.segment == unbounded.segment
    floored = StatisticalCritic(rows_per_failure=100, max_training_rows=8_000,
                                min_rows_per_segment=1_000).diagnose(inp).synthesis
    assert floored.rows == 3_000  # three segments, 1,000 each, over the budget
