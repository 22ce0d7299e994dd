"""Sensors and the schedule that close the loop, running by default when `dagster dev` starts.

- `scenario_change_sensor`: a new active policy digest or new/changed replay files re-run the
  scenario stage (run key = the fingerprint, so each change runs once).
- `champion_repin_sensor`: every new `replayed_auctions` (or `base_model`) materialisation re-pins
  the champion's partition; with no champion yet it builds the base model first.
- `pin_regression_sensor`: a champion `regression_report` with regressed pins opens a repair cycle
  (its dynamic partition) and launches `repair_cycle_job` for it, once (run key = cycle id), unless
  a run of that cycle exists already (the headless loop's, say). The report lists only pins the
  paired test confirmed, so noise opens nothing.
- `nightly_repin`: 03:00 every day, the scenario stage; the repin sensor follows.

Each decision is a plain function over the instance and the home, which tests call directly.
"""

import json
import os
from pathlib import Path

import dagster as dg

from modelsmith.champion import read_champion
from modelsmith.cycles import CYCLES, open_cycle, read_cycle
from modelsmith.labels import cycle_label, version_label
from modelsmith.model_dir import Registry, short
from resources.scenarios import ScenarioSettings
from resources.storage import StorageEngine

def _default_status() -> dg.DefaultSensorStatus:
    """Running unless MODELSMITH_SENSORS=stopped (a UI session that should only watch)."""
    stopped = os.environ.get("MODELSMITH_SENSORS", "running") == "stopped"
    return dg.DefaultSensorStatus.STOPPED if stopped else dg.DefaultSensorStatus.RUNNING


def sensor_interval_s() -> int:
    """Seconds between a sensor's ticks: MODELSMITH_SENSOR_INTERVAL_S, default 30 (tests that watch the
    daemon react use a few seconds)."""
    raw = os.environ.get("MODELSMITH_SENSOR_INTERVAL_S", "").strip() or "30"
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(f"MODELSMITH_SENSOR_INTERVAL_S: must be a whole number of seconds >= 1, got {raw!r}")
    return seconds


SCENARIOS_JOB, BASE_JOB, PIN_JOB, REPAIR_JOB = ("materialize_scenarios_job", "build_base_model_job",
                                                "pin_model_version_job", "repair_cycle_job")


def last_scenario_fingerprint(instance: dg.DagsterInstance) -> str | None:
    """The fingerprint the latest `replayed_auctions` was built from (by any run: a sensor's, the loop's, the UI's)."""
    records = instance.fetch_materializations(dg.AssetKey("replayed_auctions"), limit=1).records
    meta = records[0].asset_materialization.metadata if records else {}
    return meta["scenario_fingerprint"].value if "scenario_fingerprint" in meta else None


def _new_materializations(instance: dg.DagsterInstance, asset: str, after: int) -> list:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=after), limit=100, ascending=True).records


def repin_requests(instance: dg.DagsterInstance, home: Path, cursor: int) -> tuple[list[dg.RunRequest], int]:
    """Run requests for new scenario or base-model materialisations after `cursor`, and the new cursor."""
    records = _new_materializations(instance, "replayed_auctions", cursor) + _new_materializations(
        instance, "base_model", cursor)
    if not records:
        return [], cursor
    latest = max(r.storage_id for r in records)
    champion = read_champion(home)
    if champion is None:
        if not any(r.asset_key == dg.AssetKey("base_model") for r in records):
            return [dg.RunRequest(job_name=BASE_JOB, run_key=f"bootstrap-{latest}")], latest
        return [], latest
    if not instance.fetch_materializations(dg.AssetKey("replayed_auctions"), limit=1).records:
        return [], latest
    key = short(champion.model_version)
    if cursor == 0 and _pinned_after(instance, key, latest):
        return [], latest  # first tick: the champion was already pinned on the newest scenarios (e.g. by the loop)
    name = version_label(home, Registry(home).get(champion.model_version))
    return [dg.RunRequest(job_name=PIN_JOB, partition_key=key, run_key=f"repin-{key}-{latest}",
                          tags={"modelsmith/trigger": "new scenarios or base model",
                                "modelsmith/model_name": name})], latest


def _pinned_after(instance: dg.DagsterInstance, partition: str, storage_id: int) -> bool:
    pinned = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("pin_results"), asset_partitions=[partition]), limit=1).records
    return bool(pinned) and pinned[0].storage_id > storage_id


