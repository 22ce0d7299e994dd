"""The loop under `dagster dev` with its daemon, as a user runs it: sensors on, a policy change made
while it runs opens a repair cycle with no further action, the README's backfill commands re-pin
every model version and re-run a range of cycles, and a reviewer approves in a real browser.

One home for the module: `modelsmith loop --policy v1` builds and pins the champion (every pin
passes), then `dagster dev -w workspace.yaml` starts on that home in its own process group and is
stopped by it. The tests run in file order (the story's order). The slowest file after the story.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from modelsmith_cli.headless import cycle_outcome
from modelsmith.evidence import cycle_bundle_dirs
from modelsmith.model_dir import file_sha256, short
from modelsmith.champion import read_champion
from scenario_data.policy import POLICIES_DIR
from tests.conftest import seed_default_base

pytestmark = pytest.mark.slow  # minutes each: `pytest -m 'not slow'` for a quick run

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
SENSOR_INTERVAL_S = 5  # MODELSMITH_SENSOR_INTERVAL_S for the daemon under test (30 s by default)
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class Live:
    """A running `dagster dev` on one Modelsmith home."""

    def __init__(self, home: Path, port: int, log: Path) -> None:
        self.home, self.port, self.log = home, port, log
        self.env = {**os.environ, "MODELSMITH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
        self.url = f"http://127.0.0.1:{port}"

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home / "dagster"))

    def runs(self, **filters) -> list[dg.DagsterRun]:
        with self.instance() as instance:
            return list(instance.get_runs(dg.RunsFilter(**filters)))

    def cli(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([*args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done

    def wait(self, what: str, until: Callable[[], object], timeout: float) -> object:
        deadline = time.time() + timeout
        while not (value := until()):
            if time.time() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; dagster dev log:\n{tail}")
            time.sleep(3)
        return value

    def finished(self, runs: list[dg.DagsterRun], timeout: float) -> list[dg.DagsterRun]:
        ids = [r.run_id for r in runs]

        def done():
            with self.instance() as instance:
                now = [instance.get_run_by_id(i) for i in ids]
            return now if all(r.status in TERMINAL for r in now) else None

        return self.wait(f"runs {ids} to finish", done, timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tmp_path_factory, realdata, default_base_models) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("live") / "home"
    shutil.copytree(realdata / "openrtb", home / "replay")  # the real replay files, as the story ingests them
    seed_default_base(home, default_base_models)  # the session's build of the default base model
    port = _free_port()
    log = home / "dagster-dev.log"
    env = {**os.environ, "MODELSMITH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env.pop("MODELSMITH_SENSORS", None)  # the default: sensors and the schedule running
    env["MODELSMITH_SENSOR_INTERVAL_S"] = str(SENSOR_INTERVAL_S)
    pinned = subprocess.run([str(BIN / "modelsmith"), "loop", "--json", "--policy", str(POLICIES_DIR / "v1.yaml")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    assert json.loads(pinned.stdout.strip().splitlines()[-1])["regressed"] == []
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            running = Live(home, port, log)
            running.wait("the webserver", lambda: _answers(running.url, proc), timeout=240)
            yield running
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the webserver, the daemon, code servers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _answers(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"dagster dev exited with {proc.returncode}")
    try:
        urllib.request.urlopen(f"{url}/server_info", timeout=2)
        return True
    except OSError:
        return False


def test_a_policy_change_while_dagster_dev_runs_opens_a_cycle_by_itself(live: Live):
    # The daemon's first ticks see a home the loop already built: no re-ingest, no re-pin.
    live.wait("the sensors' first ticks", lambda: _ticked(live, "scenario_change_sensor"), timeout=180)
    assert live.runs(job_name="materialize_scenarios_job", tags={"modelsmith/trigger": "scenario change"}) == []

    live.cli(str(BIN / "modelsmith"), "policy", "activate", str(POLICIES_DIR / "v2.yaml"))
    repair = live.wait("a repair run launched by the regression sensor",
                       lambda: live.runs(job_name="repair_cycle_job"), timeout=600)
    (run,) = live.finished(repair, timeout=900)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["modelsmith/trigger"] == "pin regression" and run.tags["dagster/sensor_name"] == "pin_regression_sensor"
    cycle = run.tags["dagster/partition"]
    with live.instance() as instance:
        assert instance.get_dynamic_partitions("repair_cycles") == [cycle]
    (scenarios,) = live.runs(job_name="materialize_scenarios_job", tags={"modelsmith/trigger": "scenario change"})
    assert scenarios.tags["dagster/sensor_name"] == "scenario_change_sensor"
    repins = live.runs(job_name="pin_model_version_job", tags={"dagster/sensor_name": "champion_repin_sensor"})
    assert len(repins) == 1 and repins[0].status == dg.DagsterRunStatus.SUCCESS
    opened = json.loads((live.home / "cycles" / cycle / "cycle.json").read_text())
    assert opened["regressed"] == ["Video Gaming/app"]
    outcome = cycle_outcome(live.home, cycle)
    assert outcome["repaired"] == ["Video Gaming/app"] and outcome["flagged"] == []
    assert outcome["verdict"] == "ready for approval" and outcome["offer_for_promotion"]
    assert live.cli(str(BIN / "modelsmith"), "bundle", "verify", outcome["bundle_path"]).returncode == 0
    since = time.time()  # one more tick of the regression sensor: the same regression opens nothing twice
    live.wait("another regression sensor tick", lambda: _ticked(live, "pin_regression_sensor", since), timeout=120)
    assert len(live.runs(job_name="repair_cycle_job")) == 1


def _last_tick(live: Live, sensor: str):
    """The sensor's latest tick (None before its first)."""
    from dagster._core.scheduler.instigation import InstigatorType  # ticks have no public reader

    with live.instance() as instance:
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.name == sensor:
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
                return ticks[0] if ticks else None
    return None


