"""Where artifacts live: the storage engine. The embedded default is a directory in the Modelsmith home."""

from pathlib import Path

import dagster as dg

from modelsmith.home import modelsmith_home
from modelsmith.store import Home


class StorageEngine(dg.ConfigurableResource):
    """Base class: every stage finds its artifacts through `home()` (`modelsmith.store.Home`, the layout)."""

    root: str = ""

    def base(self) -> Path:
        root = Path(self.root).expanduser() if self.root else modelsmith_home()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def home(self) -> Home:
        return Home(self.base())


class LocalStorage(StorageEngine):
    """Parquet, JSON and safetensors files under the Modelsmith home (or `root`)."""
