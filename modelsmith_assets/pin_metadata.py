"""How one pin run shows in Dagster: `pin_results`' metadata and checks, and `regression_report`'s metadata.

No assets here: the model stage's assets record a pin run with these, and so does `candidate_pins` (the
repair chain), which records the candidate's pin run as those assets' partition; both stages import
this module, neither imports the other.
"""

import time
from pathlib import Path

import dagster as dg
import polars as pl

from modelsmith.champion import read_champion
from modelsmith.evaluate import STATUS_ORDER, PinResult, every_pin_sentence, failing_first, status_text
from modelsmith.model_dir import file_sha256
from modelsmith.pin_runs import runs
from modelsmith.pins import PinSet
from modelsmith.regression import regression_report_for
from modelsmith.store import PinRunFiles, write_json
from modelsmith_assets.tables import frame_table, pins_table
from resources.storage import StorageEngine

EVERY_PIN_HOLDS = "every_pin_holds"  # sorts before every `pin_*` check: the UI lists checks by name


def _pin_check(r: PinResult) -> dict:
    meta = {"segment": r.segment, "rows": r.rows, "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high,
            "accuracy_floor": r.accuracy_floor, "latency_p99_ms": r.latency_p99_ms,
            "latency_p99_budget_ms": r.latency_p99_budget_ms, "composite": r.composite}
    meta |= {"status": r.status, "floor_p_adjusted": r.floor_p_adjusted, "min_detectable_drop": r.min_detectable_drop}
    if r.p_value is not None:
        meta |= {"p_value": r.p_value, "p_adjusted": r.p_adjusted, "drop": r.drop, "drop_upper": r.drop_upper,
                 "max_drop": r.max_drop, "regressed": r.regressed}
    if r.reasons:
        meta["reasons"] = r.reasons
    if r.notes:
        meta["notes"] = r.notes
    # An inconclusive pin is a warning in the UI: it did not fail, and it cannot vouch either. The UI labels
    # both "Failed" (by icon only they differ), so the description says which, and why.
    return {"check_name": r.check_name, "passed": r.status == "ok", "metadata": meta,
            "description": status_text(r)[:1000],
            "severity": dg.AssetCheckSeverity.WARN if r.status == "inconclusive" else dg.AssetCheckSeverity.ERROR}


def _every_pin_check(results: list[PinResult]) -> dict:
    """The pins' verdict in one check, listed first; its table puts the failing pins on top."""
    shown = failing_first([r for r in results if r.status != "ok"])
    counts = {s: sum(r.status == s for r in results) for s in STATUS_ORDER}
    return {"check_name": EVERY_PIN_HOLDS, "passed": counts["failed"] == 0, "severity": dg.AssetCheckSeverity.ERROR,
            "description": every_pin_sentence(results)[:1000],
            "metadata": {**counts, "failing": ", ".join(r.pin for r in shown if r.status == "failed") or "none",
                         "pins": pins_table(shown)}}


def pin_checks(results: list[PinResult], partition: str) -> list[dict]:
    """The asset-check results of one pin run (as keyword arguments): `every_pin_holds`, then one per pin.

    Each names the version's partition in its metadata: the checks are not partitioned (a preview feature in
    Dagster 1.13), so the UI shows a result without it otherwise.
    """
    checks = [_every_pin_check(results), *(_pin_check(r) for r in results)]
    return [{**c, "metadata": {"partition": partition, **c["metadata"]}} for c in checks]


def pin_results_metadata(run, version, run_dir, reference_name: str, label: str) -> dict:
    """`pin_results`' metadata for one pin run of `version` (the pins table with the failing ones on top); its
    `sha256` (of the run's predictions) is the materialisation's data version."""
    return {
        "label": label, "dagster/row_count": run.predictions.height,
        "path": dg.MetadataValue.path(str(run_dir)), "sha256": file_sha256(PinRunFiles(Path(run_dir)).predictions),
        "composite": run.composite, "passed": run.passed,
        "failed": ", ".join(run.summary()["failed"]) or "none",
        "inconclusive": ", ".join(r.pin for r in run.results if r.inconclusive) or "none",
        "regressed": ", ".join(run.summary()["regressed"]) or "none",
        "reference": reference_name, "policy_digest": run.policy_digest, "scenarios_digest": run.scenarios_digest,
        "model_version": version.digest, "kind": version.kind,
        "pins": pins_table(failing_first(run.results)),
    }


def regression_report_metadata(instance: dg.DagsterInstance, storage: StorageEngine, pins: PinSet, version,
                               label: str) -> dict:
    """Write the regression report of `version`'s latest pin run (the latest copy for people, this run's for the
    sensor) and return `regression_report`'s metadata (its `sha256` is the data version)."""
    home = storage.home()
    done = runs(home.root, version.digest)
    if not done:
        raise FileNotFoundError(f"no pin run for {version.key}: materialise pin_results[{version.key}] first")
    run_dir, _ = done[-1]
    report = regression_report_for(run_dir, pins)
    champion = read_champion(home.root)
    write_json(home.report(version.key), report)
    path = write_json(home.run_report(version.key, run_dir.name), report)
    landed = instance.fetch_materializations(dg.AssetKey("replayed_auctions"), limit=1).records
    detect = {"time_to_detect_s": round(time.time() - landed[0].timestamp, 1)} if landed and report["regressed"] else {}
    is_champion = champion is not None and champion.model_version == version.digest
    return {**(detect if is_champion else {}), "label": label,
            "regressed": len(report["regressed"]), "failed": len(report["failed"]),
            "pins": ", ".join(p["pin"] for p in report["regressed"]) or "none",
            "is_champion": is_champion, "path": dg.MetadataValue.path(str(path)), "sha256": file_sha256(path),
            "report": frame_table(_regressed_frame(report["regressed"]))}


def _regressed_frame(regressed: list[dict]) -> pl.DataFrame:
    columns = {"pin": pl.String, "rows": pl.Int64, "reference_accuracy": pl.Float64, "accuracy": pl.Float64,
               "drop": pl.Float64, "p_value": pl.Float64, "failing_rows": pl.Int64}
    return pl.DataFrame([{k: p.get(k) for k in columns} for p in regressed], schema=columns)
