"""The code location: every stage's `defs`, merged once, with resources chosen per environment."""

import os

import dagster as dg

from modelsmith_assets import automation, gate, model, repair, scenarios
from modelsmith_assets.executors import executor_for
from resources import resources_for


def build_definitions(env: str = "embedded", pins_path: str | None = None,
                      resources: dict[str, dg.ConfigurableResource] | None = None) -> dg.Definitions:
    """`pins_path` (default `MODELSMITH_PINS`, else the shipped pins) names the pin file: the `pins` resource the
    assets read, whose pins become `pin_results`' checks; `resources` replace the environment's by key (`modelsmith
    loop --epochs` sets the trainer's; a `pins` there is the file of both)."""
    bound, executor = {**resources_for(env, pins_path=pins_path), **(resources or {})}, executor_for()
    pins = bound["pins"].load()  # the checks are declared from the resource the assets read: one pin file
    stages = [scenarios.defs, model.model_defs(pins), repair.defs, gate.gate_defs(bound, executor)]
    jobs = {j.name: j for stage in stages for j in (stage.jobs or [])}
    return dg.Definitions.merge(
        *stages,
        automation.automation_defs(jobs),
        dg.Definitions(resources=bound, executor=executor),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(os.environ.get("MODELSMITH_ENV", "embedded"))
