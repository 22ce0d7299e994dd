"""Repair cycles: one per detected regression of the champion, recorded in `HOME/cycles/<cycle>/cycle.json`.

A cycle is keyed by what regressed: the model version, the policy it was judged by and the set of
regressed pins. Re-pinning the same champion (the nightly schedule, a backfill, new replay files)
and finding the same regression gives the same cycle, and the pin-regression sensor's run key is
the cycle id, so one regression opens one cycle however often it is seen. To repair it again
(after a failure or a fix), re-run the cycle: `dagster job backfill -j repair_cycle_job --from C --to C`.
"""

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from modelsmith.atomic import write_text
from modelsmith.model_dir import short

CYCLES = "repair_cycles"


def cycle_dir(home: Path, cycle: str) -> Path:
    return Path(home) / "cycles" / cycle


def cycle_id(report: dict) -> str:
    """`<model key>-<digest of the policy and the regressed pins>`: stable for one regression."""
    basis = json.dumps({"policy": report["policy_digest"], "pins": sorted(p["pin"] for p in report["regressed"])})
    return f"{short(report['model_version'])[:8]}-{hashlib.sha256(basis.encode()).hexdigest()[:12]}"


def open_cycle(home: Path, report: dict) -> str:
    """Record a cycle for a regression report with regressed pins; returns its id (existing or new)."""
    if not report["regressed"]:
        raise ValueError(f"the report of {short(report['model_version'])} has no regressed pin: nothing to repair")
    key = cycle_id(report)
    path = cycle_dir(home, key) / "cycle.json"
    if not path.exists():
        record = {"cycle": key, "opened": datetime.now(UTC).isoformat(timespec="seconds"),
                  "model_version": report["model_version"], "policy_digest": report["policy_digest"],
                  "scenarios_digest": report["scenarios_digest"], "run_dir": report["run_dir"],
                  "regressed": [p["pin"] for p in report["regressed"]],
                  "report": [{k: v for k, v in p.items() if k != "failing_row_ids"} for p in report["regressed"]]}
        write_text(path, json.dumps(record, indent=2))
    return key


def read_cycle(home: Path, cycle: str) -> dict:
    path = cycle_dir(home, cycle) / "cycle.json"
    if not path.is_file():
        raise FileNotFoundError(f"no repair cycle {cycle!r} ({path} missing); cycles are opened for regressed pins")
    return json.loads(path.read_text())
