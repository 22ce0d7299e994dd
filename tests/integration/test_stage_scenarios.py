"""Materialise the scenario stage with the embedded engines and read what the UI shows."""

import shutil

import dagster as dg
import polars as pl

from modelsmith_assets.definitions import build_definitions
from modelsmith_assets.scenarios import policy, replayed_auctions, scenario_pack
from resources import LocalStorage, ScenarioSettings


def test_scenario_stage_materialises_with_checks_and_metadata(tmp_path, realdata):
    replay = tmp_path / "replay"
    shutil.copytree(realdata / "openrtb", replay)
    resources = {"storage": LocalStorage(root=str(tmp_path / "home")),
                 "scenarios": ScenarioSettings(replay_dir=str(replay), pack_size=1500)}
    result = dg.materialize([policy, scenario_pack, replayed_auctions], resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("replayed_auctions")[0].metadata
    assert meta["requests_in"].value == 1500 + 266
    assert meta["requests_in"].value == meta["accepted"].value + meta["quarantined"].value
    assert meta["quarantined"].value == 12  # tests/unit/scenario_data/test_ingest_realdata.py says which
    assert [c.name for c in meta["segments"].schema.columns][:3] == ["vertical", "inventory_type", "rows"]
    assert len(meta["policy_digest"].value) == 64
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"requests_balance": True, "feature_table_expectations": True, "label_expectations": True}
    table = pl.read_parquet(meta["path"].value)
    assert {"expected", "rule", "policy_digest"} <= set(table.columns)


def test_definitions_load_for_each_environment(monkeypatch):
    defs = build_definitions("embedded")
    assert defs.resolve_job_def("materialize_scenarios_job")
    monkeypatch.setenv("MODELSMITH_POLICY", "x.yaml")
    assert build_definitions("production").resolve_all_asset_keys()

