"""PostgreSQL restarted, or gone for longer, while a real run writes to it.

The production instance (`dagster.yaml.example`, only its port changed) on a PostgreSQL server of
the drill's own: a real PostgreSQL (the installed binaries, `initdb` into a temp directory), so that
restarting it disturbs nobody else's database. `materialize_scenarios_job` runs in a thread while:

* the server is restarted (`pg_ctl restart -m fast`) as the `replayed_auctions` step starts,
  wherever its writes are: the run succeeds, or (when the restart cut a statement in flight, which
  dagster-postgres does not retry) the step fails naming the lost connection (or the run does, when
  the cut statement was one of the run's own between steps);
* the server is down for about a second while the step computes: dagster-postgres opens a
  connection per write and retries a failed connect 5 times with backoff, so the run succeeds;
* the server stays down until those retries are spent: the step fails with a clear error ("too
  many retries for DB connection ... Connection refused") and the run is recorded as failed.

After a failure the same job runs again and succeeds. Nothing is ever recorded twice: one run
record per run, at most one materialisation of each asset and one evaluation of each check per run.
Skipped without PostgreSQL's binaries, unless MODELSMITH_REQUIRE_POSTGRES=1 (CI): then a failure.
"""

import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.drills.fault_support import REPO

ASSETS = ("policy", "scenario_pack", "replayed_auctions")
CHECKS = ("requests_balance", "feature_table_expectations", "label_expectations")


def _bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    candidates = [Path(out)] if out else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


