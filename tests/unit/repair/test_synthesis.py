"""Targeted synthesis on real generated requests: counts, filters, near misses, labels, pin exclusion."""

import polars as pl
import pytest

from modelsmith.diagnosis import SynthesisSpec
from modelsmith.prompt import PROMPT_FEATURES
from modelsmith.synthesis import (
    SynthesisError,
    anchor_to_champion,
    check_disjoint,
    content_digests,
    filter_expr,
    implicated_mask,
    synthesise,
)
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy

SEED = 7
BATCH = 500
GAMING = {"vertical": {"eq": "Video Gaming"}}
IMPLICATED = {"rewarded": ("1",), "position": ("atf",)}


@pytest.fixture(scope="module")
def policy():
    return shipped_policy(2)


@pytest.fixture(scope="module")
def unrelated_pins(policy) -> pl.DataFrame:
    """Pin scenarios from a seed stream the synthesiser never uses."""
    return label_requests(generate_requests(100, seed=424242), policy)


@pytest.fixture(scope="module")
def first_batch(policy) -> pl.DataFrame:
    """Exactly what the synthesiser's first batch generates for SEED."""
    return label_requests(generate_requests(BATCH, SEED * 1_000_003 + 0), policy)


@pytest.fixture(scope="module")
def with_contrast(policy, unrelated_pins):
    spec = SynthesisSpec(GAMING, rows=30, replay_ratio=2.0, contrast_share=0.5)
    return spec, synthesise(spec, policy, SEED, unrelated_pins, IMPLICATED, batch_requests=BATCH)


def _counts(rows: pl.DataFrame) -> dict[str, int]:
    return {s: int((rows["source"] == s).sum()) for s in ("target", "replay", "contrast")}


NARROWED = {**GAMING, "rewarded": {"eq": True}, "position": {"in": ["atf"]}}


def test_in_segment_near_misses_are_the_segment_without_the_cause_labelled_by_the_policy(policy, unrelated_pins):
    spec = SynthesisSpec(NARROWED, rows=20, replay_ratio=3.0, contrast_share=0.3, segment=GAMING)
    result = synthesise(spec, policy, SEED, unrelated_pins, IMPLICATED, batch_requests=BATCH)
    rows = result.rows
    near = rows.filter(pl.col("source") == "near_miss")
    all_replay, contrast = 60, round(60 * 0.3)
    assert near.height == round(20 * 0.3) == 6  # a share of the target, taken out of the replay rows
    assert _counts(rows) == {"target": 20, "replay": all_replay - contrast - 6, "contrast": contrast}
    assert near.filter(filter_expr(GAMING) & ~filter_expr(NARROWED)).height == near.height  # segment AND NOT cause
    relabelled = policy.label(near.drop("expected", "rule", "policy_digest", "source", "content_digest"))
    assert near["expected"].to_list() == relabelled["expected"].to_list()  # the policy's labels
    assert set(near["policy_digest"]) == {policy.digest}
    assert rows.filter(pl.col("source") == "contrast").filter(filter_expr(GAMING)).height == 0  # those stay outside
    anchored = anchor_to_champion(rows, ["bid:shade_high"] * rows.height)
    assert anchored.filter(pl.col("source") == "near_miss")["expected"].to_list() == near["expected"].to_list()


def test_no_segment_gives_no_in_segment_near_misses(with_contrast):
    _, result = with_contrast
    assert int((result.rows["source"] == "near_miss").sum()) == 0


def test_counts_with_implicated_values(with_contrast):
    spec, result = with_contrast
    all_replay = round(spec.rows * spec.replay_ratio)
    contrast = round(all_replay * spec.contrast_share)
    assert _counts(result.rows) == {"target": 30, "replay": all_replay - contrast, "contrast": contrast}
    assert (all_replay, contrast) == (60, 30)
    assert result.rows.height == 90
    assert result.requests_generated % BATCH == 0 and result.requests_generated >= BATCH


def test_counts_without_implicated_values_have_no_contrast(policy, unrelated_pins):
    spec = SynthesisSpec(GAMING, rows=25, replay_ratio=1.5, contrast_share=0.5)
    for implicated in (None, {}):
        result = synthesise(spec, policy, SEED, unrelated_pins, implicated, batch_requests=BATCH)
        assert _counts(result.rows) == {"target": 25, "replay": round(25 * 1.5), "contrast": 0}


def test_zero_contrast_share_gives_no_contrast_even_with_implicated_values(policy, unrelated_pins):
    spec = SynthesisSpec(GAMING, rows=20, replay_ratio=1.0, contrast_share=0.0)
    result = synthesise(spec, policy, SEED, unrelated_pins, IMPLICATED, batch_requests=BATCH)
    assert _counts(result.rows) == {"target": 20, "replay": 20, "contrast": 0}


