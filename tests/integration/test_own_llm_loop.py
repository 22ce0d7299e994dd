"""A team's own LLM through the whole loop, as the README tells them to run it.

A Llama-style directory (SentencePiece-style BPE tokenizer, every decision 8-11 tokens, readable
text prompts) is built here and pre-trained for a short while on a policy v1 pack, then named by
`MODELSMITH_BASE_MODEL` with the team's own pins (`MODELSMITH_PINS`: coarse segments, floors and a
latency budget for their model on this CPU). `modelsmith loop --policy v1.yaml` pins it; a policy
change (the below-the-fold rule dropped) regresses it; the same command runs the repair chain:
traces, a diagnosis, synthetic data, a LoRA adapter on that base, candidate pins and a signed
bundle, which verifies. The repair uses 3 SFT epochs (`--epochs 3`) and a 4,000-request scenario
pack (`--pack-size 4000`) to keep CI short; with the default 10 epochs the same cycle took 6.6 min of
training on the 2-core CI machine.
"""

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from modelsmith_cli.cli import main
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy
from tests.support.llm_dirs import build_llm_dir

pytestmark = pytest.mark.slow  # minutes each: `pytest -m 'not slow'` for a quick run

REPO = Path(__file__).resolve().parents[2]
PACK = 4_000  # requests in the scenario pack every pin run decides
PINS = """version: 1
defaults:
  accuracy_floor: 0.85
  latency_p99_ms: 100.0
  max_drop: 0.03
regression:
  test: mcnemar
  alpha: 0.05
pins:
- name: all
  where: {}
- name: site
  where: {inventory_type: site}
- name: app
  where: {inventory_type: app}
"""


def _loop(*args: str) -> dict:
    result = CliRunner().invoke(main, ["loop", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def own_loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-llm")
    pack = label_requests(generate_requests(2000, seed=31), shipped_policy(1))
    model = build_llm_dir("llama", root / "my-llama", pack, rounds=6)
    (root / "pins.yaml").write_text(PINS)
    (root / "replay").mkdir()
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSMITH_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        mp.setenv("MODELSMITH_BASE_MODEL", str(model))
        mp.setenv("MODELSMITH_PINS", str(root / "pins.yaml"))
        replay = ["--replay-dir", str(root / "replay"), "--pack-size", str(PACK)]
        v1 = _loop("--policy", str(REPO / "scenario_data" / "policies" / "v1.yaml"), *replay)
        drift = _loop("--policy", str(REPO / "scenario_data" / "drifts" / "btf_rule_dropped.yaml"), "--epochs", "3",
                      *replay)
    return home, model, v1, drift


def test_the_own_model_is_the_champion_and_holds_its_pins_on_v1(own_loop):
    from modelsmith.model_dir import directory_digest

    _, model, v1, _ = own_loop
    assert v1["champion"] == directory_digest(model)
    assert v1["regressed"] == [] and v1["failed"] == [], v1


def test_a_policy_change_regresses_it_and_the_repair_chain_runs_on_it(own_loop):
    home, model, _, drift = own_loop
    assert "all" in drift["regressed"], drift
    cycle = home / "cycles" / drift["cycle"]
    diagnosis = json.loads((cycle / "diagnosis.json").read_text())
    assert any(f["feature"] == "position" and "btf" in f["values"] for f in diagnosis["features"]), diagnosis
    adapter = json.loads((cycle / "adapter.json").read_text())
    config = json.loads((Path(adapter["path"]) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == f"sha256:{adapter['base_digest']}"
    assert "## Pins before and after" in (Path(adapter["path"]) / "README.md").read_text()
    delta = json.loads((cycle / "benchmark_delta.json").read_text())
    by_pin = {p["pin"]: p for p in delta["pins"]}
    assert by_pin["all"]["after"] > by_pin["all"]["before"] + 0.05, by_pin["all"]
    assert set(delta["repaired"]) == {"all", "site", "app"} and drift["verdict"] == "ready for approval", delta


def test_the_bundle_verifies(own_loop):
    _, _, _, drift = own_loop
    result = CliRunner().invoke(main, ["bundle", "verify", drift["bundle_path"]])
    assert result.exit_code == 0, result.output


def test_rows_decided_by_the_own_model_were_scored_from_text_prompts(own_loop):
    home, _, _, drift = own_loop
    preds = pl.read_parquet(next((home / "pins").rglob("predictions.parquet")))
    assert preds.height == drift["decisions"] > PACK and set(preds["predicted"].unique()) <= {
        "bid:shade_high", "bid:shade_mid", "bid:shade_low", "no_bid:unsafe", "no_bid:mfa"}
