"""The statistical critic on real generated rows: a v1-perfect model judged by policy v2."""

import polars as pl
import pytest

from modelsmith.critics import CriticInput
from modelsmith.diagnosis import DiagnosisError, Provenance, validate_diagnosis
from modelsmith.prompt import PROMPT_COLUMNS
from modelsmith.statistical_critic import StatisticalCritic, feature_slices
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
    assert d.synthesis.filters == WHERE and 500 <= d.synthesis.rows <= 2000
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
