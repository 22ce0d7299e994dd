"""The benchmark delta of a repair cycle over real stored pin runs (tiny base model, then base + LoRA adapter).

Which pins pass is steered by the pin files (accuracy floor 0 always passes, 1.0 fails on an untrained
model), so the statuses are deterministic while the runs themselves are real.
"""

import json
import shutil

import numpy as np
import polars as pl
import pytest

from modelsmith.delta import benchmark_delta_for, blocking_pins, verdict_sentence
from modelsmith.pin_runs import pin, store
from modelsmith.pins import parse_pins
from modelsmith.engines.inference import TransformersEngine
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy
from tests.unit.model.test_inference import adapter_dir, model_dir, rows  # noqa: F401  (fixtures)

CHAMPION, CANDIDATE = "c" * 64, "a" * 64
SEGMENTS = {"gaming": "{vertical: Video Gaming}", "site": "{inventory_type: site}", "app": "{inventory_type: app}",
            "sports": "{vertical: Sports}", "all": "{}"}


def _pins(floors: dict[str, float], extra: str = ""):
    lines = ["defaults: {latency_p99_ms: 100000, max_drop: 0.02}", "pins:"]
    lines += [f"  - {{name: {name}, where: {SEGMENTS[name]}, accuracy_floor: {floor}}}" for name, floor in floors.items()]
    return parse_pins("\n".join(lines) + "\n" + extra)


BEFORE = _pins({"gaming": 0.0, "site": 0.0, "app": 0.0, "sports": 0.0, "all": 1.0})


@pytest.fixture(scope="module")
def labelled() -> pl.DataFrame:
    return label_requests(generate_requests(60, seed=11), shipped_policy(2))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def engine(model_dir, adapter_dir):  # noqa: F811
    e = TransformersEngine(model_dir, batch_size=32)
    e.attach_adapter("adapter1", adapter_dir)
    return e


@pytest.fixture(scope="module")
def before_run(engine, labelled, home):
    engine.use(None)
    run = pin(engine, labelled, BEFORE, CHAMPION, "s" * 64)
    assert [r.passed for r in run.results] == [True, True, True, True, False]
    return store(home, run)


def _after(engine, labelled, home, pins):
    engine.use("adapter1")
    try:
        run = pin(engine, labelled, pins, CANDIDATE, "s" * 64)
    finally:
        engine.use(None)
    return store(home, run), run


def test_targets_repaired_or_not_and_new_failures_flagged(engine, labelled, home, before_run):
    pins = _pins({"gaming": 0.0, "site": 1.0, "app": 1.0, "sports": 0.0, "all": 1.0})
    after_run, run = _after(engine, labelled, home, pins)
    assert [r.passed for r in run.results] == [True, False, False, True, False]  # floors of 1.0 fail
    delta = benchmark_delta_for(before_run, after_run, ["gaming", "site"])
    status = {p["pin"]: p["status"] for p in delta["pins"]}
    # `all` failed before too: not the candidate's doing; sports (a few of 60 rows) cannot detect a 2-point drop
    assert status == {"gaming": "repaired", "site": "not repaired", "app": "flagged", "sports": "inconclusive",
                      "all": "ok"}
    assert delta["inconclusive"] == ["sports"]
    assert (delta["repaired"], delta["not_repaired"], delta["flagged"]) == (["gaming"], ["site"], ["app"])
    assert delta["offer_for_promotion"] is False
    assert {p["pin"]: p["target"] for p in delta["pins"]} == {
        "gaming": True, "site": True, "app": False, "sports": False, "all": False}
    assert (delta["champion"], delta["candidate"]) == (CHAMPION, CANDIDATE)
    assert delta["before_run"] == str(before_run) and delta["after_run"] == str(after_run)
    assert delta["targets"] == ["gaming", "site"]
    before_summary = json.loads((before_run / "summary.json").read_text())
    assert delta["composite_before"] == before_summary["composite"] and delta["composite_after"] == run.composite
    before_metrics = {r["pin"]: r for r in pl.read_parquet(before_run / "metrics.parquet").iter_rows(named=True)}
    for p, r in zip(delta["pins"], run.results, strict=True):
        assert p["pin"] == r.pin and p["rows"] == r.rows
        assert p["after"] == r.accuracy and p["before"] == before_metrics[r.pin]["accuracy"]
        assert p["delta"] == pytest.approx(r.accuracy - before_metrics[r.pin]["accuracy"])
        assert p["p99_after_ms"] == r.latency_p99_ms and p["reasons"] == r.reasons
        assert p["before_ci_low"] <= p["before"] <= p["before_ci_high"]
    # the adapter really changed decisions: before and after are two different models
    probs = [pl.read_parquet(d / "predictions.parquet").select("^p_.*$").to_numpy() for d in (before_run, after_run)]
    assert np.abs(probs[0] - probs[1]).max() > 1e-4


