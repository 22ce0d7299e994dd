"""The code location: every stage's `defs`, merged once, with resources chosen per environment."""

import os

import dagster as dg

from modelsmith.pins import load_pins
from modelsmith_assets import automation, gate, model, repair, scenarios
from modelsmith_assets.executors import executor_for
from resources import resources_for


def build_definitions(env: str = "embedded", pins_path: str | None = None,
                      resources: dict[str, dg.ConfigurableResource] | None = None) -> dg.Definitions:
    """`pins_path` (default `MODELSMITH_PINS`, else the shipped pins) names the pin file whose pins become checks;
    `resources` replace the environment's by key (`modelsmith loop --epochs` sets the trainer's)."""
    pins = load_pins(pins_path or os.environ.get("MODELSMITH_PINS") or None)
    bound, executor = {**resources_for(env), **(resources or {})}, executor_for()
    stages = [scenarios.defs, model.build_model_defs(pins, deps=[scenarios.replayed_auctions]),
              repair.build_repair_defs(pins), gate.gate_defs(bound, executor)]
    jobs = {j.name: j for stage in stages for j in (stage.jobs or [])}
    return dg.Definitions.merge(
        *stages,
        automation.automation_defs(jobs),
        dg.Definitions(resources=bound, executor=executor),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(os.environ.get("MODELSMITH_ENV", "embedded"))
