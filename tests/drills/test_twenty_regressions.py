"""Load drill: twenty regressions arrive at once.

Twenty different pins of the champion regress and each is reported twice (a re-pin and a backfill
find the same regression) before the pin-regression sensor ticks. The sensor must open exactly twenty
repair cycles and request twenty runs, one per cycle, with twenty distinct run keys; a second tick
adds nothing, and a tick re-evaluated from the old cursor asks for the same twenty run keys again
(which Dagster runs once each). Then the twenty runs go to the production instance
(`dagster.yaml.example` on a fresh PostgreSQL database: the run queue, at most four runs at once, the
`training` pool limited to one per run), `dagster-daemon run` launches them, and every one must train
a real LoRA adapter, one after the other: no two `adapter` steps (nor runs) overlap, every run
succeeds, twenty distinct adapters are registered.

Each run is the training link alone (`drill_training_job`, see tests/drills/load_support.py) on a real
cycle: its record, a validated diagnosis and 80 real labelled rows (40 of its segment, 40 replay
rows), on a tiny Llama, one epoch. The sensor part always covers all twenty cycles. The queue part
submits the first five of the twenty by default: more than the queue's four run slots, so a pool that
failed to hold training back would show, in about a quarter of the time; `MODELSMITH_DRILL_RUNS=20`
runs all twenty (the measured figure is in tests/README.md, with why CI runs five).
"""

import json
import os
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.tags import PARTITION_NAME_TAG, RUN_KEY_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

from modelsmith.base_model import TinyLlamaConfig, build_model
from modelsmith.cycles import CYCLES, cycle_dir
from modelsmith.diagnosis import Provenance, validate_diagnosis
from modelsmith.model_dir import Registry, short
from modelsmith.audit import bootstrap_champion
from modelsmith.champion import read_champion
from modelsmith.pins import load_pins
from modelsmith.prompt import prompts, train_tokenizer
from modelsmith.synthesis import filter_expr
from modelsmith_assets.automation import TRAINING_POOL, ensure_pool_limit
from modelsmith_assets.definitions import build_definitions
from resources import LocalStorage
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy
from tests.drills.load_support import (
    DRILL_JOB,
    DRILL_LOCATION,
    Daemon,
    build_drill_defs,
    fresh_postgres,
    write_instance_yaml,
    write_workspace,
)

pytestmark = pytest.mark.slow  # minutes each: `pytest -m 'not slow'` for a quick run

REPO = Path(__file__).resolve().parents[2]
REGRESSIONS = 20
QUEUED_RUNS = 5  # submitted to the queue by default (MODELSMITH_DRILL_RUNS overrides, up to 20)
TARGET_ROWS = 40  # per cycle, plus as many replay rows from other segments
RUN_TIMEOUT_S_PER_RUN, RUN_TIMEOUT_S_MAX = 60, 1_050  # the drill gives up rather than hang (pytest's own: 1,200 s)


def _timings() -> Path | None:
    """Where the drill writes its figures (MODELSMITH_DRILL_TIMINGS=FILE), for the README; None: nowhere."""
    path = os.environ.get("MODELSMITH_DRILL_TIMINGS")
    return Path(path) if path else None


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with fresh_postgres() as env:
        yield env