def test_offered_only_when_every_target_is_repaired_and_nothing_is_flagged(engine, labelled, home, before_run):
    pins = _pins({"gaming": 0.0, "site": 0.0, "app": 0.0, "sports": 0.0, "all": 1.0})
    after_run, _ = _after(engine, labelled, home, pins)
    delta = benchmark_delta_for(before_run, after_run, ["gaming", "site"])
    assert delta["repaired"] == ["gaming", "site"] and delta["not_repaired"] == [] and delta["flagged"] == []
    assert delta["offer_for_promotion"] is True and blocking_pins(delta) == []
    assert verdict_sentence(delta).startswith("offered for promotion: repaired gaming, site; nothing flagged")
    assert benchmark_delta_for(before_run, after_run, [])["offer_for_promotion"] is False  # nothing to repair

    # the same run with one target failing is not offered
    failing = _pins({"gaming": 0.0, "site": 1.0, "app": 0.0, "sports": 0.0, "all": 1.0})
    after_fail, _ = _after(engine, labelled, home, failing)
    delta = benchmark_delta_for(before_run, after_fail, ["gaming", "site"])
    assert delta["not_repaired"] == ["site"] and delta["flagged"] == [] and delta["offer_for_promotion"] is False
    # the verdict names the pin that blocked, with its numbers and the evaluator's reason
    (site,) = [p for p in delta["pins"] if p["pin"] == "site"]
    assert blocking_pins(delta) == [{k: site[k] for k in ("pin", "status", "rows", "before", "after", "delta",
                                                             "p_adjusted", "reasons")}]
    assert verdict_sentence(delta) == (f"not offered: not repaired: site ({site['before']:.3f} -> {site['after']:.3f}: "
                                       f"{site['reasons']})")
    assert "below floor 1" in site["reasons"]


def test_a_regressed_pin_is_flagged_even_when_it_passes(engine, labelled, home, before_run, tmp_path):
    pins = _pins({"gaming": 0.0, "site": 0.0, "app": 0.0, "sports": 0.0, "all": 1.0})
    after_run, _ = _after(engine, labelled, home, pins)
    regressed = tmp_path / "regressed-run"
    shutil.copytree(after_run, regressed)
    metrics = pl.read_parquet(regressed / "metrics.parquet")
    metrics = metrics.with_columns(pl.when(pl.col("pin") == "sports").then(True).otherwise(pl.col("regressed"))
                                   .alias("regressed"))
    metrics.write_parquet(regressed / "metrics.parquet")
    assert metrics.filter(pl.col("pin") == "sports")["passed"].item() is True
    delta = benchmark_delta_for(before_run, regressed, ["gaming"])
    assert delta["flagged"] == ["sports"] and delta["offer_for_promotion"] is False
    assert verdict_sentence(delta).startswith("not offered: flagged: sports (")


def test_a_target_under_its_floor_without_evidence_is_not_repaired_and_says_why(engine, labelled, home, before_run,
                                                                                tmp_path):
    """A target that passes (no significant evidence it is below the floor) but whose estimate is under the floor."""
    pins = _pins({"gaming": 0.0, "site": 1.0, "app": 0.0, "sports": 0.0, "all": 1.0})
    after_run, _ = _after(engine, labelled, home, pins)
    unproven = tmp_path / "unproven-run"
    shutil.copytree(after_run, unproven)
    metrics = pl.read_parquet(unproven / "metrics.parquet")
    site = pl.col("pin") == "site"
    metrics = metrics.with_columns(pl.when(site).then(True).otherwise(pl.col("passed")).alias("passed"),
                                   pl.when(site).then(pl.lit("")).otherwise(pl.col("reasons")).alias("reasons"))
    metrics.write_parquet(unproven / "metrics.parquet")
    accuracy = metrics.filter(site)["accuracy"].item()
    assert accuracy < 1.0
    delta = benchmark_delta_for(before_run, unproven, ["gaming", "site"])
    (row,) = [p for p in delta["pins"] if p["pin"] == "site"]
    assert row["status"] == "not repaired" and delta["offer_for_promotion"] is False
    assert row["reasons"].startswith(f"accuracy {accuracy:.4f} below floor 1.0 (a repair is claimed on the estimate")
    assert "no reason recorded" not in verdict_sentence(delta) and row["reasons"] in verdict_sentence(delta)


def test_a_pin_the_champion_was_not_run_on_is_left_out(engine, labelled, home, before_run):
    pins = _pins({"gaming": 0.0, "site": 0.0, "app": 0.0, "sports": 0.0, "all": 1.0},
                 extra="  - {name: rewarded, where: {rewarded: true}, accuracy_floor: 1.0}\n")
    after_run, run = _after(engine, labelled, home, pins)
    assert not run.results[-1].passed
    delta = benchmark_delta_for(before_run, after_run, ["gaming"])
    assert [p["pin"] for p in delta["pins"]] == ["gaming", "site", "app", "sports", "all"]
    assert delta["offer_for_promotion"] is True


def test_a_target_missing_from_the_candidates_run_is_not_repaired(engine, labelled, home, before_run):
    pins = _pins({"gaming": 0.0, "app": 0.0, "sports": 0.0, "all": 1.0})  # no `site` pin in the candidate's run
    after_run, _ = _after(engine, labelled, home, pins)
    delta = benchmark_delta_for(before_run, after_run, ["gaming", "site"])
    assert delta["repaired"] == ["gaming"]
    assert delta["offer_for_promotion"] is False  # `site` was never shown to be repaired
