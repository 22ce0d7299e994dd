"""The pins resource: the pin file (`modelsmith.pins`) the pin runs and the repair chain judge by."""

import dagster as dg
from pydantic import Field

from modelsmith.pins import PinSet, load_pins, pins_file


class PinSettings(dg.ConfigurableResource):
    """Which pin file the assets read. `build_definitions` declares `pin_results`' checks from this same
    resource, so the checks and the runs name one file; `resources_for` binds it with the path resolved."""

    path: str = Field("", description="The pin file (YAML: see modelsmith/pins.py); empty: MODELSMITH_PINS, else "
                                      "the shipped pins. Declared checks follow the code location's file: change it "
                                      "there (MODELSMITH_PINS) and reload, not here")

    def load(self) -> PinSet:
        return load_pins(pins_file(self.path))