def _ticked(live: Live, sensor: str, after: float = 0.0) -> bool:
    """Whether the sensor finished a tick that started after `after` (a Unix time)."""
    from dagster._core.scheduler.instigation import TickStatus

    tick = _last_tick(live, sensor)
    return tick is not None and tick.timestamp > after and tick.status != TickStatus.STARTED


ARTIFACTS = Path(os.environ.get("MODELSMITH_TEST_ARTIFACTS", REPO / "artifacts")) / "ui"
CHROMIUM = os.environ.get("MODELSMITH_CHROMIUM", "/usr/bin/chromium")
LOCATION = "modelsmith_assets.definitions"


@pytest.fixture
def page(live: Live):
    """Headless Debian chromium driven by playwright (no browser download); screenshots under artifacts/ui/."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if not Path(CHROMIUM).is_file():
        if os.environ.get("MODELSMITH_REQUIRE_SHARED"):
            pytest.fail(f"{CHROMIUM} not found: .ci/run installs Debian's chromium (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (or set MODELSMITH_CHROMIUM); CI installs it")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1000})
        finally:
            browser.close()


def _open(page, live: Live, path: str, shot: str | None = None, expect: str | None = None) -> str:
    page.goto(live.url + path)
    page.wait_for_load_state("networkidle")
    skip = page.get_by_role("button", name="Skip")  # the UI's one-time "join the community" dialog
    if skip.count():
        skip.first.click()
    if expect:
        page.get_by_text(expect, exact=False).first.wait_for(timeout=60_000)
    if shot:
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    return page.inner_text("body")


def _launch(page, live: Live, *, approver: str, bundle_digest: str, decision: str, shot: str) -> dg.DagsterRun:
    """Type a decision into the open Launchpad, launch it and wait for its run to end."""
    import re

    page.locator(".CodeMirror").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(f"ops:\n  promotion:\n    config:\n      approver: {approver}\n"
                              f"      bundle_digest: {bundle_digest}\n      decision: {decision}\n"
                              f"      note: reviewed in the browser\n      rollback_to: ''\n")
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]+"), timeout=60_000)
    run_id = page.url.rstrip("/").split("/runs/")[1].split("?")[0]
    with live.instance() as instance:
        (run,) = live.finished([instance.get_run_by_id(run_id)], timeout=300)
    return run


def _partitions(live: Live, name: str) -> list[str]:
    with live.instance() as instance:
        return instance.get_dynamic_partitions(name)


def _keep(page, name: str) -> str:
    """The page's text, kept beside its screenshot (what a failing assertion saw)."""
    body = page.inner_text("body")
    (ARTIFACTS / name).write_text(body)
    return body


