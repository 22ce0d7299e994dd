"""The model stage's assets on a user's model directory: base model, pins per version, adapters."""

import json

import dagster as dg
import pytest

from modelsmith.model_dir import Registry, short
from modelsmith.champion import read_champion
from modelsmith_assets.model import model_defs
from modelsmith_assets.scenarios import policy, replayed_auctions, scenario_pack
from resources import InferenceSettings, LocalStorage, ModelSettings, PinSettings, ScenarioSettings, SignerSettings
from tests.unit.model.test_inference import adapter_dir, model_dir, rows  # noqa: F401  (fixtures)

PINS = ("defaults: {accuracy_floor: 0.0, latency_p99_ms: 100000}\n"
        "pins:\n  - {name: all}\n  - {name: games, where: {vertical: Video Gaming}}\n"
        "  - {name: impossible, where: {vertical: Video Gaming}, accuracy_floor: 1.0}\n")


def test_a_user_directory_is_the_base_model_and_an_adapter_is_pinned_on_it(model_dir, adapter_dir, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    (tmp_path / "pins.yaml").write_text(PINS)
    pins = PinSettings(path=str(tmp_path / "pins.yaml"))
    stage = model_defs(pins.load())  # the checks and the runs read one file, as in the code location
    assets = [policy, scenario_pack, replayed_auctions, *stage.assets]
    resources = {"storage": LocalStorage(root=str(home)), "scenarios": ScenarioSettings(pack_size=300),
                 "model": ModelSettings(base_model_dir=str(model_dir)), "inference": InferenceSettings(batch_size=32),
                 "signer": SignerSettings(key_dir=str(home / "keys")), "pins": pins}
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(assets, selection=["policy", "scenario_pack", "replayed_auctions", "base_model"],
                           resources=resources, instance=instance)
    (meta,) = [m.metadata for m in first.asset_materializations_for_node("base_model")
               if m.asset_key == dg.AssetKey("base_model")]  # the node also records `champion` at bootstrap
    assert meta["source"].value == "base_model_dir" and meta["path"].value == str(model_dir)
    assert not (model_dir / "model.sig").exists()  # a user's directory is not written to, so not signed
    assert meta["model_signature"].value == "none: a user's directory is not written to"
    base = Registry(home).get(meta["partition_key"].value)
    assert read_champion(home).model_version == base.digest  # bootstrap: the base model is the champion
    assert instance.get_dynamic_partitions("model_versions") == [base.key]

    pinned = dg.materialize(assets, selection=["pin_results", "regression_report"], partition_key=base.key,
                            resources=resources, instance=instance)
    checks = {e.check_name: (e.passed, e.severity.value) for e in pinned.get_asset_check_evaluations()}
    # an untrained model is not perfect (an error); the ~30 Gaming rows of 300 requests cannot vouch (a warning)
    assert checks == {"every_pin_holds": (False, "ERROR"), "pin_all": (True, "ERROR"), "pin_games": (False, "WARN"),
                      "pin_impossible": (False, "ERROR")}
    pin_meta = pinned.asset_materializations_for_node("pin_results")[0].metadata
    assert "games" in [r.data["pin"] for r in pin_meta["pins"].records] and 0.0 < pin_meta["composite"].value <= 1.0
    report = json.loads((home / "reports" / base.key / "regression_report.json").read_text())
    assert report["regressed"] == [] and [f["pin"] for f in report["failed"]] == ["impossible"]

    # An adapter is one more version: attached to the loaded base, pinned against the champion's decisions.
    adapter = Registry(home).register(adapter_dir, "adapter", base=base.digest)
    instance.add_dynamic_partitions("model_versions", [adapter.key])
    candidate = dg.materialize(assets, selection=["pin_results"], partition_key=adapter.key,
                               resources=resources, instance=instance)
    cmeta = candidate.asset_materializations_for_node("pin_results")[0].metadata
    assert cmeta["kind"].value == "adapter" and cmeta["reference"].value.startswith(f"champion {short(base.digest)}")
    assert cmeta["model_version"].value == adapter.digest
    assert read_champion(home).model_version == base.digest  # pinning never moves the champion


def test_a_directory_without_config_json_is_refused(tmp_path):
    from modelsmith.model_dir import ModelDirError

    with pytest.raises(ModelDirError, match=r"config.json not found: not a Hugging Face model directory"):
        ModelSettings(base_model_dir=str(tmp_path)).user_model()