class Server:
    """A PostgreSQL server in a temp directory, on a free port, run as `postgres` when we are root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="modelsmith-pg-drill-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._pg("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=60)

    def _ctl(self, *args: str) -> None:
        self._pg("pg_ctl", "-D", str(self.root / "data"), *args)

    def start(self) -> None:
        self._ctl("-o", self.opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._ctl("-m", "fast", "-o", self.opts, "-l", str(self.root / "log"), "-w", "restart")

    def connect(self, dbname: str):
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, connect_timeout=3)
        conn.autocommit = True
        return conn

    def rows(self, dbname: str, sql: str, *args) -> list[tuple]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    bindir = _bindir()
    required = os.environ.get("MODELSMITH_REQUIRE_POSTGRES", "") not in ("", "0")
    if bindir is None:
        msg = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if required:
            pytest.fail(msg + " (required: MODELSMITH_REQUIRE_POSTGRES is set)")
        pytest.skip(msg + "; CI sets MODELSMITH_REQUIRE_POSTGRES=1 and always runs this drill")
    srv = Server(bindir)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def instance(server, tmp_path_factory):
    """The example instance (PostgreSQL storage, run queue, pools) on a fresh database of the drill's server."""
    import dagster as dg

    dbname = f"modelsmith_drill_{secrets.token_hex(4)}"
    admin = server.connect("postgres")
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    admin.close()
    home = tmp_path_factory.mktemp("dagster_home")
    example = (REPO / "dagster.yaml.example").read_text()
    assert example.count("port: 5432") == 1
    (home / "dagster.yaml").write_text(example.replace("port: 5432", f"port: {server.port}"))
    env = {"DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_HOST": "127.0.0.1",
           "DAGSTER_PG_DB": dbname, "DAGSTER_HOME": str(home)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        inst = dg.DagsterInstance.from_config(str(home))
        try:
            yield inst, dbname
        finally:
            inst.dispose()


class RetryWarnings(logging.Handler):
    """Counts dagster-postgres's "Retrying failed database connection" warnings (from the run's thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Retrying failed database connection" in record.getMessage():
            self.count += 1


@pytest.fixture
def retries():
    handler = RetryWarnings()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture
def paused(monkeypatch):
    """Holds the `replayed_auctions` step just before it reports its materialisation (its files written,
    its log line recorded, no write in flight) until released; the next write is the materialisation.

    (A failed write of a user log line is only reported, never raised, by Dagster: pausing before the
    log line would spend the outage on it.)
    """
    import modelsmith_assets.scenarios as stage

    computing, release, original = threading.Event(), threading.Event(), stage.segment_counts

    def counts(*args, **kwargs):
        computing.set()
        assert release.wait(120)
        return original(*args, **kwargs)

    monkeypatch.setattr(stage, "segment_counts", counts)
    return computing, release


class Run:
    """`materialize_scenarios_job` on the instance, in a thread."""

    def __init__(self, inst, home: Path, n: int = 500) -> None:
        from modelsmith_assets.definitions import build_definitions
        from resources import LocalStorage, ScenarioSettings

        (home / "replay").mkdir(parents=True, exist_ok=True)
        resources = {"storage": LocalStorage(root=str(home)),
                     "scenarios": ScenarioSettings(pack_size=n, replay_dir=str(home / "replay"))}
        job = build_definitions("embedded").resolve_job_def("materialize_scenarios_job")
        self.result, self.error, self.seconds = None, None, 0.0

        def go() -> None:
            started = time.monotonic()
            try:
                self.result = job.execute_in_process(instance=inst, resources=resources, raise_on_error=False)
            except BaseException as e:  # noqa: BLE001 - asserted by the test
                self.error = e
            self.seconds = time.monotonic() - started

        self.thread = threading.Thread(target=go)
        self.thread.start()

    def join(self):
        self.thread.join(timeout=300)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.result


def _wait_for_step(server: Server, dbname: str, step: str, timeout: float = 120) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if server.rows(dbname, "SELECT 1 FROM event_logs WHERE dagster_event_type = 'STEP_START' AND step_key = %s "
                                   "AND run_id IN (SELECT run_id FROM runs WHERE status = 'STARTED')", step):
                return
        except Exception:  # noqa: BLE001 - the tables may not exist yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"step {step} never started")


def _recorded(server: Server, dbname: str, inst, run_id: str) -> dict:
    """What the database holds for one run: (kind, asset or step or check) -> how many times."""
    import dagster as dg

    rows = server.rows(dbname, "SELECT dagster_event_type, coalesce(asset_key, step_key, ''), count(*) FROM event_logs "
                               "WHERE run_id = %s AND dagster_event_type IN ('ASSET_MATERIALIZATION', 'STEP_SUCCESS', "
                               "'STEP_FAILURE') GROUP BY 1, 2", run_id)
    recorded = {(kind, key): count for kind, key, count in rows}
    for name in CHECKS:
        history = inst.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("replayed_auctions"), name), limit=50)
        runs = [r.run_id for r in history if r.run_id == run_id and r.status.value != "PLANNED"]
        if runs:
            recorded[("ASSET_CHECK_EVALUATION", name)] = len(runs)
    return recorded


def _succeeded_once(server: Server, dbname: str, inst, result) -> None:
    assert result.success
    assert server.rows(dbname, "SELECT status FROM runs WHERE run_id = %s", result.run_id) == [("SUCCESS",)]
    recorded = _recorded(server, dbname, inst, result.run_id)
    assert set(recorded) == {*(("ASSET_MATERIALIZATION", f'["{a}"]') for a in ASSETS),
                             *(("STEP_SUCCESS", a) for a in ASSETS), *(("ASSET_CHECK_EVALUATION", c) for c in CHECKS)}
    assert all(count == 1 for count in recorded.values()), recorded


def _failed_clearly(server: Server, dbname: str, inst, result, *expected: str, step_only: bool = False) -> str:
    """The run failed with a database error that says what happened, and nothing was recorded twice.

    Usually the `replayed_auctions` step fails; a restart that cuts one of the run's own writes
    between steps fails the run itself instead (`step_only` demands the step).
    """
    assert not result.success
    steps = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    if steps or step_only:
        (failure,) = steps
        assert failure.step_key == "replayed_auctions", failure.step_key
    else:
        (failure,) = [e for e in result.all_events if e.event_type_value == "RUN_FAILURE"]
    assert failure.event_specific_data.error is not None, failure
    text = failure.event_specific_data.error.to_string()
    assert "get_run_storage_id" not in text, text  # telemetry's unretried read: off in dagster.yaml.example
    assert "OperationalError" in text, text
    assert all(e in text for e in expected), text
    assert server.rows(dbname, "SELECT status FROM runs WHERE run_id = %s", result.run_id) == [("FAILURE",)]
    recorded = _recorded(server, dbname, inst, result.run_id)
    if steps:
        assert recorded[("STEP_FAILURE", "replayed_auctions")] == 1, recorded
    assert all(count == 1 for count in recorded.values()), recorded
    return text


def _runs_of(inst) -> int:
    return len(inst.get_runs())


def test_a_restart_as_the_step_starts_succeeds_or_fails_clearly_and_records_nothing_twice(server, instance, tmp_path):
    inst, dbname = instance
    before = _runs_of(inst)
    run = Run(inst, tmp_path / "home")
    _wait_for_step(server, dbname, "replayed_auctions")
    down = time.monotonic()
    server.restart()
    restart_s = time.monotonic() - down
    result = run.join()
    if result.success:
        _succeeded_once(server, dbname, inst, result)
        outcome = "run succeeded"
    else:  # the restart cut a write in flight
        text = _failed_clearly(server, dbname, inst, result)
        assert "server closed the connection" in text or "too many retries for DB connection" in text
        rerun = Run(inst, tmp_path / "home")
        _succeeded_once(server, dbname, inst, rerun.join())
        where = "step" if "STEP_FAILURE" in {e.event_type_value for e in result.all_events} else "run"
        outcome = f"{where} failed, rerun succeeded in {rerun.seconds:.1f}s"
    assert _runs_of(inst) == before + (1 if result.success else 2)
    print(f"\n[drill] postgres restart ({restart_s:.1f}s) as the step started: {outcome} ({run.seconds:.1f}s)")


def test_down_for_a_second_while_the_step_computes_is_ridden_out(server, instance, tmp_path, retries, paused):
    inst, dbname = instance
    computing, release = paused
    run = Run(inst, tmp_path / "home")
    assert computing.wait(120)
    server.stop()
    retries.count = 0
    release.set()  # the step goes on to record its materialisation while the server is down
    down = time.monotonic()
    while retries.count < 1 and time.monotonic() - down < 60:
        time.sleep(0.02)
    time.sleep(1.0)
    server.start()
    outage_s = time.monotonic() - down
    _succeeded_once(server, dbname, inst, run.join())
    assert retries.count >= 2  # ridden out by dagster-postgres's connection retries
    print(f"\n[drill] postgres down {outage_s:.1f}s mid-step: {retries.count} connection retries, run succeeded "
          f"({run.seconds:.1f}s)")


def test_down_past_the_connection_retries_fails_the_run_clearly_then_a_rerun_succeeds(server, instance, tmp_path,
                                                                                       retries, paused):
    import dagster as dg

    inst, dbname = instance
    computing, release = paused
    before = _runs_of(inst)
    run = Run(inst, tmp_path / "home")
    assert computing.wait(120)
    server.stop()
    retries.count = 0
    release.set()
    down = time.monotonic()
    while retries.count < 6 and time.monotonic() - down < 120:  # 1 attempt + 5 retries: given up
        time.sleep(0.005)
    server.start()  # back in time for the failure itself to be recorded
    outage_s = time.monotonic() - down
    failed = run.join()
    _failed_clearly(server, dbname, inst, failed, "too many retries for DB connection", "Connection refused",
                    step_only=True)
    assert ("ASSET_MATERIALIZATION", '["replayed_auctions"]') not in _recorded(server, dbname, inst, failed.run_id)

    release.set()
    rerun = Run(inst, tmp_path / "home")
    again = rerun.join()
    _succeeded_once(server, dbname, inst, again)
    assert _runs_of(inst) == before + 2
    per_run = [r.run_id for r in inst.fetch_materializations(dg.AssetKey("replayed_auctions"), limit=50).records]
    assert failed.run_id not in per_run and per_run.count(again.run_id) == 1
    print(f"\n[drill] postgres down {outage_s:.1f}s (past 6 connection attempts): step failed clearly, rerun "
          f"succeeded in {rerun.seconds:.1f}s")