def test_targets_match_the_filters_and_nothing_else_does(with_contrast):
    _, result = with_contrast
    rows = result.rows
    match = rows.select(filter_expr(GAMING).alias("m"))["m"]
    target = rows["source"] == "target"
    assert (match == target).all()
    # independently of filter_expr: the plain column
    assert (rows.filter(target)["vertical"] == "Video Gaming").all()
    assert not (rows.filter(~target)["vertical"] == "Video Gaming").any()


def test_contrast_rows_carry_the_implicated_values_outside_the_segment(with_contrast):
    _, result = with_contrast
    contrast = result.rows.filter(pl.col("source") == "contrast")
    assert contrast.height == 30
    assert contrast["rewarded"].to_list() == [True] * 30
    assert contrast["position"].to_list() == ["atf"] * 30
    assert not (contrast["vertical"] == "Video Gaming").any()
    assert implicated_mask(contrast, IMPLICATED).all()


def test_implicated_mask_reads_prompt_words_and_buckets(first_batch):
    rows = first_batch
    mask = implicated_mask(rows, IMPLICATED)
    expected = (rows["rewarded"] & (rows["position"] == "atf")).fill_null(False)
    assert mask.dtype == pl.Boolean and mask.len() == rows.height
    assert (mask == expected).all() and mask.sum() > 0
    floor = next(f for f in PROMPT_FEATURES if f.column == "floor")
    bucket = floor.word(1.2).split("=", 1)[1]  # "1.0-1.5"
    by_floor = implicated_mask(rows, {"floor": (bucket,)})
    in_bucket = ((rows["floor"] >= 1.0) & (rows["floor"] < 1.5)).fill_null(False)
    assert (by_floor == in_bucket).all() and by_floor.sum() > 0
    # no implicated feature (or only empty value lists): nothing is implicated
    assert not implicated_mask(rows, {}).any()
    assert not implicated_mask(rows, {"rewarded": ()}).any()
    # a value no prompt word has
    assert not implicated_mask(rows, {"position": ("nowhere",)}).any()


def test_labels_come_from_the_given_policy(with_contrast, policy):
    _, result = with_contrast
    rows = result.rows
    assert set(rows["policy_digest"]) == {policy.digest}
    assert policy.digest != shipped_policy(1).digest
    relabelled = policy.label(rows.drop("expected", "rule", "policy_digest", "source", "content_digest"))
    assert relabelled["expected"].to_list() == rows["expected"].to_list()
    assert relabelled["rule"].to_list() == rows["rule"].to_list()


def test_content_digests_are_unique_and_ignore_identity_and_labels(with_contrast, first_batch):
    _, result = with_contrast
    rows = result.rows
    assert rows["content_digest"].n_unique() == rows.height
    assert (content_digests(rows) == rows["content_digest"]).all()
    assert rows["row_id"].n_unique() == rows.height
    sample = first_batch.head(5)
    renamed = sample.with_columns(
        ("x-" + pl.col("request_id")).alias("request_id"), ("x-" + pl.col("row_id")).alias("row_id"),
        pl.lit("elsewhere").alias("source_file"), pl.lit("other").alias("expected"), pl.lit("r").alias("rule"))
    assert (content_digests(renamed) == content_digests(sample)).all()
    changed = sample.with_columns((pl.col("slots") + 1).alias("slots"))
    assert not (content_digests(changed) == content_digests(sample)).any()


def test_pin_scenarios_from_the_first_batch_are_excluded_by_request_id(policy, first_batch):
    pins = first_batch.head(200)
    spec = SynthesisSpec(GAMING, rows=30, replay_ratio=1.0)
    result = synthesise(spec, policy, SEED, pins, batch_requests=BATCH)
    assert result.excluded_by_id > 0
    assert check_disjoint(result.rows, pins) == {"same_request_id": 0, "same_content": 0}
    assert not result.rows["request_id"].is_in(pins["request_id"].to_list()).any()
    # without the pins the same synthesis does use rows of those requests: the exclusion mattered
    free = synthesise(spec, policy, SEED, first_batch.clear(), batch_requests=BATCH)
    assert free.excluded_by_id == 0 and free.excluded_by_content == 0
    assert check_disjoint(free.rows, pins)["same_request_id"] > 0


