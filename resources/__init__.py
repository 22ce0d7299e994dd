"""The swappable engines, chosen per environment in one place (`resources_for`)."""

from pathlib import Path

import dagster as dg

from resources.scenarios import ScenarioSettings
from resources.storage import LocalStorage, StorageEngine

__all__ = ["LocalStorage", "ScenarioSettings", "StorageEngine", "resources_for"]


def resources_for(env: str, root: Path | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for `embedded` (the default: no network, no GPU, no secrets) or `production`."""
    if env == "embedded":
        return {"storage": LocalStorage(root=str(root) if root else ""), "scenarios": ScenarioSettings()}
    if env == "production":
        return {
            "storage": LocalStorage(root=dg.EnvVar("MODELSMITH_HOME")),
            "scenarios": ScenarioSettings(policy_path=dg.EnvVar("MODELSMITH_POLICY")),
        }
    raise ValueError(f"unknown MODELSMITH_ENV {env!r}; expected 'embedded' or 'production'")
