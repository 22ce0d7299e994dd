"""Where artifacts live: the storage engine. The embedded default is a directory in the Modelsmith home."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from modelsmith.atomic import write_text
from modelsmith.home import modelsmith_home


class StorageEngine(dg.ConfigurableResource):
    """Base class: every stage reads and writes artifacts through `path()` and the JSON helpers."""

    root: str = ""

    def base(self) -> Path:
        root = Path(self.root).expanduser() if self.root else modelsmith_home()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def path(self, *parts: str) -> Path:
        p = self.base().joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def put_json(self, relpath: str, payload: Any) -> Path:
        target = self.path(*relpath.split("/"))
        write_text(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return target

    def get_json(self, relpath: str) -> Any:
        return json.loads(self.path(*relpath.split("/")).read_text(encoding="utf-8"))


class LocalStorage(StorageEngine):
    """Parquet, JSON and safetensors files under the Modelsmith home (or `root`)."""
