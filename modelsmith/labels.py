"""Names a person can read beside the digests that key partitions.

Partition keys stay content digests (a model version's first 16 hex digits, a cycle's
`<model>-<digest>`): they are what makes an artifact addressable and a re-run idempotent, and Dagster
has no display name for a partition. These labels go beside them, as run tags and asset metadata.
"""

import json
from pathlib import Path

from modelsmith.cycles import CycleRecord, read_cycle
from modelsmith.model_dir import ModelVersion, short
from modelsmith.store import Home

MAX_PINS = 3  # a label names this many pins, then counts the rest


def pins_phrase(pins: list[str]) -> str:
    """`A, B and 2 more` for a list of pin names.

    >>> pins_phrase(["Video Gaming/app"])
    'Video Gaming/app'
    >>> pins_phrase(["a", "b", "c", "d", "e"])
    'a, b, c and 2 more'
    """
    shown = ", ".join(pins[:MAX_PINS])
    return shown + (f" and {len(pins) - MAX_PINS} more" if len(pins) > MAX_PINS else "")


def cycle_label(cycle: CycleRecord) -> str:
    """What a repair cycle repairs, and in which model version: `repair Video Gaming/app of 1a2b3c4d5e6f7a8b`."""
    return f"repair {pins_phrase(cycle.regressed)} of {short(cycle.model_version)}"


def version_label(home: Path, version: ModelVersion) -> str:
    """A base model by its directory (`base model Qwen2.5-0.5B`, or the embedded default built here), an
    adapter by the cycle that trained it (`adapter of cycle C: repair ...`)."""
    home = Home(home)
    if version.kind == "base":
        path = Path(version.path)
        if path.parent.resolve() == home.base_models.resolve():
            return "base model: the embedded default"
        return f"base model {path.name}"
    cycles = sorted(p.name for p in home.cycles.iterdir() if p.is_dir()) if home.cycles.is_dir() else []
    for key in cycles:
        record = home.cycle(key).adapter
        if record.is_file() and json.loads(record.read_text()).get("model_version") == version.digest:
            cycle = read_cycle(home.root, key)
            return f"adapter of cycle {cycle.cycle}: {cycle_label(cycle)}"
    return f"adapter on {short(version.base or '')}"
