"""The production instance (`dagster.yaml.example`) against a real PostgreSQL: a fresh database per module.

Every read-back goes through a *second* `DagsterInstance` opened on the same `dagster.yaml`, so what
it sees came from the database, not from the first instance's memory. Skipped when no server answers
on 127.0.0.1:5432, unless MODELSMITH_REQUIRE_POSTGRES=1 (CI), which makes that a failure.
"""

import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    SensorInstigatorData,
)
from dagster._core.storage.tags import RUN_KEY_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

from modelsmith_assets.definitions import build_definitions
from modelsmith_assets.scenarios import policy, replayed_auctions, scenario_pack
from resources import LocalStorage, ScenarioSettings
from tests.support.postgres import connect, fresh_database

REPO = Path(__file__).resolve().parents[2]
CHECKS = ("requests_balance", "feature_table_expectations", "label_expectations")


class Pg:
    """A fresh database, the example `dagster.yaml` pointed at it, and the instances opened on it."""

    def __init__(self, dbname: str, home: Path):
        self.dbname, self.home, self._opened = dbname, home, []

    def open(self) -> dg.DagsterInstance:
        instance = dg.DagsterInstance.from_config(str(self.home))
        self._opened.append(instance)
        return instance

    def rows(self, sql: str, *args) -> list[tuple]:
        conn = connect(self.dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        for instance in self._opened:
            instance.dispose()


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory):
    with fresh_database("modelsmith_test") as (dbname, env):
        home = tmp_path_factory.mktemp("dagster_home")
        shutil.copy(REPO / "dagster.yaml.example", home / "dagster.yaml")  # the example, verbatim
        state = Pg(dbname, home)
        try:
            with pytest.MonkeyPatch.context() as mp:  # the variables the example reads, for the whole module
                for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
                    mp.setenv(name, value)
                yield state
        finally:
            state.close()


@pytest.fixture(scope="module")
def instance(pg: Pg) -> dg.DagsterInstance:
    return pg.open()


@pytest.fixture
def world(tmp_path, monkeypatch):
    home, replay = tmp_path / "home", tmp_path / "replay"
    replay.mkdir()
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    return {"storage": LocalStorage(root=str(home)),
            "scenarios": ScenarioSettings(pack_size=200, replay_dir=str(replay))}


def test_the_example_is_a_postgres_instance_with_a_run_queue_and_a_training_pool_of_one(pg, instance):
    assert {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)} \
        == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config.max_concurrent_runs == 4
    assert concurrency.run_queue_config.should_block_op_concurrency_limited_runs
    assert concurrency.pool_config.default_pool_limit == 1 and concurrency.pool_config.pool_granularity.value == "run"
    # The only pool the code uses is the training asset's; the queue daemon, on first seeing a run
    # that needs it, writes its default limit to the database.
    assets = build_definitions("embedded").resolve_asset_graph().assets_defs
    assert {a.op.name: a.op.pool for a in assets if a.is_executable and a.op.pool} == {"adapter": "training"}
    instance.event_log_storage.initialize_concurrency_limit_to_default("training")
    training = pg.open().event_log_storage.get_concurrency_info("training")
    assert (training.limit, training.slot_count, training.claimed_slots) == (1, 1, [])
    assert pg.rows("SELECT concurrency_key, \"limit\" FROM concurrency_limits") == [("training", 1)]


def test_materialisations_and_check_evaluations_land_in_postgres(pg, instance, world):
    result = dg.materialize([policy, scenario_pack, replayed_auctions], resources=world, instance=instance)
    assert result.success

    second = pg.open()
    assert second.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    for asset in ("policy", "scenario_pack", "replayed_auctions"):
        (record,) = second.fetch_materializations(dg.AssetKey(asset), limit=5).records
        assert record.run_id == result.run_id
    meta = second.fetch_materializations(dg.AssetKey("replayed_auctions"), limit=1).records[0] \
        .asset_materialization.metadata
    assert meta["requests_in"].value == 200 == meta["accepted"].value + meta["quarantined"].value
    latest = second.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("replayed_auctions"), name) for name in CHECKS])
    assert {key.name: (rec.run_id, rec.status.value) for key, rec in latest.items()} \
        == {name: (result.run_id, "SUCCEEDED") for name in CHECKS}
    evaluation = latest[dg.AssetCheckKey(dg.AssetKey("replayed_auctions"), "requests_balance")].event \
        .dagster_event.event_specific_data
    assert evaluation.passed and evaluation.metadata["requests_in"].value == 200

    ((events,),) = pg.rows("SELECT count(*) FROM event_logs WHERE run_id = %s", result.run_id)
    assert events > 10  # run start/success, steps, 3 materialisations, 3 check evaluations, logs
    assert pg.rows("SELECT status FROM runs WHERE run_id = %s", result.run_id) == [("SUCCESS",)]