def regression_requests(instance: dg.DagsterInstance, home: Path, cursor: int):
    """(cycle ids to add, run requests, new cursor) for new champion regression reports after `cursor`."""
    records = _new_materializations(instance, "regression_report", cursor)
    cycles, requests = [], []
    for record in records:
        meta = record.asset_materialization.metadata
        if meta["regressed"].value == 0 or not meta["is_champion"].value:
            continue
        champion = read_champion(home)
        report = json.loads(Path(meta["path"].value).read_text())
        if champion is None or report["model_version"] != champion.model_version:
            continue  # the champion moved since: this report no longer describes it
        cycle = open_cycle(home, report)
        if cycle in cycles:
            continue  # the same regression reported twice since the last tick (a re-pin, a backfill): one request
        if instance.get_run_ids(dg.RunsFilter(job_name=REPAIR_JOB, tags={"dagster/partition": cycle}), limit=1):
            continue  # already run (by `modelsmith loop`, a person, or an earlier daemon): a re-run is a backfill
        cycles.append(cycle)
        requests.append(dg.RunRequest(job_name=REPAIR_JOB, partition_key=cycle, run_key=f"cycle-{cycle}",
                                      tags={"modelsmith/trigger": "pin regression", "modelsmith/cycle": cycle,
                                            "modelsmith/cycle_label": cycle_label(read_cycle(home, cycle))}))
    latest = max((r.storage_id for r in records), default=cursor)
    return cycles, requests, latest


TRAINING_POOL = "training"  # the adapter asset's pool (modelsmith_assets/repair.py)


def ensure_pool_limit(instance: dg.DagsterInstance, pool: str = TRAINING_POOL) -> bool:
    """Write `pool`'s default limit to the instance before the first runs that need it are queued.

    Dagster's run queue (1.13) writes a pool's default limit on the first dequeue pass that sees a
    run needing it, but judges that same pass with the pool list it read before, as if the pool had
    no limit: a burst of training runs queued on a fresh instance (twenty regressions at once) all
    launch, up to max_concurrent_runs, and train side by side. With the limit written first, the
    queue holds them back from the start. A limit already there (the default's, or one set with
    `dagster instance concurrency set`) is left alone; with no default limit configured (the
    embedded SQLite instance) there is nothing to write. True when it wrote the limit.
    """
    storage = instance.event_log_storage
    if instance.global_op_concurrency_default_limit is None or pool in storage.get_concurrency_keys():
        return False
    return bool(storage.initialize_concurrency_limit_to_default(pool))


def automation_defs(jobs: dict) -> dg.Definitions:
    """`jobs`: the code location's jobs by name (the sensors launch them). Built per call, so the
    sensor interval is read when the definitions load."""
    interval = sensor_interval_s()

    @dg.sensor(job_name=SCENARIOS_JOB, default_status=_default_status(), minimum_interval_seconds=interval)
    def scenario_change_sensor(context: dg.SensorEvaluationContext, scenarios: ScenarioSettings,
                               storage: StorageEngine):
        """Re-run the scenario stage when the active policy or the replay files change."""
        fingerprint = scenarios.fingerprint(storage.base())
        if not context.cursor and last_scenario_fingerprint(context.instance) == fingerprint:  # None, or the UI's ""
            context.update_cursor(fingerprint)  # first tick: the latest materialisation is already of this state
            return dg.SkipReason("the latest replayed_auctions already reflects this policy and these replay files")
        if context.cursor == fingerprint:
            return dg.SkipReason("policy and replay files unchanged")
        context.update_cursor(fingerprint)
        return dg.RunRequest(run_key=f"scenarios-{fingerprint[:16]}", tags={"modelsmith/trigger": "scenario change"})

    @dg.sensor(jobs=[jobs[PIN_JOB], jobs[BASE_JOB]], default_status=_default_status(),
               minimum_interval_seconds=interval)
    def champion_repin_sensor(context: dg.SensorEvaluationContext, storage: StorageEngine):
        """Re-pin the champion after new replayed auctions or a new base model (building the base first if needed)."""
        requests, cursor = repin_requests(context.instance, storage.base(), int(context.cursor or 0))
        context.update_cursor(str(cursor))
        return requests or dg.SkipReason("no new scenarios or base model")

    @dg.sensor(job_name=REPAIR_JOB, default_status=_default_status(), minimum_interval_seconds=interval)
    def pin_regression_sensor(context: dg.SensorEvaluationContext, storage: StorageEngine):
        """Open a repair cycle for each new champion regression, and launch its chain once."""
        cycles, requests, cursor = regression_requests(context.instance, storage.base(), int(context.cursor or 0))
        context.update_cursor(str(cursor))
        if not requests:
            return dg.SkipReason("no new regression of the champion")
        context.instance.add_dynamic_partitions(CYCLES, cycles)  # idempotent; before the runs that need them
        ensure_pool_limit(context.instance)  # before the first training runs reach the queue
        return requests

    nightly_repin = dg.ScheduleDefinition(name="nightly_repin", cron_schedule="0 3 * * *", job_name=SCENARIOS_JOB,
                                          default_status=dg.DefaultScheduleStatus(_default_status().value),
                                          description="Re-ingest everything at 03:00; the repin sensor re-pins the champion")
    return dg.Definitions(sensors=[scenario_change_sensor, champion_repin_sensor, pin_regression_sensor],
                          schedules=[nightly_repin])
