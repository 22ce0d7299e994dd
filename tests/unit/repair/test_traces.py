"""Failure traces and leave-one-feature-out attributions on a real tiny (untrained) model."""

import numpy as np
import polars as pl
import pytest
import torch

from modelsmith.evaluate import predictions_frame
from modelsmith.pins import parse_pins
from modelsmith.prompt import LABEL_TOKENS, PROMPT_COLUMNS, PROMPT_FEATURES, prompt_words
from modelsmith.traces import ATTR_PREFIX, attributions, failure_traces
from modelsmith.engines.inference import TransformersEngine
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy
from tests.unit.model.test_inference import model_dir, rows  # noqa: F401  (fixtures)

PINS = parse_pins("defaults: {accuracy_floor: 0.0}\npins:\n  - {name: all}\n"
                  "  - {name: site, where: {inventory_type: site}}\n")


@pytest.fixture(scope="module")
def engine(model_dir):  # noqa: F811
    return TransformersEngine(model_dir, batch_size=16)


@pytest.fixture(scope="module")
def predictions(engine) -> pl.DataFrame:
    labelled = label_requests(generate_requests(60, seed=11), shipped_policy(2))
    return predictions_frame(labelled, engine.decide(labelled).to_frame())


def test_the_fixture_has_failing_and_passing_rows(predictions):
    site = predictions.filter(pl.col("inventory_type") == "site")
    assert 0 < site["correct"].sum() < site.height
    assert site.filter(pl.col("correct")).height > 3  # more passing rows than the contrast cap below


def test_attribution_shape_and_empty_input(engine, predictions):
    a = attributions(engine, predictions)
    assert a.shape == (predictions.height, len(PROMPT_FEATURES))
    assert np.isfinite(a).all() and (a != 0).any()
    assert np.all(np.abs(a) <= 1.0)
    assert attributions(engine, predictions.clear()).shape == (0, len(PROMPT_FEATURES))


def test_attribution_is_the_drop_in_the_predicted_labels_probability(engine, predictions):
    a = attributions(engine, predictions)
    row_index, feature = 5, PROMPT_COLUMNS.index("rewarded")
    row = predictions.row(row_index, named=True)
    words = prompt_words(row)
    masked = words[:feature] + [engine.tokenizer.unk_token] + words[feature + 1:]
    with torch.inference_mode():
        p = engine.label_probabilities([" ".join(words), " ".join(masked)]).cpu().numpy()
    chosen = int(p[0].argmax())
    assert LABEL_TOKENS[chosen] == row["predicted"]
    expected = p[0, chosen] - p[1, chosen]
    assert expected != 0  # the word matters to the model, so the check is not trivially 0 == 0
    assert a[row_index, feature] == pytest.approx(expected, abs=1e-5)
    # every feature of that row, the same way (one batch)
    variants = [" ".join(words[:i] + [engine.tokenizer.unk_token] + words[i + 1:]) for i in range(len(words))]
    with torch.inference_mode():
        q = engine.label_probabilities(variants).cpu().numpy()
    np.testing.assert_allclose(a[row_index], p[0, chosen] - q[:, chosen], atol=1e-5)


def test_attributions_do_not_depend_on_the_batch_size(model_dir, predictions):  # noqa: F811
    small = attributions(TransformersEngine(model_dir, batch_size=7), predictions.head(10))
    big = attributions(TransformersEngine(model_dir, batch_size=256), predictions.head(10))
    np.testing.assert_allclose(small, big, atol=1e-5)


def test_failure_traces_are_the_failing_rows_plus_capped_passing_contrast(engine, predictions):
    traces = failure_traces(engine, predictions, PINS, ["site"], contrast_rows=3)
    site = predictions.filter(pl.col("inventory_type") == "site")
    failing = site.filter(~pl.col("correct"))
    assert traces.filter(pl.col("failed")).height == failing.height
    assert sorted(traces.filter(pl.col("failed"))["row_id"]) == sorted(failing["row_id"])
    passing = traces.filter(~pl.col("failed"))
    assert passing.height == 3
    assert passing["row_id"].is_in(site.filter(pl.col("correct"))["row_id"].to_list()).all()
    assert (traces["failed"] == ~traces["correct"]).all()
    assert set(traces["pin"]) == {"site"} and (traces["inventory_type"] == "site").all()
    assert "latency_ms" not in traces.columns
    attr_cols = [f"{ATTR_PREFIX}{c}" for c in PROMPT_COLUMNS]
    assert all(c in traces.columns for c in attr_cols)
    assert all(traces[c].dtype == pl.Float64 for c in attr_cols)
    for col in ("expected", "predicted", "confidence", *(f"p_{d}" for d in LABEL_TOKENS)):
        assert col in traces.columns
    # the attribution columns are the attributions of exactly these rows
    np.testing.assert_allclose(traces.select(attr_cols).to_numpy(), attributions(engine, traces), atol=1e-6)


def test_fewer_passing_rows_than_the_cap_all_come_along(engine, predictions):
    traces = failure_traces(engine, predictions, PINS, ["all"], contrast_rows=10_000)
    assert traces.height == predictions.height
    assert int(traces["failed"].sum()) == int((~predictions["correct"]).sum())


def test_several_pins_each_bring_their_own_rows(engine, predictions):
    traces = failure_traces(engine, predictions, PINS, ["all", "site"], contrast_rows=0)
    failing = predictions.filter(~pl.col("correct"))
    assert traces.filter(pl.col("pin") == "all").height == failing.height
    assert traces.filter(pl.col("pin") == "site").height == failing.filter(pl.col("inventory_type") == "site").height
    assert traces["failed"].all()


def test_contrast_sampling_is_seeded(engine, predictions):
    a = failure_traces(engine, predictions, PINS, ["all"], contrast_rows=4, seed=1)
    b = failure_traces(engine, predictions, PINS, ["all"], contrast_rows=4, seed=1)
    assert a.equals(b)


def test_an_unknown_pin_is_a_key_error(engine, predictions):
    with pytest.raises(KeyError, match="nope"):
        failure_traces(engine, predictions, PINS, ["all", "nope"])


def test_no_regressed_pins_give_an_empty_trace_with_the_columns(engine, predictions):
    traces = failure_traces(engine, predictions, PINS, [])
    assert traces.height == 0
    assert {"pin", "failed", *(f"{ATTR_PREFIX}{c}" for c in PROMPT_COLUMNS)} <= set(traces.columns)
    assert "latency_ms" not in traces.columns
