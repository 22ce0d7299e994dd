"""The default story through the user's own command: `modelsmith loop`.

On policy v1 the default base model passes every pin; switch the active policy to v2 and the
champion's re-pin regresses the Gaming pin (significantly, by the paired test) and no other. A
repair cycle opens: the critic names Gaming and the layout signals, a targeted dataset with a
replay buffer is synthesised and signed, a LoRA adapter is trained, and the candidate recovers
Gaming without a significant drop anywhere else. This is the slowest test in the suite.
"""

import json

import dagster as dg
import polars as pl
import pytest
from click.testing import CliRunner

from modelsmith.cli import main
from modelsmith.model_dir import Registry, read_champion, short
from modelsmith.pin_runs import history
from scenario_data.policy import POLICIES_DIR, shipped_policy


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return home


def _loop(*args: str) -> dict:
    result = CliRunner().invoke(main, ["loop", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_v1_passes_every_pin_and_v2_regresses_gaming_only(home, realdata):
    v1 = _loop("--replay-dir", str(realdata / "openrtb"))
    assert v1["requests_in"] == 10_000 + 266 == v1["accepted"] + v1["quarantined"]
    assert v1["policy_digest"] == shipped_policy(1).digest
    assert (v1["regressed"], v1["failed"]) == ([], [])
    champion = read_champion(home)
    assert champion.by == "bootstrap" and champion.model_version == v1["champion"]
    base = Registry(home).get(short(champion.model_version))
    assert base.kind == "base" and (home / "models" / "base").is_dir()

    v2 = _loop("--replay-dir", str(realdata / "openrtb"), "--policy", str(POLICIES_DIR / "v2.yaml"))
    assert v2["policy_digest"] == shipped_policy(2).digest
    assert v2["champion"] == v1["champion"]  # pins never move the champion
    assert v2["regressed"] == ["Video Gaming/app"]
    assert v2["failed"] == []  # every other pin still passes
    _repair_checks(home, v2)

    report = json.loads((home / "reports" / short(champion.model_version) / "regression_report.json").read_text())
    (gaming,) = report["regressed"]
    assert gaming["p_value"] < 0.01 and gaming["drop"] > 0.02 and gaming["test"] == "mcnemar"
    assert gaming["failing_rows"] == len(gaming["failing_row_ids"]) > 0
    assert "last passing pin run" in report["reference"]

    # What the UI shows: one check per pin on the partition; the Gaming check failed, the rest passed.
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions("model_versions") == [short(champion.model_version),
                                                                 short(v2["cycle"]["candidate"])]  # + the repair's adapter
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("pin_results"), name) for name in ("pin_all", "pin_video_gaming_app")])
    status = {k.name: r.status.value for k, r in records.items()}
    assert status == {"pin_all": "SUCCEEDED", "pin_video_gaming_app": "FAILED"}

    runs = history(home)  # DuckDB over the stored Parquet: the champion's two runs, the candidate's one
    gaming = runs.filter(runs["pin"] == "Video Gaming/app")
    assert gaming.filter(gaming["model_version"] == champion.model_version)["passed"].to_list() == [True, False]


def _repair_checks(home, v2: dict) -> None:
    cycle = v2["cycle"]
    assert cycle["success"], cycle
    assert cycle["repaired"] == ["Video Gaming/app"] and cycle["flagged"] == [] and cycle["offer_for_promotion"]
    cdir = home / "cycles" / cycle["id"]
    diagnosis = json.loads((cdir / "diagnosis.json").read_text())
    assert diagnosis["segments"] == ["Video Gaming/app"] and diagnosis["provenance"]["critic"] == "statistical"
    assert {f["feature"] for f in diagnosis["features"]} >= {"rewarded", "position"}  # the layout signals

    delta = json.loads((cdir / "benchmark_delta.json").read_text())
    gaming = next(p for p in delta["pins"] if p["pin"] == "Video Gaming/app")
    assert gaming["before"] < 0.95 <= gaming["after"]
    assert all(p["status"] == "ok" for p in delta["pins"] if not p["target"])

    # The candidate is a registered adapter version that peft loads on the base.
    from peft import PeftConfig

    candidate = Registry(home).get(short(cycle["candidate"]))
    assert candidate.kind == "adapter" and candidate.base == v2["champion"]
    assert PeftConfig.from_pretrained(candidate.path).peft_type == "LORA"
    assert read_champion(home).model_version == v2["champion"]  # only the gate promotes

    # Every training row proves its membership in the signed dataset, and none is a pin scenario.
    from modelsmith.lineage import prove

    rows = pl.read_parquet(home / "datasets" / cycle["id"] / "rows.parquet")
    assert set(rows["source"]) == {"target", "replay", "contrast"}
    assert prove(home, rows["row_id"][0])["verified"]
    pins = pl.read_parquet(home / "replayed_auctions" / "replayed_auctions.parquet")
    assert not set(rows["request_id"]) & set(pins["request_id"])
