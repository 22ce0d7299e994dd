"""Repair cycles: one per detected regression of the champion, recorded in `HOME/cycles/<cycle>/cycle.json`.

A cycle is keyed by what regressed: the model version, the policy it was judged by and the set of
regressed pins. Re-pinning the same champion (the nightly schedule, a backfill, new replay files)
and finding the same regression gives the same cycle, and the pin-regression sensor's run key is
the cycle id, so one regression opens one cycle however often it is seen. To repair it again
(after a failure or a fix), re-run the cycle: `dagster job backfill -j repair_cycle_job --from C --to C`.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from modelsmith.atomic import write_text
from modelsmith.model_dir import short
from modelsmith.store import Home

CYCLES = "repair_cycles"


@dataclass(frozen=True)
class CycleRecord:
    """`cycle.json`: what regressed, in which version, judged by which policy on which pin run."""

    cycle: str
    opened: str  # ISO 8601, UTC: the cycle time counts from here
    model_version: str  # the champion's digest
    policy_digest: str
    scenarios_digest: str
    run_dir: str  # the champion's regressed pin run
    regressed: list[str]  # pin names
    report: list[dict]  # the regression report's entries for those pins, without their failing row ids

    def as_dict(self) -> dict:
        return asdict(self)


def cycle_dir(home: Path, cycle: str) -> Path:
    return Home(home).cycle(cycle).dir


def cycle_id(report: dict) -> str:
    """`<model key>-<digest of the policy and the regressed pins>`: stable for one regression."""
    basis = json.dumps({"policy": report["policy_digest"], "pins": sorted(p["pin"] for p in report["regressed"])})
    return f"{short(report['model_version'])[:8]}-{hashlib.sha256(basis.encode()).hexdigest()[:12]}"


def open_cycle(home: Path, report: dict) -> str:
    """Record a cycle for a regression report with regressed pins; returns its id (existing or new)."""
    if not report["regressed"]:
        raise ValueError(f"the report of {short(report['model_version'])} has no regressed pin: nothing to repair")
    key = cycle_id(report)
    path = Home(home).cycle(key).record
    if not path.exists():
        record = CycleRecord(
            cycle=key, opened=datetime.now(UTC).isoformat(timespec="seconds"), model_version=report["model_version"],
            policy_digest=report["policy_digest"], scenarios_digest=report["scenarios_digest"],
            run_dir=report["run_dir"], regressed=[p["pin"] for p in report["regressed"]],
            report=[{k: v for k, v in p.items() if k != "failing_row_ids"} for p in report["regressed"]])
        write_text(path, json.dumps(record.as_dict(), indent=2))
    return key


def read_cycle(home: Path, cycle: str) -> CycleRecord:
    path = Home(home).cycle(cycle).record
    if not path.is_file():
        raise FileNotFoundError(f"no repair cycle {cycle!r} ({path} missing); cycles are opened for regressed pins")
    return CycleRecord(**json.loads(path.read_text()))