def test_pin_scenarios_with_other_ids_but_the_same_content_are_excluded_by_content(policy, first_batch):
    pins = first_batch.head(200).with_columns(
        ("pin-" + pl.col("request_id")).alias("request_id"), ("pin-" + pl.col("row_id")).alias("row_id"),
        pl.lit("pins.jsonl").alias("source_file"))
    spec = SynthesisSpec(GAMING, rows=30, replay_ratio=1.0)
    result = synthesise(spec, policy, SEED, pins, batch_requests=BATCH)
    assert result.excluded_by_id == 0
    assert result.excluded_by_content > 0
    assert check_disjoint(result.rows, pins) == {"same_request_id": 0, "same_content": 0}
    free = synthesise(spec, policy, SEED, pins.clear(), batch_requests=BATCH)
    assert check_disjoint(free.rows, pins)["same_content"] > 0


def test_check_disjoint_counts_overlaps(first_batch):
    rows = first_batch.with_columns(content_digests(first_batch))
    assert check_disjoint(rows, first_batch.head(0)) == {"same_request_id": 0, "same_content": 0}
    clash = check_disjoint(rows, first_batch.head(1))
    assert clash["same_request_id"] >= 1 and clash["same_content"] >= 1


def test_a_filter_the_generator_never_matches_raises(policy, unrelated_pins):
    spec = SynthesisSpec({"vertical": {"eq": "Video Gaming"}, "inventory_type": {"eq": "dooh"}}, rows=10)
    with pytest.raises(SynthesisError) as e:
        synthesise(spec, policy, SEED, unrelated_pins, batch_requests=BATCH, max_requests=1_000)
    msg = str(e.value)
    assert "after 1000 generated requests" in msg and "0 of 10 target rows" in msg
    assert "dooh" in msg and "rarely makes" in msg


def test_unfindable_near_misses_raise(policy, unrelated_pins):
    spec = SynthesisSpec(GAMING, rows=10, replay_ratio=1.0, contrast_share=0.5)
    with pytest.raises(SynthesisError, match="near misses"):
        synthesise(spec, policy, SEED, unrelated_pins, {"position": ("nowhere",)}, batch_requests=BATCH,
                   max_requests=1_000)


def test_same_seed_same_rows_other_seed_other_rows(policy, unrelated_pins, with_contrast):
    spec, result = with_contrast
    again = synthesise(spec, policy, SEED, unrelated_pins, IMPLICATED, batch_requests=BATCH)
    assert again.rows.equals(result.rows)
    assert (again.requests_generated, again.excluded_by_id, again.excluded_by_content) == (
        result.requests_generated, result.excluded_by_id, result.excluded_by_content)
    other = synthesise(spec, policy, SEED + 1, unrelated_pins, IMPLICATED, batch_requests=BATCH)
    assert not set(other.rows["content_digest"]) & set(result.rows["content_digest"])


def test_filter_expr_uses_the_policy_grammar(first_batch):
    rows = first_batch
    got = rows.filter(filter_expr({"vertical": {"in": ["Video Gaming", "Sports"]}, "slots": {"gte": 3}}))
    want = rows.filter(pl.col("vertical").is_in(["Video Gaming", "Sports"]) & (pl.col("slots") >= 3))
    assert got.height > 0 and got["row_id"].to_list() == want["row_id"].to_list()
    assert rows.filter(filter_expr({})).height == rows.height
    with pytest.raises(ValueError, match="unknown feature"):
        filter_expr({"colour": {"eq": "red"}})


def test_implicated_values_as_the_diagnosis_documents_them_select_rows(first_batch, policy, unrelated_pins):
    documented = {"rewarded": ("True",), "position": ("atf",)}  # FeatureFinding: values such as ("True",), ("atf",)
    expected = (first_batch["rewarded"] & (first_batch["position"] == "atf")).fill_null(False)
    assert expected.sum() > 0
    assert (implicated_mask(first_batch, documented) == expected).all()


def test_anchoring_gives_replay_the_champions_decision_and_keeps_target_and_near_miss_labels():
    import polars as pl

    from modelsmith.synthesis import ANCHOR_RULE, anchor_to_champion

    rows = pl.DataFrame({"source": ["target", "replay", "contrast", "replay"],
                         "expected": ["shade_high", "bid", "no_bid", "bid"],
                         "rule": ["r-gaming", "r1", "r2", "r1"], "policy_digest": ["p"] * 4})
    anchored = anchor_to_champion(rows, ["bid", "no_bid", "bid", "bid"])
    assert anchored["expected"].to_list() == ["shade_high", "no_bid", "no_bid", "bid"]  # target, near miss: the policy's
    assert anchored["rule"].to_list() == ["r-gaming", ANCHOR_RULE, "r2", ANCHOR_RULE]
    assert anchored["policy_digest"].to_list() == ["p"] * 4
    with pytest.raises(ValueError, match="3 champion decisions for 4 rows"):
        anchor_to_champion(rows, ["bid"] * 3)
