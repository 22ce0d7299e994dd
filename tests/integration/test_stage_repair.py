"""The repair chain's diagnosis link in Dagster: the critic resource chosen by configuration.

A cycle is prepared by hand (its record and its traces: v2 labels, v1 decisions, as the default
champion fails), then `diagnosis` is materialised with the statistical critic and with the Claude
critic over real HTTP against the local Messages API stand-in.
"""

import json
import logging

import dagster as dg
import polars as pl
import pytest

from modelsmith.cycles import CYCLES, open_cycle
from modelsmith.prompt import PROMPT_COLUMNS
from modelsmith_assets.repair import diagnosis
from resources import CriticSettings, LocalStorage, PinSettings
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import DECISIONS, shipped_policy
from tests.support.fake_anthropic import FakeAnthropic, api_key, server_error, tool_use

PIN = "Video Gaming/app"
KEY = "sk-ant-dagster-SECRET-42"


@pytest.fixture
def cycle(tmp_path):
    home = tmp_path / "home"
    requests = generate_requests(4000, seed=31)
    v1, v2 = label_requests(requests, shipped_policy(1)), label_requests(requests, shipped_policy(2))
    traces = v2.with_columns(v1["expected"].alias("predicted")).filter(
        (pl.col("vertical") == "Video Gaming") & (pl.col("inventory_type") == "app")).with_columns(
        pl.lit(PIN).alias("pin"), (pl.col("predicted") != pl.col("expected")).alias("failed"), pl.lit(0.9).alias("confidence"),
        *(pl.lit(0.2).alias(f"p_{d}") for d in DECISIONS), *(pl.lit(0.0).alias(f"attr_{c}") for c in PROMPT_COLUMNS))
    report = {"model_version": "a" * 64, "policy_digest": shipped_policy(2).digest, "scenarios_digest": "s" * 64,
              "run_dir": str(tmp_path / "run"), "regressed": [{"pin": PIN, "rows": traces.height, "drop": 0.19,
                                                               "p_value": 1e-20, "failing_row_ids": []}]}
    key = open_cycle(home, report)
    traces.write_parquet(home / "cycles" / key / "failure_traces.parquet")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(CYCLES, [key])
    return home, key, instance


def _diagnose(home, key, instance, critic: CriticSettings):
    resources = {"storage": LocalStorage(root=str(home)), "critic": critic, "pins": PinSettings()}
    result = dg.materialize([diagnosis], partition_key=key, instance=instance, resources=resources)
    return result.asset_materializations_for_node("diagnosis")[0].metadata, json.loads(
        (home / "cycles" / key / "diagnosis.json").read_text())


def test_the_statistical_critic_is_the_embedded_default(cycle):
    meta, stored = _diagnose(*cycle, CriticSettings())
    assert meta["critic"].value == "statistical" and meta["fallback"].value == "none"
    assert {f["feature"] for f in stored["features"]} >= {"rewarded", "position"}
    assert stored["digest"] == meta["sha256"].value and "rewarded" in [r.data["feature"] for r in meta["features"].records]


def test_the_claude_critic_answers_through_the_sdk_and_falls_back_when_it_cannot(cycle, caplog):
    home, key, instance = cycle
    answer = {"segments": [PIN], "hypothesis": "Rewarded above-the-fold slots in gaming apps changed decision.",
              "features": [{"feature": "rewarded", "values": ["1"], "error_lift": 2.4},
                           {"feature": "position", "values": ["atf"], "error_lift": 2.0}],
              "confidence": 0.85, "recipe": {"stages": ["sft"]},
              "synthesis": {"filters": {"vertical": {"eq": "Video Gaming"}, "inventory_type": {"eq": "app"}},
                            "rows": 1500, "replay_ratio": 1.5, "contrast_share": 0.15}}
    caplog.set_level(logging.DEBUG)
    with FakeAnthropic() as server:
        server.script(tool_use(answer))
        settings = CriticSettings(critic="claude", model="claude-sonnet-4-6", api_key=KEY, base_url=server.base_url,
                                  max_retries=1, timeout_s=5)
        meta, stored = _diagnose(home, key, instance, settings)
        assert api_key(server.requests[0].headers) == KEY
        assert meta["critic"].value == "claude" and meta["critic_model"].value == "claude-sonnet-4-6"
        assert stored["synthesis"]["rows"] == 1500 and stored["provenance"]["fallback"] == ""

        server.script(server_error(), server_error())
        meta, stored = _diagnose(home, key, instance, settings)
        assert meta["critic"].value == "statistical" and "500" in stored["provenance"]["fallback"]
    everything = json.dumps(stored) + caplog.text + (home / "cycles" / key / "diagnosis.json").read_text()
    assert KEY not in everything
