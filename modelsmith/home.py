"""Where Modelsmith keeps everything it writes: the Modelsmith home (`$MODELSMITH_HOME`, default `~/.modelsmith`)."""

import os
from pathlib import Path


def modelsmith_home() -> Path:
    """The root of every artifact, key and the Dagster instance; created on first use."""
    root = Path(os.environ.get("MODELSMITH_HOME", Path.home() / ".modelsmith")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
