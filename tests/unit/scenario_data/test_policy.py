"""The ground-truth policy: identity by canonical digest, v1 vs v2, and malformed policies refused precisely."""

import polars as pl
import pytest

from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import DECISIONS, POLICIES_DIR, PolicyError, parse_policy, shipped_policy

BASE = """\
name: test
version: 1
rules:
  - name: unsafe
    when:
      sensitive: {eq: true}
    decision: no_bid:unsafe
{extra}
default: bid:shade_mid
"""


def test_digest_is_canonical_not_textual():
    v1 = shipped_policy(1)
    text = (POLICIES_DIR / "v1.yaml").read_text()
    reformatted = "# a comment\n" + text.replace("description: >", "description: >\n  Reworded.\n ", 1)
    assert parse_policy(reformatted).digest == v1.digest
    assert parse_policy(text.replace("gte: 2.0", "gte: 2.5")).digest != v1.digest
    assert len(v1.digest) == 64 and v1.digest != shipped_policy(2).digest


def test_every_label_records_rule_and_policy_digest():
    labelled = label_requests(generate_requests(300, seed=1), shipped_policy(1))
    assert labelled["policy_digest"].unique().to_list() == [shipped_policy(1).digest]
    assert labelled["rule"].null_count() == 0
    assert set(labelled["expected"]) == set(DECISIONS)


def test_v1_and_v2_disagree_only_on_gaming_rows_with_the_layout_signals():
    features = label_requests(generate_requests(5000, seed=11), shipped_policy(1))
    v1 = shipped_policy(1).label(features.drop("expected", "rule", "policy_digest"))
    v2 = shipped_policy(2).label(features.drop("expected", "rule", "policy_digest"))
    differ = v1.with_columns(v2=v2["expected"]).filter(pl.col("expected") != pl.col("v2"))
    assert differ.height > 50
    assert differ.select(
        (pl.col("vertical") == "Video Gaming").all(), pl.col("rewarded").all(), (pl.col("position") == "atf").all(),
        (pl.col("v2") == "bid:shade_high").all(),
    ).row(0) == (True, True, True, True)
    # and every Gaming row with those signals that neither brand safety nor MFA stops does flip
    signal = v1.filter((pl.col("vertical") == "Video Gaming") & pl.col("rewarded") & (pl.col("position") == "atf")
                       & ~pl.col("expected").str.starts_with("no_bid"))
    assert signal.height == differ.height


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  - name: r2\n    when:\n      colour: {eq: red}\n    decision: bid:shade_low",
         "bad.yaml:10: rule 'r2': unknown feature 'colour'"),
        ("  - name: r2\n    when:\n      floor: {gte: cheap}\n    decision: bid:shade_low",
         "bad.yaml:10: rule 'r2': floor.gte: bad threshold 'cheap'"),
        ("  - name: r2\n    when:\n      ad_density: {gte: 1.5}\n    decision: no_bid:mfa",
         "bad.yaml:10: rule 'r2': ad_density.gte: bad threshold 1.5"),
        ("  - name: r2\n    when:\n      sensitive: {eq: true}\n      floor: {gte: 1}\n    decision: bid:shade_low",
         "bad.yaml:8: rule 'r2': unreachable: every row it matches is already decided by rule 'unsafe'"),
        ("  - name: r2\n    when:\n      sensitive: {eq: true}\n    decision: bid:shade_low",
         "bad.yaml:8: rule 'r2': conflicting"),
        ("  - name: r2\n    when:\n      floor: {between: 1}\n    decision: bid:shade_low",
         "rule 'r2': floor: operator 'between' not allowed"),
        ("  - name: r2\n    when:\n      floor: {gte: 1}\n    decision: bid:maybe",
         "bad.yaml:8: rule 'r2': `decision` must be one of"),
        ("  - name: r2\n    at_least: 4\n    of:\n      floor: {gte: 1}\n      slots: {gte: 3}\n    decision: no_bid:mfa",
         "bad.yaml:8: rule 'r2': `at_least` must be an integer from 1 to 2"),
    ],
)
def test_malformed_policies_are_refused_naming_rule_and_line(extra, message):
    with pytest.raises(PolicyError) as err:
        parse_policy(BASE.replace("{extra}", extra), source="bad.yaml")
    assert str(err.value).startswith("bad.yaml:")
    assert message in str(err.value), str(err.value)


def test_not_yaml_is_refused_with_its_line():
    with pytest.raises(PolicyError, match=r"bad.yaml:4: not valid YAML"):
        parse_policy("name: x\nversion: 1\nrules: [\n", source="bad.yaml")