def test_a_reviewer_decides_in_the_browser_and_only_an_approval_moves_the_champion(live: Live, page):
    """Asset graph, the pins' checks and the regressed pin's history, the pending bundle and its blocking
    `candidate_offered` check, the Launchpad, a refused approval, the approval's run, the champion: in Chromium.

    The cycle offered its candidate: a refused attempt moves nothing and is in the audit log; the reviewer's
    approval moves the champion. Screenshots (and the text each page showed) go to artifacts/ui/.
    """
    import re

    from modelsmith.gate import bundles, pending

    champion_before = read_champion(live.home).model_version
    ((digest, _),) = bundles(live.home)
    assert pending(live.home) == digest  # offered
    body = _open(page, live, "/asset-groups", "01-asset-graph.png", expect="repair")
    assert all(group in body for group in ("scenarios", "model", "repair", "gate"))
    # The checks show the results that evaluated the latest materialisation: the candidate's pin run, its
    # partition named. 60 checks in a virtualised list: the reviewer filters it, as the UI offers.
    (cycle,) = _partitions(live, "repair_cycles")
    candidate = short(json.loads((live.home / "cycles" / cycle / "benchmark_delta.json").read_text())["candidate"])
    body = _open(page, live, "/assets/pin_results?view=checks", expect="every_pin_holds")
    assert "Not Evaluated" not in body and re.search(rf"Passed[\s\S]*Partition\s+{candidate}", body), body[:3000]
    page.get_by_placeholder("Filter checks").fill("pin_video_gaming")
    page.get_by_text("pin_video_gaming_site").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "02-pin-checks.png"), full_page=True)
    # The regressed pin's history, newest first: the candidate's result (too few rows to vouch: a warning that
    # the UI also calls "Failed", so the description says which), then the champion's regression under v2.
    _open(page, live, "/assets/pin_results?view=checks&checkDetail=pin_video_gaming_app", expect="Execution history")
    page.get_by_text("Execution history").first.click()
    page.get_by_text("regressed by").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "03-regressed-pin-history.png"), full_page=True)
    body = _keep(page, "03-regressed-pin-history.txt")
    assert re.search(r"(inconclusive|ok)\b[\s\S]*failed: [^\n]*regressed by", body), body[:3000]
    body = _open(page, live, "/assets/evidence_bundle", "04-pending-bundle.png", expect="cycle_time_s")
    assert digest in body and "offered for promotion" in body
    # The report in the UI: the summary's markdown view shows what changed, the digest and the report's plots.
    summary = page.locator("tr").filter(has=page.get_by_text("summary", exact=True))
    summary.get_by_text("[Show Markdown]").first.click()
    page.get_by_text("Plot 3:").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "04b-report-summary.png"), full_page=True)
    body = _keep(page, "04b-report-summary.txt")
    assert "What changed:" in body and "Failing rows (examples)" in body and digest in body
    plots = page.eval_on_selector_all("img[alt^='plot']", "els => els.map(e => e.naturalWidth)")
    assert len(plots) == 3 and all(width > 100 for width in plots), plots  # rendered, not broken images
    page.get_by_role("button", name="Close").click()
    body = _open(page, live, "/assets/evidence_bundle?view=checks&checkDetail=candidate_offered",
                 "05-candidate-offered.png", expect="This is a blocking asset check")
    assert re.search(r"Latest execution\s+offered for promotion: repaired Video Gaming/app[\s\S]*Passed", body), body[:3000]
    assert digest in body
    # The Launchpad is pre-filled when the code location loads: reload it (the cycle ran after), as a user would.
    _open(page, live, "/asset-groups")
    page.get_by_role("button", name="Reload definitions").click()
    launchpad = f"/locations/{LOCATION}/jobs/promotion_job/playground"
    live.wait("the Launchpad pre-filled with the pending bundle",
              lambda: digest in _open(page, live, launchpad), timeout=120)
    # A refused approval (a bundle that does not exist) is a decision too: one readable failure, in the audit log.
    wrong = digest[:-4] + ("0000" if not digest.endswith("0000") else "1111")
    refused = _launch(page, live, approver="ana", bundle_digest=wrong, decision="approve", shot="06-refused-launch.png")
    assert refused.status == dg.DagsterRunStatus.FAILURE and read_champion(live.home).model_version == champion_before
    body = _open(page, live, f"/runs/{refused.run_id}", "07-refused-run.png", expect="refused")
    assert "refused: bundle_digest: no bundle in" in body and wrong in body, body[:3000]
    audit = [json.loads(line) for line in (live.home / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "refused" and audit[-1]["bundle"] == wrong and audit[-1]["dagster_run_id"] == refused.run_id
    _open(page, live, launchpad)
    decision = "approve"
    run = _launch(page, live, approver="ana", bundle_digest=digest, decision=decision, shot="08-launchpad.png")
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.job_name == "promotion_job"
    run_id = run.run_id
    _open(page, live, f"/runs/{run_id}", "09-promotion-run.png", expect="RUN_SUCCESS")
    champion = read_champion(live.home)
    body = _open(page, live, "/assets/promotion", "10-champion.png", expect="champion_after")
    assert decision in body and champion_before in body
    assert champion.model_version != champion_before and champion.by == "ana" and champion.model_version in body
    assert json.loads((live.home / "decisions" / f"{digest}.json").read_text())["decision"] == decision
    assert live.cli(str(BIN / "modelsmith"), "audit", "verify").returncode == 0


def test_backfill_repins_every_model_version(live: Live):
    """README: `dagster job backfill -w workspace.yaml -j pin_model_version_job --all --noprompt`."""
    with live.instance() as instance:
        versions = instance.get_dynamic_partitions("model_versions")
    assert len(versions) == 2  # the base and the cycle's adapter (the champion, if the reviewer approved it)
    before = {r.run_id for r in live.runs(job_name="repair_cycle_job")}
    out = live.cli(str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "pin_model_version_job",
                   "--all", "--noprompt")
    backfill_id = out.stdout.strip().split("`")[-2]
    runs = live.wait("the backfill's runs", lambda: live.runs(tags={"dagster/backfill": backfill_id}), timeout=60)
    runs = live.finished(runs, timeout=600)
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(versions)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    since = time.time()  # the champion's re-pin found the same regression, which has its cycle: nothing opens
    live.wait("a regression sensor tick after the backfill", lambda: _ticked(live, "pin_regression_sensor", since),
              timeout=120)
    assert {r.run_id for r in live.runs(job_name="repair_cycle_job")} == before


def test_backfill_reruns_a_range_of_cycles(live: Live):
    """README: `dagster job backfill -w workspace.yaml -j repair_cycle_job --from C1 --to C2 --noprompt`."""
    with live.instance() as instance:
        cycles = instance.get_dynamic_partitions("repair_cycles")
    first = {c: [(d, file_sha256(d / "bundle.dsse.json")) for d in cycle_bundle_dirs(live.home, c)] for c in cycles}
    out = live.cli(str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "repair_cycle_job",
                   "--from", cycles[0], "--to", cycles[-1], "--noprompt")
    backfill_id = out.stdout.strip().split("`")[-2]
    runs = live.wait("the backfill's runs", lambda: live.runs(tags={"dagster/backfill": backfill_id}), timeout=60)
    runs = live.finished(runs, timeout=900)
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(cycles)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    for cycle, before in first.items():
        after = cycle_bundle_dirs(live.home, cycle)
        assert [(d, file_sha256(d / "bundle.dsse.json")) for d in after[:len(before)]] == before  # never replaced
        assert after[-1].name == f"{cycle}.{len(before) + 1}"
        assert live.cli(str(BIN / "modelsmith"), "bundle", "verify", str(after[-1])).returncode == 0