@pytest.fixture(scope="module")
def world(tmp_path_factory, pg):
    """A champion (a tiny Llama), twenty regressed pins each reported twice, on the production instance."""
    root = tmp_path_factory.mktemp("twenty")
    home, dagster_home = root / "home", root / "dagster"
    write_instance_yaml(dagster_home)
    env = {**pg, "DAGSTER_HOME": str(dagster_home), "MODELSMITH_HOME": str(home), "MODELSMITH_SENSORS": "stopped"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        instance = dg.DagsterInstance.from_config(str(dagster_home))

        v2 = shipped_policy(2)
        pool = label_requests(generate_requests(3_000, seed=2024), v2)
        model_dir = home / "models" / "tiny"
        tok = train_tokenizer(prompts(pool))
        build_model(tok, TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1),
                    seed=0).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        base = Registry(home).register(model_dir, "base")
        bootstrap_champion(home, base.digest)
        instance.add_dynamic_partitions("model_versions", [base.key])

        # The twenty largest segments of the pool (not "all"): each has its rows in the pool to train on.
        segments = []
        for p in load_pins().pins:
            if not p.where:
                continue
            filters = {c.feature: {c.op: c.value} for c in p.where}
            rows = pool.filter(filter_expr(filters)).height
            segments.append((rows, p.name, filters))
        segments = sorted(segments, key=lambda s: (-s[0], s[1]))[:REGRESSIONS]
        assert len(segments) == REGRESSIONS and segments[-1][0] >= TARGET_ROWS, segments

        run_dir = home / "pins" / base.key / "drill-run"
        run_dir.mkdir(parents=True)
        reports = []
        for rows, name, filters in segments:
            report = {"model_version": base.digest, "policy_digest": v2.digest, "scenarios_digest": "d" * 64,
                      "run_dir": str(run_dir), "failed": [],
                      "regressed": [{"pin": name, "rows": rows, "accuracy": 0.8, "reference_accuracy": 0.97,
                                     "drop": 0.17, "p_value": 1e-6, "test": "mcnemar", "failing_rows": 3,
                                     "failing_row_ids": ["r1", "r2", "r3"]}]}
            path = home / "reports" / base.key / f"{len(reports):02d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report))
            reports.append((name, filters, path))
        for _ in range(2):  # each regression seen twice before the sensor ticks: a re-pin and a backfill
            for name, _, path in reports:
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    "regression_report", partition=base.key, metadata={
                        "regressed": 1, "failed": 0, "is_champion": True, "pins": name,
                        "path": dg.MetadataValue.path(str(path))}))
        yield {"home": home, "dagster_home": dagster_home, "env": env, "instance": instance, "pool": pool,
               "segments": {name: filters for _, name, filters in segments}, "base": base, "root": root}
        instance.dispose()


def _tick(defs, instance, home, cursor=None):
    sensor = defs.resolve_sensor_def("pin_regression_sensor")
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                  resources={"storage": LocalStorage(root=str(home))})
    with dg.partition_loading_context(dynamic_partitions_store=instance):  # as the daemon evaluates a tick
        return sensor.evaluate_tick(ctx)


@pytest.fixture(scope="module")
def ticks(world):
    defs = build_definitions("embedded")
    storage = world["instance"].event_log_storage
    assert TRAINING_POOL not in storage.get_concurrency_keys()  # a fresh instance: no pool row yet
    first = _tick(defs, world["instance"], world["home"])
    second = _tick(defs, world["instance"], world["home"], first.cursor)
    replayed = _tick(defs, world["instance"], world["home"])  # the daemon re-evaluating the first tick (a crash)
    return first, second, replayed


def test_twenty_regressions_open_twenty_cycles_and_request_twenty_runs_once(world, ticks, monkeypatch):
    monkeypatch.setenv("MODELSMITH_HOME", str(world["home"]))
    first, second, replayed = ticks
    home, instance = world["home"], world["instance"]
    requests = first.run_requests
    assert len(requests) == REGRESSIONS  # forty reports, twenty regressions: one request each
    assert len({r.run_key for r in requests}) == REGRESSIONS == len({r.partition_key for r in requests})
    assert all(r.job_name == "repair_cycle_job" and r.run_key == f"cycle-{r.partition_key}" for r in requests)
    cycles = {r.partition_key for r in requests}
    assert set(instance.get_dynamic_partitions(CYCLES)) == cycles
    opened = {p.name for p in (home / "cycles").iterdir() if (p / "cycle.json").is_file()}
    assert opened == cycles
    regressed = {json.loads((cycle_dir(home, c) / "cycle.json").read_text())["regressed"][0] for c in cycles}
    assert regressed == set(world["segments"])  # one cycle per regressed pin, none left out, none twice

    assert not second.run_requests  # the next tick: nothing new
    assert second.cursor == first.cursor
    assert sorted(r.run_key for r in replayed.run_requests) == sorted(r.run_key for r in requests)
    assert len(os.listdir(home / "cycles")) == REGRESSIONS  # re-evaluating opened no new cycle

    # The tick wrote the training pool's limit before its runs reached the queue (without it, the
    # queue's first pass launched the first burst of training runs together: found by this drill).
    storage = instance.event_log_storage
    assert storage.get_concurrency_info(TRAINING_POOL).limit == 1
    storage.set_concurrency_slots("drill-explicit", 3)  # an operator's explicit limit is never replaced
    assert not ensure_pool_limit(instance, "drill-explicit")
    assert storage.get_concurrency_info("drill-explicit").limit == 3


