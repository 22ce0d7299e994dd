"""The default story, first half, through the user's own command: `modelsmith loop`.

On policy v1 the default base model passes every pin; switch the active policy to v2 and the
champion's re-pin regresses the Gaming pin (significantly, by the paired test) and no other.
"""

import json

import dagster as dg
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

    report = json.loads((home / "reports" / short(champion.model_version) / "regression_report.json").read_text())
    (gaming,) = report["regressed"]
    assert gaming["p_value"] < 0.01 and gaming["drop"] > 0.02 and gaming["test"] == "mcnemar"
    assert gaming["failing_rows"] == len(gaming["failing_row_ids"]) > 0
    assert "last passing pin run" in report["reference"]

    # What the UI shows: one check per pin on the partition; the Gaming check failed, the rest passed.
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions("model_versions") == [short(champion.model_version)]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("pin_results"), name) for name in ("pin_all", "pin_video_gaming_app")])
    status = {k.name: r.status.value for k, r in records.items()}
    assert status == {"pin_all": "SUCCEEDED", "pin_video_gaming_app": "FAILED"}

    runs = history(home)  # DuckDB over the stored Parquet: two runs of every pin
    assert runs.filter(runs["pin"] == "Video Gaming/app")["passed"].to_list() == [True, False]
