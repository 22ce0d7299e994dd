"""The swappable engines, chosen per environment in one place (`resources_for`)."""

import os
from pathlib import Path

import dagster as dg

from resources.inference import InferenceSettings
from resources.model import ModelSettings
from resources.scenarios import ScenarioSettings
from resources.storage import LocalStorage, StorageEngine

__all__ = ["InferenceSettings", "LocalStorage", "ModelSettings", "ScenarioSettings", "StorageEngine", "resources_for"]


def resources_for(env: str, root: Path | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for `embedded` (the default: no network, no GPU, no secrets) or `production`."""
    if env == "embedded":
        return {"storage": LocalStorage(root=str(root) if root else ""), "scenarios": ScenarioSettings(),
                "model": ModelSettings(), "inference": InferenceSettings()}
    if env == "production":
        return {
            "storage": LocalStorage(root=dg.EnvVar("MODELSMITH_HOME")),
            "scenarios": ScenarioSettings(policy_path=dg.EnvVar("MODELSMITH_POLICY")),
            "model": ModelSettings(base_model_dir=dg.EnvVar("MODELSMITH_BASE_MODEL")),
            "inference": InferenceSettings(engine=os.environ.get("MODELSMITH_ENGINE", "transformers")),
        }
    raise ValueError(f"unknown MODELSMITH_ENV {env!r}; expected 'embedded' or 'production'")
