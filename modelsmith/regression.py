"""The regression report: which pins of a pin run regressed or failed, by how much, and on which rows.

It is the repair chain's input: a cycle opens for a regressed pin of the champion, and the failure
traces are the pin's failing rows (`failing_row_ids`) in that run's predictions.
"""

import json
from pathlib import Path

import polars as pl

from modelsmith.pins import PinSet
from modelsmith.store import PinRunFiles


def regression_report_for(run_dir: Path, pins: PinSet) -> dict:
    """Read one stored pin run (`modelsmith.pin_runs.store`) and summarise its regressed and failed pins."""
    files = PinRunFiles(Path(run_dir))
    summary = json.loads(files.summary.read_text())
    metrics = pl.read_parquet(files.metrics)
    preds = pl.read_parquet(files.predictions)
    by_name = {p.name: p for p in pins.pins}
    regressed, failed = [], []
    for row in metrics.iter_rows(named=True):
        if row["passed"]:
            continue
        pin = by_name.get(row["pin"])
        wrong = preds.filter(pin.mask(preds) & ~pl.col("correct")) if pin else preds.clear()
        entry = {"pin": row["pin"], "segment": row["segment"], "rows": row["rows"], "accuracy": row["accuracy"],
                 "accuracy_floor": row["accuracy_floor"], "reference_accuracy": row["reference_accuracy"],
                 "drop": row["drop"], "p_value": row["p_value"], "test": row["test"], "reasons": row["reasons"],
                 "failing_rows": wrong.height, "failing_row_ids": wrong["row_id"].to_list()}
        (regressed if row["regressed"] else failed).append(entry)
    regressed.sort(key=lambda e: -(e["drop"] or 0.0))
    return {"model_version": summary["model_version"], "policy_digest": summary["policy_digest"],
            "scenarios_digest": summary["scenarios_digest"], "pinned": summary["created"],
            "reference": summary["reference"], "run_dir": str(run_dir), "composite": summary["composite"],
            "regressed": regressed, "failed": failed}
