"""Great Expectations 1.x suites on the feature table and on the labels.

GX validates pandas, so frames are converted at the boundary; GX is imported lazily (it costs ~5 s).
"""

from dataclasses import dataclass
from typing import Any

import polars as pl

from scenario_data.features import DEVICE_TYPES
from scenario_data.policy import DECISIONS
from scenario_data.taxonomy import all_verticals


@dataclass(frozen=True)
class SuiteResult:
    success: bool
    failed: list[str]
    evaluated: int

    def to_markdown(self) -> str:
        if self.success:
            return f"All {self.evaluated} expectations passed."
        return "Failed expectations:\n\n" + "\n".join(f"- {f}" for f in self.failed)


def _feature_expectations(gx: Any) -> list[Any]:
    e = gx.expectations
    return [
        *(e.ExpectColumnValuesToNotBeNull(column=c) for c in ("row_id", "request_id", "imp_id", "source_file")),
        e.ExpectColumnValuesToBeUnique(column="row_id"),
        e.ExpectColumnValuesToBeInSet(column="inventory_type", value_set=["site", "app", "dooh", "unknown"]),
        e.ExpectColumnValuesToBeInSet(column="vertical", value_set=list(all_verticals())),
        e.ExpectColumnValuesToBeInSet(column="device_type", value_set=[*DEVICE_TYPES.values(), "unknown"]),
        e.ExpectColumnValuesToBeInSet(column="media", value_set=["banner", "video", "native", "audio", "stored"]),
        e.ExpectColumnValuesToBeInSet(column="position", value_set=["atf", "btf", "unknown"]),
        e.ExpectColumnValuesToBeBetween(column="floor", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="slots", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="schain_hops", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="width", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="height", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="ad_density", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeBetween(column="paid_traffic", min_value=0, max_value=1),
    ]


def _label_expectations(gx: Any, bounds: dict[str, tuple[float, float]]) -> list[Any]:
    e = gx.expectations
    out = [
        e.ExpectColumnValuesToNotBeNull(column="expected"),
        e.ExpectColumnValuesToBeInSet(column="expected", value_set=list(DECISIONS)),
        e.ExpectColumnValuesToNotBeNull(column="rule"),
        e.ExpectColumnUniqueValueCountToBeBetween(column="policy_digest", min_value=1, max_value=1),
    ]
    # Label distribution within bounds: the mean of a 0/1 indicator is the decision's share.
    out += [
        e.ExpectColumnMeanToBeBetween(column=_share_column(d), min_value=lo, max_value=hi)
        for d, (lo, hi) in bounds.items()
    ]
    return out


def _share_column(decision: str) -> str:
    return "share_" + decision.replace(":", "_")


LABEL_SHARE_BOUNDS = {
    "no_bid:mfa": (0.0, 0.40),
    "no_bid:unsafe": (0.0, 0.25),
    "bid:shade_low": (0.0, 0.70),
    "bid:shade_mid": (0.0, 0.90),
    "bid:shade_high": (0.0, 0.60),
}


def run_suite(df: pl.DataFrame, name: str, expectations: list[Any]) -> SuiteResult:
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"{name}_source")
    batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    result = batch.get_batch(batch_parameters={"dataframe": df.to_pandas()}).validate(suite)
    failed = [
        f"{r.expectation_config.type} {r.expectation_config.kwargs.get('column', '')}".strip()
        for r in result.results
        if not r.success
    ]
    return SuiteResult(success=bool(result.success), failed=failed, evaluated=len(result.results))


def validate_features(df: pl.DataFrame) -> SuiteResult:
    import great_expectations as gx

    return run_suite(df, "features", _feature_expectations(gx))


def validate_labels(df: pl.DataFrame, bounds: dict[str, tuple[float, float]] | None = None) -> SuiteResult:
    import great_expectations as gx

    bounds = bounds or LABEL_SHARE_BOUNDS
    frame = df.select("expected", "rule", "policy_digest").with_columns(
        (pl.col("expected") == d).cast(pl.Float64).alias(_share_column(d)) for d in bounds
    )
    return run_suite(frame, "labels", _label_expectations(gx, bounds))


# target, replay, contrast and near-miss rows are trained on; validation rows choose the epoch
TRAINING_SOURCES = ("target", "replay", "contrast", "near_miss", "validation")
TRAINING_SHARE_BOUNDS = {d: (0.0, 0.9) for d in DECISIONS}  # a targeted set is skewed by design, not degenerate


def validate_training_rows(df: pl.DataFrame) -> SuiteResult:
    """The blocking suite on a synthetic dataset: the feature and label suites, plus its own columns."""
    import great_expectations as gx

    e = gx.expectations
    frame = df.drop("keywords", "title", strict=False).with_columns(
        (pl.col("expected") == d).cast(pl.Float64).alias(_share_column(d)) for d in TRAINING_SHARE_BOUNDS)
    expectations = [*_feature_expectations(gx), *_label_expectations(gx, TRAINING_SHARE_BOUNDS),
                    e.ExpectColumnValuesToBeInSet(column="source", value_set=list(TRAINING_SOURCES)),
                    e.ExpectColumnValuesToBeInSet(column="champion", value_set=list(DECISIONS)),
                    e.ExpectColumnValuesToNotBeNull(column="content_digest"),
                    e.ExpectColumnValuesToBeUnique(column="content_digest")]
    return run_suite(frame, "training_rows", expectations)
