"""The code location: every stage's `defs`, merged once, with resources chosen per environment."""

import os

import dagster as dg

from modelsmith_assets import scenarios
from resources import resources_for

STAGES = (scenarios,)


def build_definitions(env: str = "embedded") -> dg.Definitions:
    return dg.Definitions.merge(*(s.defs for s in STAGES), dg.Definitions(resources=resources_for(env)))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(os.environ.get("MODELSMITH_ENV", "embedded"))
