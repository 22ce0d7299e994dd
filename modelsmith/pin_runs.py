"""Pin runs: decide the replayed auctions with one model version, score the pins, keep the history.

Every run is stored under `HOME/pins/<version key>/<run id>/` as Parquet (predictions, per-pin
metrics, per-decision precision/recall) plus a `summary.json`, written atomically. The history of
every version is one DuckDB query away:

    SELECT model_version, policy_digest, pin, accuracy, passed
    FROM read_parquet('~/.modelsmith/pins/*/*/metrics.parquet') ORDER BY created
"""

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from modelsmith.atomic import write_text, write_with
from modelsmith.evaluate import (
    PinResult,
    composite,
    decision_metrics,
    predictions_frame,
    reference_from_predictions,
    results_frame,
    score_pins,
)
from modelsmith.champion import read_champion
from modelsmith.engines.inference import InferenceEngine
from modelsmith.model_dir import ModelVersion, file_sha256, short
from modelsmith.pins import PinSet
from modelsmith.store import Home, PinRunFiles


@dataclass
class PinRun:
    model_version: str
    policy_digest: str
    scenarios_digest: str
    predictions: pl.DataFrame
    results: list[PinResult]
    decisions: pl.DataFrame
    reference: str  # what the paired test compared against, in words
    created: str = ""

    @property
    def composite(self) -> float:
        return composite(self.results)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def summary(self) -> dict:
        return {
            "model_version": self.model_version, "policy_digest": self.policy_digest,
            "scenarios_digest": self.scenarios_digest, "created": self.created, "rows": self.predictions.height,
            "passed": self.passed, "composite": self.composite, "reference": self.reference,
            "regressed": [r.pin for r in self.results if r.regressed],
            "failed": [r.pin for r in self.results if not r.passed],
            "inconclusive": [r.pin for r in self.results if r.inconclusive],
        }

    def as_json(self) -> dict:
        """The `modelsmith pins run --json` shape."""
        return {
            "model": self.model_version, "policy": self.policy_digest, "scenarios": self.scenarios_digest,
            "rows": self.predictions.height, "composite": self.composite, "passed": self.passed,
            "reference": self.reference,
            "pins": [
                {"segment": r.pin, "rows": r.rows, "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high,
                 "latency_p99_ms": r.latency_p99_ms, "passed": r.passed, "status": r.status,
                 **({"regressed": r.regressed, "p_value": r.p_value, "drop": r.drop} if r.p_value is not None else {}),
                 **({"reasons": r.reasons} if r.reasons else {}), **({"notes": r.notes} if r.notes else {})}
                for r in self.results
            ],
        }


def pin(engine, labelled: pl.DataFrame, pins: PinSet, model_version: str, scenarios_digest: str,
        reference: pl.DataFrame | None = None, reference_name: str = "none",
        progress: Callable[[int], None] | None = None) -> PinRun:
    """Decide every row with `engine` (already switched to the version's adapter) and score the pins.

    With `progress` (a CLI's bar), rows are decided in slices of whole micro-batches and `progress(k)`
    is told each slice's `k` rows: the micro-batches, and so every decision and latency, are those of one call.
    """
    parts = _slices(labelled, engine) if progress is not None else []
    decided = pl.concat([_decided(engine, part, progress) for part in parts]) if parts else \
        engine.decide(labelled).to_frame()
    preds = predictions_frame(labelled, decided)
    policy_digest = labelled["policy_digest"][0] if labelled.height else ""
    return PinRun(model_version, policy_digest, scenarios_digest, preds, score_pins(pins, preds, reference),
                  decision_metrics(pins, preds), reference_name, datetime.now(UTC).isoformat(timespec="seconds"))


def labelled_auctions(home: Path) -> tuple[pl.DataFrame, str]:
    """The replayed auctions with their labels (the `replayed_auctions` asset's file) and the file's SHA-256."""
    path = Home(home).labelled_auctions
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialise replayed_auctions first")
    return pl.read_parquet(path), file_sha256(path)


def pin_version(home: Path, pins: PinSet, version: ModelVersion,
                load: Callable[[ModelVersion], InferenceEngine]) -> tuple[PinRun, Path, str]:
    """Pin one registered version on the replayed auctions against its reference, and store the run.

    The reference is the champion's decisions for any other version, the champion's own last passing
    run for the champion (`reference_for`). `load(version)` loads the version's engine as it would be
    served (`resources.inference.InferenceSettings.load_version`). Returns (run, run directory, reference).
    """
    labelled, scenarios_digest = labelled_auctions(home)
    champion = read_champion(home)
    champion_digest = champion.model_version if champion else None
    reference, reference_name = reference_for(home, version.digest, champion_digest, labelled)
    engine = load(version)
    run = pin(engine, labelled, pins, version.digest, scenarios_digest, reference, reference_name)
    return run, store(home, run), reference_name