def _prepare_training_inputs(world, cycle: str, index: int) -> None:
    """What the links before `adapter` leave for a cycle: a validated diagnosis and the training rows."""
    home, pool = world["home"], world["pool"]
    record = json.loads((cycle_dir(home, cycle) / "cycle.json").read_text())
    (pin,) = record["regressed"]
    filters = world["segments"][pin]
    raw = {"segments": [pin], "hypothesis": f"{pin} regressed under the new policy.",
           "features": [{"feature": "vertical", "values": [filters["vertical"]["eq"]], "error_lift": 2.0}],
           "confidence": 0.8, "recipe": {"stages": ["sft"]},
           "synthesis": {"filters": filters, "rows": 50, "replay_ratio": 1.0, "contrast_share": 0.0}}
    diagnosis = validate_diagnosis(raw, cycle=cycle, known_segments={pin},
                                   provenance=Provenance("statistical", "load drill", "0" * 64, "0" * 64))
    path = cycle_dir(home, cycle) / "diagnosis.json"
    path.write_text(json.dumps({**diagnosis.as_dict(), "digest": diagnosis.digest}, indent=2, default=list))
    target = pool.filter(filter_expr(filters)).sample(TARGET_ROWS, seed=index)
    replay = pool.filter(~filter_expr(filters)).sample(TARGET_ROWS, seed=index)
    rows = pl.concat([target.with_columns(source=pl.lit("target")), replay.with_columns(source=pl.lit("replay"))])
    out = home / "datasets" / cycle / "rows.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.write_parquet(out)


def _adapter_steps(instance, run_id: str) -> tuple[float, float]:
    """(start, end) of the run's `adapter` step, from its event log."""
    events = instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS})
    start = [e.timestamp for e in events if e.step_key == "adapter" and e.dagster_event_type == dg.DagsterEventType.STEP_START]
    end = [e.timestamp for e in events if e.step_key == "adapter" and e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS]
    assert len(start) == len(end) == 1, (run_id, events)
    return start[0], end[0]


