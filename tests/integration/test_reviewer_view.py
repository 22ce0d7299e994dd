"""What a person sees in the Dagster UI after `modelsmith loop`, read back from a real instance.

The loop's runs say who launched them (the runs list's "Launched by" column renders the `user` tag),
the champion asset starts its history at the bootstrap, partitions carry a readable label beside the
digest, `every_pin_holds` (listed before the `pin_*` checks) names the failing pins first, and a
candidate's pin run fills the adapter's `pin_results` and `regression_report` partitions and its checks
(the latest materialisation's, which the UI shows, each naming its partition).
"""

import json

import dagster as dg

from modelsmith.cycles import CYCLES, open_cycle
from modelsmith_cli.headless import run_pass
from modelsmith.model_dir import Registry, short
from modelsmith.champion import read_champion
from modelsmith_assets.definitions import build_definitions
from resources import InferenceSettings, LocalStorage, ModelSettings, ScenarioSettings, SignerSettings
from tests.unit.model.test_inference import adapter_dir, model_dir, rows  # noqa: F401  (fixtures)


def test_the_loop_labels_its_runs_and_partitions_and_leaves_nothing_missing(tmp_path, model_dir, adapter_dir,  # noqa: F811
                                                                            monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    resources = {"storage": LocalStorage(root=str(home)), "scenarios": ScenarioSettings(pack_size=200),
                 "model": ModelSettings(base_model_dir=str(model_dir)), "inference": InferenceSettings(batch_size=32),
                 "signer": SignerSettings(key_dir=str(home / "keys"))}
    defs = build_definitions("embedded", resources=resources)
    instance = dg.DagsterInstance.ephemeral()
    run_pass(defs, instance, home, None, lambda _: None)

    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {"materialize_scenarios_job", "build_base_model_job", "pin_model_version_job"}
    assert all(r.tags["user"] == "modelsmith loop" and r.tags["modelsmith/trigger"] == "modelsmith loop" for r in runs)
    base = Registry(home).get(read_champion(home).model_version)
    (pin_run,) = [r for r in runs if r.job_name == "pin_model_version_job"]
    assert pin_run.tags["dagster/partition"] == base.key and pin_run.tags["modelsmith/model_name"] == (
        f"base model {model_dir.name}")

    # The champion's history starts with the bootstrap, in the run that built the base.
    (first,) = instance.fetch_materializations(dg.AssetKey("champion"), limit=10).records
    (base_run,) = [r for r in runs if r.job_name == "build_base_model_job"]
    meta = first.asset_materialization.metadata
    assert first.run_id == base_run.run_id and meta["model_version"].value == base.digest
    assert meta["last_decision"].value == "bootstrap" and meta["audit_entries"].value == 1
    assert first.asset_materialization.tags["dagster/data_version"] == base.digest

    # The checks: `every_pin_holds` sorts first and lists the failing pins (a 40-row toy model fails many) on top.
    assert sorted(c.name for c in defs.resolve_asset_graph().asset_check_keys
                  if c.asset_key == dg.AssetKey("pin_results"))[0] == "every_pin_holds"
    (summary,) = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("pin_results"), "every_pin_holds"), limit=5)
    evaluation = summary.event.dagster_event.event_specific_data
    report = json.loads((home / "reports" / base.key / "regression_report.json").read_text())
    failing = [p["pin"] for p in report["failed"]]
    assert failing and not evaluation.passed and evaluation.metadata["partition"].value == base.key
    assert evaluation.metadata["failing"].value.split(", ")[0] == failing[0]
    top = evaluation.metadata["pins"].records[0].data
    assert top["pin"] == failing[0] and top["status"] == "failed" and top["why"]
    assert evaluation.description.startswith(f"{len(failing)} of 59 pins fail: {failing[0]} (")

    # A candidate: its pin run is also the adapter version's pin_results and regression_report partition.
    adapter = Registry(home).register(adapter_dir, "adapter", base=base.digest)
    instance.add_dynamic_partitions("model_versions", [adapter.key])
    crafted = {**report, "regressed": [{"pin": "Video Gaming/app", "drop": 0.2, "p_value": 1e-9}]}
    cycle = open_cycle(home, crafted)
    instance.add_dynamic_partitions(CYCLES, [cycle])
    (home / "cycles" / cycle / "adapter.json").write_text(json.dumps({"model_version": adapter.digest}))
    result = defs.resolve_job_def("repair_cycle_job").execute_in_process(
        instance=instance, partition_key=cycle, asset_selection=[dg.AssetKey("candidate_pins")])
    (cmeta,) = [m.metadata for m in result.asset_materializations_for_node("candidate_pins")
                if m.asset_key == dg.AssetKey("candidate_pins")]
    assert cmeta["cycle_label"].value == f"repair Video Gaming/app of {base.key}"
    assert cmeta["label"].value == f"adapter of cycle {cycle}: repair Video Gaming/app of {base.key}"
    for asset in ("pin_results", "regression_report"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == {base.key, adapter.key}
        assert set(instance.get_dynamic_partitions("model_versions")) == {base.key, adapter.key}  # none Missing
    (pinned,) = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("pin_results"), asset_partitions=[adapter.key]), limit=5).records
    assert pinned.asset_materialization.metadata["model_version"].value == adapter.digest
    assert pinned.asset_materialization.metadata["pinned_by"].value == f"candidate_pins[{cycle}]"
    # The checks (not partitioned) show the latest materialisation's results: the candidate's, in its run, each
    # naming its partition. Without them the UI read "Not Evaluated" for every pin after a cycle.
    newest = instance.fetch_materializations(dg.AssetKey("pin_results"), limit=1).records[0]
    keys = [dg.AssetCheckKey(dg.AssetKey("pin_results"), n) for n in ("every_pin_holds", "pin_video_gaming_app")]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    assert len(latest) == 2 and newest.run_id == result.run_id
    for record in latest.values():
        assert record.run_id == newest.run_id  # Dagster's rule for "this check evaluated the latest materialisation"
        assert record.event.dagster_event.event_specific_data.metadata["partition"].value == adapter.key
    assert read_champion(home).model_version == base.digest and short(adapter.digest) == adapter.key
