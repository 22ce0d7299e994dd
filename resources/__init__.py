"""The swappable engines, chosen per environment in one place (`resources_for`)."""

import os
from pathlib import Path

import dagster as dg

from modelsmith.pins import pins_file
from modelsmith.store import Home
from resources.critic import CriticSettings
from resources.inference import InferenceSettings
from resources.model import ModelSettings
from resources.pins import PinSettings
from resources.scenarios import ScenarioSettings
from resources.signer import SignerSettings
from resources.storage import LocalStorage, StorageEngine
from resources.trainer import TrainerSettings

__all__ = ["CriticSettings", "InferenceSettings", "LocalStorage", "ModelSettings", "PinSettings", "ScenarioSettings",
           "SignerSettings", "StorageEngine", "TrainerSettings", "resources_for"]


def resources_for(env: str, root: Path | None = None,
                  pins_path: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for `embedded` (the default: no network, no GPU, no secrets) or `production`.

    `pins` is bound with its file resolved now (`pins_path`, else `MODELSMITH_PINS`, else the shipped pins): the
    file `build_definitions` declares the pin checks from, whatever the environment of a later run.
    """
    pins = PinSettings(path=str(pins_file(pins_path)))
    if env == "embedded":
        return {"storage": LocalStorage(root=str(root) if root else ""), "scenarios": ScenarioSettings(),
                # a user's own model directory works here too; empty builds the embedded default
                "model": ModelSettings(base_model_dir=os.environ.get("MODELSMITH_BASE_MODEL", "")),
                "inference": InferenceSettings(), "critic": CriticSettings(),
                "signer": SignerSettings(key_dir=str(Home(root).keys) if root else ""), "trainer": TrainerSettings(),
                "pins": pins}
    if env == "production":
        return {
            "storage": LocalStorage(root=dg.EnvVar("MODELSMITH_HOME")),
            "scenarios": ScenarioSettings(policy_path=dg.EnvVar("MODELSMITH_POLICY")),
            "model": ModelSettings(base_model_dir=dg.EnvVar("MODELSMITH_BASE_MODEL")),
            "inference": InferenceSettings(engine=os.environ.get("MODELSMITH_ENGINE", "transformers")),
            # Claude when a key is present (MODELSMITH_CRITIC overrides); a failing call falls back, and says so.
            # The key is bound as an EnvVar, never as its value: a bound value becomes the default of the
            # resource's config field, which Dagster stores in every job snapshot and shows in the Launchpad.
            "critic": CriticSettings(critic=os.environ.get("MODELSMITH_CRITIC") or
                                     ("claude" if os.environ.get("ANTHROPIC_API_KEY") else "statistical"),
                                     api_key=dg.EnvVar("ANTHROPIC_API_KEY") if os.environ.get("ANTHROPIC_API_KEY")
                                     else ""),
            "signer": SignerSettings(key_dir=os.environ.get("MODELSMITH_KEY_DIR", "")),
            "trainer": TrainerSettings(),
            "pins": pins,
        }
    raise ValueError(f"unknown MODELSMITH_ENV {env!r}; expected 'embedded' or 'production'")
