"""Polars frames as Dagster table metadata: typed columns the UI sorts, in place of hand-made markdown tables."""

import dagster as dg
import polars as pl

from modelsmith.evaluate import PinResult

MAX_ROWS = 200  # asset metadata lives in the event log: a table is a view, the artifact holds every row


def _column_type(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return "string"


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def frame_table(frame: pl.DataFrame, max_rows: int = MAX_ROWS) -> dg.TableMetadataValue:
    """The first `max_rows` rows of `frame` (sort it first), with its column types."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, _column_type(dtype)) for name, dtype in frame.schema.items()])
    records = [dg.TableRecord({k: _cell(v) for k, v in row.items()}) for row in frame.head(max_rows).iter_rows(named=True)]
    return dg.MetadataValue.table(records, schema=schema)


def pins_table(results: list[PinResult]) -> dg.TableMetadataValue:
    """One row per pin in the given order (callers put the failing ones first): its numbers, status and why."""
    rows = [{"pin": r.pin, "rows": r.rows, "accuracy": round(r.accuracy, 4), "ci_low": round(r.ci_low, 4),
             "ci_high": round(r.ci_high, 4), "p99_ms": round(r.latency_p99_ms, 2), "composite": round(r.composite, 4),
             "drop": None if r.drop is None else round(r.drop, 4),
             "p_holm": None if r.p_adjusted is None else float(f"{r.p_adjusted:.2g}"),
             "status": r.status, "why": (r.reasons if r.status == "failed" else r.notes) or ""} for r in results]
    schema = {"pin": pl.String, "rows": pl.Int64, "accuracy": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
              "p99_ms": pl.Float64, "composite": pl.Float64, "drop": pl.Float64, "p_holm": pl.Float64,
              "status": pl.String, "why": pl.String}
    return frame_table(pl.DataFrame(rows, schema=schema), max_rows=len(rows))
