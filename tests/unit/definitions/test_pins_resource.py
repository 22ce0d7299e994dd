"""One pin file: the `pins` resource the assets read is the file `pin_results`' checks are declared from."""

import dagster as dg

from modelsmith.pins import DEFAULT_PINS
from modelsmith_assets.definitions import build_definitions
from modelsmith_assets.model import pin_results_with_checks
from resources import InferenceSettings, LocalStorage, PinSettings

TWO_PINS = "pins:\n  - {name: all}\n  - {name: games, where: {vertical: Video Gaming}}\n"
THEIR_CHECKS = {"every_pin_holds", "pin_all", "pin_games"}


def _pin_checks(defs: dg.Definitions) -> set[str]:
    return {k.name for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == dg.AssetKey("pin_results")}


def test_the_pin_file_is_resolved_once_for_the_checks_and_the_resource(tmp_path, monkeypatch):
    path = tmp_path / "pins.yaml"
    path.write_text(TWO_PINS)
    monkeypatch.delenv("MODELSMITH_PINS", raising=False)
    defs = build_definitions(pins_path=str(path))
    assert _pin_checks(defs) == THEIR_CHECKS and defs.resources["pins"].path == str(path)
    monkeypatch.setenv("MODELSMITH_PINS", str(path))  # read when the definitions load, not when a run does
    defs = build_definitions()
    assert _pin_checks(defs) == THEIR_CHECKS and defs.resources["pins"].path == str(path)
    monkeypatch.delenv("MODELSMITH_PINS")
    assert build_definitions().resources["pins"].path == str(DEFAULT_PINS)


def test_a_pins_resource_passed_in_is_the_file_of_the_checks_too(tmp_path, monkeypatch):
    path = tmp_path / "pins.yaml"
    path.write_text(TWO_PINS)
    monkeypatch.delenv("MODELSMITH_PINS", raising=False)
    assert _pin_checks(build_definitions(resources={"pins": PinSettings(path=str(path))})) == THEIR_CHECKS


def test_pin_results_refuses_a_pin_file_other_than_the_one_its_checks_came_from(tmp_path, monkeypatch):
    """A Launchpad override of `pins.path` would judge by one file and report the checks of another."""
    monkeypatch.delenv("MODELSMITH_PINS", raising=False)
    path = tmp_path / "pins.yaml"
    path.write_text(TWO_PINS)
    key = "0" * 16
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model_versions", [key])
    resources = {"pins": PinSettings(path=str(path)), "storage": LocalStorage(root=str(tmp_path / "home")),
                 "inference": InferenceSettings()}
    result = dg.materialize([pin_results_with_checks(PinSettings().load())], partition_key=key, instance=instance,
                            resources=resources, raise_on_error=False)
    (failure,) = result.get_step_failure_events()
    assert "is not the one this code location declared" in failure.step_failure_data.user_failure_data.description
