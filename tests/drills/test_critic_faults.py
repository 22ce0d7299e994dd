"""Critic API faults the unit tests do not cover, and a whole repair cycle on the fallback critic.

tests/unit/critic/test_claude_critic.py covers 429 then success, 500 and 429 exhausted, a timeout,
invalid tool input and a text-only answer. Here: nothing listening (connection refused), connections
dropped by the server, a 429 whose retry-after is honoured before the answer is used, a retry-after
far beyond what the critic will wait, and, through Dagster, a repair cycle that completes on the
statistical critic while the Claude critic's endpoint refuses connections, with the fallback
recorded in the diagnosis metadata, the diagnosis file and the signed bundle (never a silent one).
All over real HTTP through the real `anthropic` SDK.
"""

import json
import socket
import threading
import time

import pytest

from modelsmith.engines.claude_critic import ClaudeCritic
from tests.support.fake_anthropic import FakeAnthropic, Reply, tool_use
from tests.unit.critic.test_claude_critic import KEY, MODEL, VALID, TableCritic, critic_input

pytestmark = pytest.mark.slow  # minutes each: `pytest -m 'not slow'` for a quick run


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _claude(base_url: str, fallback: TableCritic, max_retries: int = 2, **kwargs) -> ClaudeCritic:
    return ClaudeCritic(MODEL, KEY, base_url, max_retries, 5.0, fallback=fallback, **kwargs)


def test_connection_refused_falls_back_after_the_sdk_retries():
    fallback = TableCritic()
    started = time.monotonic()
    d = _claude(f"http://127.0.0.1:{_closed_port()}", fallback).diagnose(critic_input())
    elapsed = time.monotonic() - started
    assert fallback.calls == 1 and d.provenance.critic == "table"
    assert d.provenance.fallback == "claude: connection error after 2 retries"
    assert 0.6 < elapsed < 15  # two backoffs (0.5 s, 1 s, less jitter), then the fallback: no hang


def test_connections_dropped_by_the_server_are_retried_then_fall_back():
    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def drop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(time.monotonic())
            conn.close()  # before any response byte

    threading.Thread(target=drop, daemon=True).start()
    try:
        fallback = TableCritic()
        d = _claude(f"http://127.0.0.1:{server.getsockname()[1]}", fallback).diagnose(critic_input())
    finally:
        server.close()
    assert len(accepted) == 3  # the first try and two retries, each a new connection
    assert fallback.calls == 1 and d.provenance.fallback == "claude: connection error after 2 retries"


def test_retry_after_is_honoured_then_the_answer_is_used():
    with FakeAnthropic() as server:
        server.script(Reply(status=429, error_type="rate_limit_error", headers={"retry-after": "2"}), tool_use(VALID))
        fallback = TableCritic()
        started = time.monotonic()
        d = _claude(server.base_url, fallback).diagnose(critic_input())
        elapsed = time.monotonic() - started
        assert len(server.requests) == 2
    # The SDK's own first backoff is at most 0.5 s: two seconds is the server's retry-after, obeyed.
    assert 2.0 <= elapsed < 10
    assert fallback.calls == 0 and d.provenance.critic == "claude" and d.provenance.fallback == ""
    assert d.segments == tuple(VALID["segments"]) and d.extra["attempts"] == 1


def test_a_retry_after_of_an_hour_is_not_obeyed():
    """anthropic 2.x sleeps whatever retry-after says (up to ~50 days); the critic caps each wait."""
    with FakeAnthropic() as server:
        hour = Reply(status=429, error_type="rate_limit_error", headers={"retry-after": "3600"})
        server.script(hour, tool_use(VALID))
        started = time.monotonic()
        d = _claude(server.base_url, TableCritic(), max_retry_wait_s=0.5).diagnose(critic_input())
        assert time.monotonic() - started < 10 and len(server.requests) == 2
        assert d.provenance.critic == "claude" and d.provenance.fallback == ""

        server.script(hour, hour)  # still limited after the capped wait: the fallback answers, promptly
        started = time.monotonic()
        fallback = TableCritic()
        d = _claude(server.base_url, fallback, max_retries=1, max_retry_wait_s=0.5).diagnose(critic_input())
        assert time.monotonic() - started < 10
        assert fallback.calls == 1 and d.provenance.fallback == "claude: 429 rate_limit_error after 1 retries"


