"""The sensors, evaluated tick by tick against a test instance (no daemon)."""

import json

import dagster as dg
import pytest

from modelsmith.champion import read_champion
from modelsmith.model_dir import short
from modelsmith_assets.definitions import build_definitions
from resources import InferenceSettings, LocalStorage, ModelSettings, ScenarioSettings
from scenario_data.policy import POLICIES_DIR
from tests.unit.model.test_inference import model_dir, rows  # noqa: F401  (fixtures)


@pytest.fixture
def world(tmp_path, model_dir, monkeypatch):  # noqa: F811
    home = tmp_path / "home"
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    replay = tmp_path / "replay"
    replay.mkdir()
    resources = {"storage": LocalStorage(root=str(home)),
                 "scenarios": ScenarioSettings(replay_dir=str(replay), pack_size=200),
                 "model": ModelSettings(base_model_dir=str(model_dir)), "inference": InferenceSettings(batch_size=32)}
    defs = build_definitions("embedded")
    return home, replay, resources, defs, dg.DagsterInstance.ephemeral()


def _tick(defs, name: str, instance, resources, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs)
    with dg.partition_loading_context(dynamic_partitions_store=instance):  # as the daemon evaluates a tick
        return sensor.evaluate_tick(ctx)


def _run(defs, job: str, instance, resources, partition_key=None):
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, resources=resources, partition_key=partition_key)
    assert result.success
    return result


def test_scenario_changes_rerun_the_scenario_stage_once_each(world):
    home, replay, resources, defs, instance = world
    first = _tick(defs, "scenario_change_sensor", instance, resources)
    assert [r.job_name or "materialize_scenarios_job" for r in first.run_requests] == ["materialize_scenarios_job"]
    _run(defs, "materialize_scenarios_job", instance, resources)
    for cursor in (None, ""):  # the daemon's first tick (None) and the UI's tick preview ("") agree: nothing to do
        assert not _tick(defs, "scenario_change_sensor", instance, resources, cursor).run_requests
    assert not _tick(defs, "scenario_change_sensor", instance, resources, first.cursor).run_requests  # unchanged
    (replay / "new.jsonl").write_text("{}\n")
    landed = _tick(defs, "scenario_change_sensor", instance, resources, first.cursor)
    assert len(landed.run_requests) == 1 and landed.run_requests[0].run_key != first.run_requests[0].run_key
    (home / "policy.yaml").write_bytes((POLICIES_DIR / "v2.yaml").read_bytes())  # `modelsmith policy activate`
    policy = _tick(defs, "scenario_change_sensor", instance, resources, landed.cursor)
    assert len(policy.run_requests) == 1

    # A daemon starting on a home the loop already ingested (no cursor yet) does not re-ingest the same state.
    _run(defs, "materialize_scenarios_job", instance, resources)
    fresh = _tick(defs, "scenario_change_sensor", instance, resources)
    assert not fresh.run_requests and fresh.cursor == policy.cursor
    (replay / "later.jsonl").write_text("{}\n")
    assert len(_tick(defs, "scenario_change_sensor", instance, resources, fresh.cursor).run_requests) == 1


def test_new_scenarios_build_the_base_then_repin_the_champion_and_a_regression_opens_one_cycle(world):
    home, _, resources, defs, instance = world
    _run(defs, "materialize_scenarios_job", instance, resources)
    boot = _tick(defs, "champion_repin_sensor", instance, resources)
    assert [r.job_name for r in boot.run_requests] == ["build_base_model_job"]  # no champion yet
    _run(defs, "build_base_model_job", instance, resources)
    repin = _tick(defs, "champion_repin_sensor", instance, resources, boot.cursor)
    key = short(read_champion(home).model_version)
    assert [(r.job_name, r.partition_key) for r in repin.run_requests] == [("pin_model_version_job", key)]
    assert repin.run_requests[0].tags["modelsmith/model_name"].startswith("base model ")  # a name beside the key
    assert not _tick(defs, "champion_repin_sensor", instance, resources, repin.cursor).run_requests

    _run(defs, "pin_model_version_job", instance, resources, partition_key=key)
    assert not _tick(defs, "champion_repin_sensor", instance, resources).run_requests  # a fresh daemon: pinned already
    quiet = _tick(defs, "pin_regression_sensor", instance, resources)
    assert not quiet.run_requests  # the tiny model passes its (lenient) reference: nothing regressed

    # A regression report of the champion, as the pin job writes it, with one confirmed regression.
    run_dir = next((home / "pins" / key).iterdir())
    report = {"model_version": read_champion(home).model_version, "policy_digest": "p" * 64, "scenarios_digest": "s" * 64,
              "run_dir": str(run_dir), "regressed": [{"pin": "Video Gaming/app", "drop": 0.19, "p_value": 1e-20,
                                                      "failing_row_ids": ["r1"]}], "failed": []}
    path = home / "reports" / key / "crafted.json"
    path.write_text(json.dumps(report))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "regression_report", partition=key, metadata={"regressed": 1, "failed": 0, "is_champion": True,
                                                       "path": dg.MetadataValue.path(str(path))}))
    opened = _tick(defs, "pin_regression_sensor", instance, resources, quiet.cursor)
    (request,) = opened.run_requests
    assert request.job_name == "repair_cycle_job" and request.run_key == f"cycle-{request.partition_key}"
    assert request.tags["modelsmith/cycle_label"] == f"repair Video Gaming/app of {key}"
    assert request.partition_key in instance.get_dynamic_partitions("repair_cycles")
    assert (home / "cycles" / request.partition_key / "cycle.json").exists()
    assert not _tick(defs, "pin_regression_sensor", instance, resources, opened.cursor).run_requests  # once
    replay = _tick(defs, "pin_regression_sensor", instance, resources, quiet.cursor)  # a re-evaluated tick
    assert [r.run_key for r in replay.run_requests] == [request.run_key]  # same run key: Dagster runs it once
    # Once the cycle has a run (here as `modelsmith loop` launches it: no run key), a daemon started on
    # this home from an empty cursor never launches it again.
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, make_new_run_id

    instance.add_run(DagsterRun(job_name="repair_cycle_job", run_id=make_new_run_id(), status=DagsterRunStatus.SUCCESS,
                                tags={"dagster/partition": request.partition_key, "modelsmith/trigger": "modelsmith loop"}))
    fresh = _tick(defs, "pin_regression_sensor", instance, resources)
    assert not fresh.run_requests and int(fresh.cursor) >= int(opened.cursor)


def test_the_nightly_schedule_reingests_at_three():
    schedule = build_definitions("embedded").resolve_schedule_def("nightly_repin")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "materialize_scenarios_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_the_sensor_interval_is_30_s_unless_set(monkeypatch):
    from modelsmith_assets.automation import sensor_interval_s

    monkeypatch.delenv("MODELSMITH_SENSOR_INTERVAL_S", raising=False)
    assert sensor_interval_s() == 30
    assert {s.minimum_interval_seconds for s in build_definitions("embedded").sensors} == {30}
    monkeypatch.setenv("MODELSMITH_SENSOR_INTERVAL_S", "5")
    assert sensor_interval_s() == 5
    assert {s.minimum_interval_seconds for s in build_definitions("embedded").sensors} == {5}
    for bad in ("0", "-3", "2.5", "soon"):
        monkeypatch.setenv("MODELSMITH_SENSOR_INTERVAL_S", bad)
        with pytest.raises(ValueError, match=f"MODELSMITH_SENSOR_INTERVAL_S: .* got '{bad}'"):
            sensor_interval_s()
