"""A snapshot of every asset spec and check of the code location: a change to the lineage is a reviewed diff.

Regenerate after a deliberate change with `MODELSMITH_UPDATE_SNAPSHOTS=1` and review the JSON diff.
"""

import json
import os
from pathlib import Path

from modelsmith_assets.definitions import build_definitions
from modelsmith.pins import load_pins

SNAPSHOT = Path(__file__).with_name("asset_specs.json")


def _snapshot() -> dict:
    defs = build_definitions()
    specs = {}
    for spec in defs.resolve_all_asset_specs():
        specs[spec.key.to_user_string()] = {
            "deps": sorted(d.asset_key.to_user_string() for d in spec.deps), "group": spec.group_name,
            "kinds": sorted(spec.kinds), "owners": sorted(spec.owners), "description": spec.description,
            "partitions": type(spec.partitions_def).__name__ if spec.partitions_def else None,
        }
    graph = defs.resolve_asset_graph()
    pin_names = {p.check_name for p in load_pins().pins}
    checks: dict[str, list[str]] = {}
    pin_checks = 0
    for key in graph.asset_check_keys:
        if key.name in pin_names:
            pin_checks += 1
            continue
        spec = graph.get_check_spec(key)
        checks.setdefault(key.asset_key.to_user_string(), []).append(
            f"{key.name}{' (blocking)' if spec.blocking else ''}")
    return {"assets": dict(sorted(specs.items())), "checks": {k: sorted(v) for k, v in sorted(checks.items())},
            "pin_checks": pin_checks, "jobs": sorted(j.name for j in defs.jobs or []),
            "sensors": sorted(s.name for s in defs.sensors or []),
            "schedules": sorted(s.name for s in defs.schedules or [])}


def test_every_asset_spec_matches_the_snapshot():
    now = _snapshot()
    if os.environ.get("MODELSMITH_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(now, indent=2, sort_keys=False) + "\n")
    assert now == json.loads(SNAPSHOT.read_text()), (
        "the asset graph changed: if on purpose, rerun with MODELSMITH_UPDATE_SNAPSHOTS=1 and review the diff")