def _slices(labelled: pl.DataFrame, engine, rows: int = 512) -> list[pl.DataFrame]:
    """Slices of whole micro-batches (a multiple of the engine's batch size, about `rows` rows)."""
    batch = max(1, int(getattr(engine, "batch_size", 1)))
    size = batch * max(1, rows // batch)
    return [labelled.slice(start, size) for start in range(0, labelled.height, size)]


def _decided(engine, part: pl.DataFrame, progress: Callable[[int], None]) -> pl.DataFrame:
    frame = engine.decide(part).to_frame()
    progress(part.height)
    return frame


def runs_root(home: Path) -> Path:
    return Home(home).pin_runs


def store(home: Path, run: PinRun) -> Path:
    """Write a run under HOME/pins/<version key>/<run id>/; the summary is written last (it marks completeness)."""
    stamp = run.created.replace(":", "").replace("-", "")
    run_dir = runs_root(home) / short(run.model_version) / f"{stamp}-{run.policy_digest[:8]}-{run.scenarios_digest[:8]}-{uuid.uuid4().hex[:8]}"
    tags = {"model_version": run.model_version, "policy_digest": run.policy_digest,
            "scenarios_digest": run.scenarios_digest, "created": run.created}
    metrics = results_frame(run.results).with_columns(*(pl.lit(v).alias(k) for k, v in tags.items()))
    decisions = run.decisions.with_columns(*(pl.lit(v).alias(k) for k, v in tags.items()))
    files = PinRunFiles(run_dir)
    write_with(files.predictions, lambda tmp: run.predictions.write_parquet(tmp))
    write_with(files.metrics, lambda tmp: metrics.write_parquet(tmp))
    write_with(files.decisions, lambda tmp: decisions.write_parquet(tmp))
    write_text(files.summary, json.dumps(run.summary(), indent=2))
    return run_dir


def runs(home: Path, model_version: str) -> list[tuple[Path, dict]]:
    """Complete runs of one version, oldest first."""
    root = runs_root(home) / short(model_version)
    out = []
    for summary in sorted(PinRunFiles(d).summary for d in root.glob("*") if PinRunFiles(d).summary.is_file()):
        out.append((summary.parent, json.loads(summary.read_text())))
    return sorted(out, key=lambda x: x[1]["created"])


def last_passing(home: Path, model_version: str) -> tuple[Path, dict] | None:
    passing = [r for r in runs(home, model_version) if r[1]["passed"]]
    return passing[-1] if passing else None


def latest(home: Path, model_version: str, policy_digest: str | None = None, scenarios_digest: str | None = None):
    matching = [r for r in runs(home, model_version)
                if (policy_digest is None or r[1]["policy_digest"] == policy_digest)
                and (scenarios_digest is None or r[1]["scenarios_digest"] == scenarios_digest)]
    return matching[-1] if matching else None


def reference_for(home: Path, model_version: str, champion: str | None, labelled: pl.DataFrame) -> tuple[pl.DataFrame | None, str]:
    """What a version is compared against (see the module docs of `modelsmith.evaluate`).

    A candidate (not the champion) against the champion's latest decisions on these scenarios,
    judged by today's labels; the champion against itself at its last passing pin.
    """
    if champion and model_version != champion:
        found = latest(home, champion)
        if found is None:
            return None, "none: the champion has no pin run yet"
        preds = pl.read_parquet(PinRunFiles(found[0]).predictions, columns=["row_id", "predicted"])
        return reference_from_predictions(preds, labelled), f"champion {short(champion)} ({found[0].name})"
    found = last_passing(home, model_version)
    if found is None:
        return None, "none: no earlier passing pin run"
    preds = pl.read_parquet(PinRunFiles(found[0]).predictions, columns=["row_id", "correct"])
    return reference_from_predictions(preds), f"its last passing pin run ({found[0].name})"


def history(home: Path) -> pl.DataFrame:
    """Every pin of every run of every version, through DuckDB over the Parquet files in place."""
    import duckdb

    # Complete runs only: a run killed before its summary.json is not history.
    done = [PinRunFiles(d) for d in sorted(runs_root(home).glob("*/*")) if not d.name.startswith(".")]
    files = [str(f.metrics) for f in done if f.summary.is_file() and f.metrics.is_file()]
    if not files:
        return pl.DataFrame()
    return duckdb.sql(
        f"SELECT created, model_version, policy_digest, scenarios_digest, pin, rows, accuracy, ci_low, ci_high, "
        f"latency_p99_ms, composite, regressed, passed FROM read_parquet({files!r}) ORDER BY created, pin"
    ).pl()