# --- a whole cycle through Dagster, the Claude critic's endpoint refusing connections ---

@pytest.fixture(scope="module")
def cycle_on_fallback(tmp_path_factory):
    """The embedded definitions on a tiny model and a 400-request v2 pack: scenarios, base, pins, then
    a cycle opened for Gaming/app and `repair_cycle_job` with the Claude critic pointed at a closed port."""
    import dagster as dg

    from modelsmith.base_model import TinyLlamaConfig, build_model
    from modelsmith.cycles import CYCLES, open_cycle
    from modelsmith_cli.headless import refused_by_its_gate_check
    from modelsmith.champion import read_champion
    from modelsmith.model_dir import short
    from modelsmith.prompt import prompts, train_tokenizer
    from modelsmith_assets.definitions import build_definitions
    from resources import (
        CriticSettings,
        InferenceSettings,
        LocalStorage,
        ModelSettings,
        ScenarioSettings,
        SignerSettings,
        TrainerSettings,
    )
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import POLICIES_DIR, shipped_policy

    root = tmp_path_factory.mktemp("fallback_cycle")
    home, model_dir, replay = root / "home", root / "tiny", root / "replay"
    replay.mkdir()
    tok = train_tokenizer(prompts(label_requests(generate_requests(40, seed=3), shipped_policy(1))))
    build_model(tok, TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1), seed=0) \
        .save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    resources = {
        "storage": LocalStorage(root=str(home)),
        "scenarios": ScenarioSettings(replay_dir=str(replay), pack_size=400, policy_path=str(POLICIES_DIR / "v2.yaml")),
        "model": ModelSettings(base_model_dir=str(model_dir)), "inference": InferenceSettings(batch_size=64),
        "critic": CriticSettings(critic="claude", api_key=KEY, base_url=f"http://127.0.0.1:{_closed_port()}",
                                 max_retries=1, timeout_s=5),
        "trainer": TrainerSettings(epochs=1, batch_size=64), "signer": SignerSettings(key_dir=str(home / "keys")),
    }
    defs, instance = build_definitions("embedded"), dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSMITH_HOME", str(home))

        def run(job: str, **kwargs):
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, resources=resources,
                                                                  raise_on_error=False, **kwargs)
            assert result.success or (job == "repair_cycle_job" and refused_by_its_gate_check(result)), job
            return result

        run("materialize_scenarios_job")
        run("build_base_model_job")
        key = short(read_champion(home).model_version)
        run("pin_model_version_job", partition_key=key)
        # The champion's real pin run, reported as a Gaming/app regression (a tiny untrained model has
        # no passing reference to regress from, so the regression itself is stated).
        report = json.loads((home / "reports" / key / "regression_report.json").read_text())
        report["regressed"] = [{"pin": "Video Gaming/app", "drop": 0.2, "p_value": 1e-6, "failing_row_ids": []}]
        cycle = open_cycle(home, report)
        instance.add_dynamic_partitions(CYCLES, [cycle])
        started = time.monotonic()
        result = run("repair_cycle_job", partition_key=cycle)
        yield home, cycle, instance, result, time.monotonic() - started