def _remote_repository(workspace: WorkspaceProcessContext):
    """The code location as the daemon sees it (in-process here: no gRPC server to start)."""
    (entry,) = workspace.create_request_context().get_code_location_entries().values()
    assert entry.code_location, entry.load_error
    (repository,) = entry.code_location.get_repositories().values()
    return repository


def test_a_sensor_tick_queues_its_run_in_postgres_and_nobody_dequeues_it(pg, instance, world):
    defs = build_definitions("embedded")
    sensor = defs.resolve_sensor_def("scenario_change_sensor")
    # A replay file lands: new state (an earlier test of this module built the empty replay set already,
    # and a first tick does not rebuild what the latest materialisation already reflects).
    (Path(world["scenarios"].replay_dir) / "landed.jsonl").write_text("{}\n")
    ctx = dg.build_sensor_context(instance=instance, resources=world, definitions=defs)
    with dg.partition_loading_context(dynamic_partitions_store=instance):  # as the daemon evaluates a tick
        tick = sensor.evaluate_tick(ctx)
    (request,) = tick.run_requests
    assert request.run_key.startswith("scenarios-") and tick.cursor

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="modelsmith_assets.definitions",
                             working_directory=str(REPO)), location_name="modelsmith_assets.definitions")
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        repository = _remote_repository(workspace)
        remote_sensor = repository.get_sensor("scenario_change_sensor")
        remote_job = repository.get_full_job(request.job_name or "materialize_scenarios_job")
        # What the sensor daemon does with a run request: create the run from the code location's job
        # (tagged with the run key and the sensor), then submit it to the instance's run coordinator.
        run = instance.create_run_for_job(
            defs.resolve_job_def(remote_job.name), run_config=request.run_config,
            tags={**request.tags, **dg.DagsterRun.tags_for_sensor(remote_sensor), RUN_KEY_TAG: request.run_key},
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin())
        submitted = instance.submit_run(run.run_id, workspace.create_request_context())
        assert submitted.status == dg.DagsterRunStatus.QUEUED
        # The daemon keeps the cursor in the schedule storage between ticks.
        instance.add_instigator_state(InstigatorState(
            remote_sensor.get_remote_origin(), InstigatorType.SENSOR, InstigatorStatus.RUNNING,
            SensorInstigatorData(cursor=tick.cursor, last_run_key=request.run_key)))

    second = pg.open()
    (queued,) = second.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))  # no daemon: still queued
    assert queued.run_id == run.run_id and queued.job_name == "materialize_scenarios_job"
    assert queued.tags[RUN_KEY_TAG] == request.run_key
    assert queued.tags["dagster/sensor_name"] == "scenario_change_sensor"
    assert queued.tags["modelsmith/trigger"] == "scenario change"
    # The lookup the daemon uses to run each run key once finds it too.
    assert [r.run_id for r in second.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key}))] == [run.run_id]
    assert pg.rows("SELECT status FROM runs WHERE run_id = %s", run.run_id) == [("QUEUED",)]

    state = second.get_instigator_state(remote_sensor.get_remote_origin_id(), remote_sensor.selector_id)
    assert state.instigator_data.cursor == tick.cursor
    ctx = dg.build_sensor_context(instance=second, cursor=state.instigator_data.cursor, resources=world,
                                  definitions=defs)
    with dg.partition_loading_context(dynamic_partitions_store=second):
        again = sensor.evaluate_tick(ctx)
    assert not again.run_requests  # resumed from the stored cursor: nothing changed, nothing requested


def test_dynamic_partitions_persist_across_instances(pg, instance):
    instance.add_dynamic_partitions("model_versions", ["a1b2c3d4e5f6", "0123456789ab"])
    instance.add_dynamic_partitions("repair_cycles", ["cycle-0001"])
    instance.add_dynamic_partitions("model_versions", ["a1b2c3d4e5f6"])  # idempotent

    second = pg.open()
    assert sorted(second.get_dynamic_partitions("model_versions")) == ["0123456789ab", "a1b2c3d4e5f6"]
    assert second.get_dynamic_partitions("repair_cycles") == ["cycle-0001"]
    second.delete_dynamic_partition("model_versions", "0123456789ab")
    assert pg.open().get_dynamic_partitions("model_versions") == ["a1b2c3d4e5f6"]
    assert sorted(pg.rows("SELECT partitions_def_name, partition FROM dynamic_partitions")) \
        == [("model_versions", "a1b2c3d4e5f6"), ("repair_cycles", "cycle-0001")]