def test_the_training_runs_queue_through_the_pool_one_at_a_time_and_all_finish(world, ticks, monkeypatch):
    monkeypatch.setenv("MODELSMITH_HOME", str(world["home"]))
    first, _, _ = ticks
    home, instance, env = world["home"], world["instance"], world["env"]
    requests = sorted(first.run_requests, key=lambda r: r.partition_key)
    limit = min(REGRESSIONS, int(os.environ.get("MODELSMITH_DRILL_RUNS") or QUEUED_RUNS))
    requests = requests[:limit]
    for i, r in enumerate(requests):
        _prepare_training_inputs(world, r.partition_key, i)

    defs = build_drill_defs()
    job = defs.resolve_job_def(DRILL_JOB)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="tests.drills.load_support",
                             attribute="drill_defs", working_directory=str(REPO)), location_name=DRILL_LOCATION)
    submitted_at = time.time()
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        (entry,) = workspace.create_request_context().get_code_location_entries().values()
        assert entry.code_location, entry.load_error
        (repository,) = entry.code_location.get_repositories().values()
        remote_job = repository.get_full_job(DRILL_JOB)
        # What the sensor daemon does with each request (skip a run key that already has a run, else
        # create the run tagged with its key and partition, and submit it to the queue), twice: the
        # replayed tick's requests find their runs and create nothing.
        for batch in (requests, sorted(ticks[2].run_requests, key=lambda r: r.partition_key)[:limit]):
            for r in batch:
                if instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: r.run_key})):
                    continue
                run = instance.create_run_for_job(
                    job, tags={**r.tags, RUN_KEY_TAG: r.run_key, PARTITION_NAME_TAG: r.partition_key},
                    remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin())
                assert instance.submit_run(run.run_id, workspace.create_request_context()).status \
                    == dg.DagsterRunStatus.QUEUED
    runs = instance.get_runs(dg.RunsFilter(job_name=DRILL_JOB))
    assert len(runs) == len(requests)  # one run per run key, however often it was requested

    daemon = Daemon(write_workspace(world["root"] / "workspace.yaml"), {**os.environ, **env},
                    world["root"] / "daemon.log")
    in_progress = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
    done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    most_at_once, queued_behind = 0, 0
    try:
        timeout_s = min(RUN_TIMEOUT_S_MAX, 60 + RUN_TIMEOUT_S_PER_RUN * len(requests))
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = [r.status for r in instance.get_runs(dg.RunsFilter(job_name=DRILL_JOB))]
            running = sum(s in in_progress for s in statuses)
            most_at_once = max(most_at_once, running)
            if running:
                queued_behind = max(queued_behind, sum(s == dg.DagsterRunStatus.QUEUED for s in statuses))
            if all(s in done for s in statuses):
                break
            assert daemon.alive(), daemon.tail()
            assert time.monotonic() < deadline, f"runs not done after {timeout_s} s: {statuses}\n{daemon.tail()}"
            time.sleep(0.5)
    finally:
        daemon.stop()
    finished_at = time.time()

    records = instance.get_run_records(dg.RunsFilter(job_name=DRILL_JOB))
    failed = [r.dagster_run.run_id for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, "\n".join(str(e.message or e.dagster_event) for e in instance.all_logs(failed[0])[-8:])
    assert {r.dagster_run.tags[PARTITION_NAME_TAG] for r in records} == {r.partition_key for r in requests}
    # The pool, not the queue's limit of four, kept training to one run at a time.
    assert most_at_once == 1 and queued_behind >= min(3, len(requests) - 1)
    steps = sorted(_adapter_steps(instance, r.dagster_run.run_id) for r in records)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(steps, steps[1:], strict=False)), steps
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans
    assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).limit == 1

    adapters = [json.loads((cycle_dir(home, r.partition_key) / "adapter.json").read_text()) for r in requests]
    assert len({a["model_version"] for a in adapters}) == len(requests)  # a distinct adapter per cycle
    registry = Registry(home)
    assert all(registry.get(a["model_version"]).kind == "adapter" for a in adapters)
    assert {short(a["model_version"]) for a in adapters} <= set(instance.get_dynamic_partitions("model_versions"))
    assert read_champion(home).model_version == world["base"].digest  # training never moves the champion

    train_s = [end - start for start, end in steps]
    figures = {"runs": len(requests), "wall_s": round(finished_at - submitted_at, 1),
               "first_start_s": round(spans[0][0] - submitted_at, 1),
               "per_run_s": round((spans[-1][1] - spans[0][0]) / len(spans), 1),
               "adapter_step_s": {"min": round(min(train_s), 1), "max": round(max(train_s), 1),
                                  "mean": round(sum(train_s) / len(train_s), 1)},
               "gap_between_runs_s": round(max(b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)), 1)
               if len(spans) > 1 else 0.0,
               "loadavg": os.getloadavg()[0]}
    print(f"\ntwenty-regressions drill: {json.dumps(figures)}")
    if _timings():
        _timings().write_text(json.dumps(figures, indent=2))