def test_a_cycle_completes_on_the_fallback_critic_and_says_so_everywhere(cycle_on_fallback):
    import dagster as dg
    import polars as pl

    from modelsmith.bundle_verify import verify_bundle
    from modelsmith.critics import CriticInput
    from modelsmith.cycles import read_cycle
    from modelsmith_cli.headless import refused_by_its_gate_check
    from modelsmith.pins import load_pins
    from modelsmith.statistical_critic import StatisticalCritic

    home, cycle, instance, result, seconds = cycle_on_fallback
    reason = "claude: connection error after 1 retries"
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert steps == {"failure_traces", "diagnosis", "synthetic_dataset", "adapter", "candidate_pins", "benchmark_delta"}
    # A one-epoch adapter on a tiny model repairs nothing: the bundle is written and signed, and its
    # blocking check `candidate_offered` fails the run with the verdict and the pin that blocked it.
    assert not result.success and refused_by_its_gate_check(result)
    (check,) = [e.asset_check_evaluation_data for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"
                and e.asset_check_evaluation_data.check_name == "candidate_offered"]
    verdict = check.metadata["verdict"].value
    assert not check.passed and verdict.startswith("not offered: not repaired: Video Gaming/app (")
    assert "Video Gaming/app" in [r.data["pin"] for r in check.metadata["pins"].records]
    assert check.metadata["blocking_pins"].value >= 1

    # The diagnosis asset's metadata, its file and the run log all name the fallback and why.
    meta = result.asset_materializations_for_node("diagnosis")[0].metadata
    assert meta["critic"].value == "statistical" and meta["fallback"].value == reason
    stored = json.loads((home / "cycles" / cycle / "diagnosis.json").read_text())
    assert stored["provenance"]["critic"] == "statistical" and stored["provenance"]["fallback"] == reason
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == 30]  # logging.WARNING
    assert any(f"critic fallback: {reason}" in m for m in warnings)

    # Not a silently different diagnosis: exactly the statistical critic's, on the same traces.
    record, pins = read_cycle(home, cycle), {p.name: p for p in load_pins().pins}
    traces = pl.read_parquet(home / "cycles" / cycle / "failure_traces.parquet")
    inp = CriticInput(cycle=cycle, model_version=record.model_version, policy_digest=record.policy_digest,
                      regressed=record.report, traces=traces,
                      pin_filters={n: {c.feature: {c.op: c.value} for c in pins[n].where} for n in record.regressed})
    alone = json.loads(json.dumps(StatisticalCritic().diagnose(inp).as_dict()))  # tuples as lists, as stored
    assert {k: v for k, v in stored.items() if k not in ("provenance", "digest")} == \
        {k: v for k, v in alone.items() if k != "provenance"}

    # What the chain built on is that diagnosis, and the signed bundle a reviewer reads says so.
    lineage = json.loads((home / "datasets" / cycle / "lineage.json").read_text())
    assert lineage["diagnosis_digest"] == stored["digest"] == meta["sha256"].value
    bundle = home / "bundles" / cycle
    report = verify_bundle(bundle.with_name(cycle + ".tar"), (home / "keys" / "ed25519.pub").read_text())
    assert report.ok, report.errors
    predicate = report.statements["attestations/diagnosis.dsse.json"]["predicate"]
    assert predicate["provenance"]["fallback"] == reason
    assert f"fallback: {reason}" in (bundle / "diagnosis.md").read_text()
    assert "Diagnosis (statistical)" in (bundle / "report.html").read_text()
    evidence = instance.fetch_materializations(dg.AssetKey("evidence_bundle"), limit=1).records[0]
    assert evidence.asset_materialization.metadata["sha256"].value == report.digest
    print(f"\n[drill] critic fallback cycle: repair_cycle_job {seconds:.0f}s")


def test_the_cycles_adapter_and_its_bundle_copy_verify_with_the_model_signing_cli(cycle_on_fallback):
    """The adapter asset signs in the OpenSSF model-signing format; the card benchmark_delta rewrote after
    signing does not break it, and the bundle's copy verifies with the key the bundle carries."""
    import subprocess
    import sys
    from pathlib import Path

    home, cycle, _, _, _ = cycle_on_fallback
    adapter = json.loads((home / "cycles" / cycle / "adapter.json").read_text())
    bundle = next((home / "bundles").glob(f"{cycle}*/"))
    cli = Path(sys.executable).with_name("model_signing")
    checks = [(Path(adapter["path"]), home / "keys" / "model-signing-p256.pub"),
              (bundle / "adapter", bundle / "model_signing_p256.pub")]
    for model, key in checks:
        done = subprocess.run([str(cli), "verify", "key", "--signature", str(model / "model.sig"), "--public_key",
                               str(key), str(model)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stdout + done.stderr
    assert adapter["model_signature"]["key_id"] == json.loads((bundle / "integrity.json").read_text())[
        "model_signature"]["key_id"]
