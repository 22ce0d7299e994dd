"""The replay set: generated packs plus real replay files, ingested and labelled by the active policy."""

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from modelsmith.atomic import write_with
from scenario_data.ingest import IngestResult, ingest_paths
from scenario_data.policy import Policy

SEGMENT_KEYS = ("vertical", "inventory_type")


@dataclass
class ReplaySet:
    labelled: pl.DataFrame
    ingest: IngestResult
    policy_digest: str


def build_replay_set(sources: list[Path], policy: Policy, domain_lists: dict[str, str]) -> ReplaySet:
    """Ingest every source (files or directories), then label each decision row with `policy`."""
    result = ingest_paths(sources, domain_lists)
    return ReplaySet(labelled=policy.label(result.features), ingest=result, policy_digest=policy.digest)


def write_replay_set(replay: ReplaySet, labelled: Path, quarantine: Path) -> None:
    """The labelled rows, then the quarantined requests with their reasons, each atomically."""
    write_with(labelled, lambda tmp: replay.labelled.write_parquet(tmp))
    write_with(quarantine, lambda tmp: replay.ingest.quarantine.write_parquet(tmp))


def segment_counts(labelled: pl.DataFrame) -> pl.DataFrame:
    """Rows per segment (vertical x inventory type) and per decision, for the UI."""
    if labelled.height == 0:
        return pl.DataFrame({"vertical": [], "inventory_type": [], "rows": []})
    return (
        labelled.group_by(*SEGMENT_KEYS)
        .agg(pl.len().alias("rows"), *(
            (pl.col("expected") == d).sum().alias(d) for d in sorted(labelled["expected"].unique().to_list())
        ))
        .sort(["rows", *SEGMENT_KEYS], descending=[True, False, False])
    )


def to_markdown(df: pl.DataFrame, max_rows: int = 100) -> str:
    """A GitHub-style markdown table (what the Dagster UI renders)."""
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.head(max_rows).iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    if df.height > max_rows:
        lines.append(f"\n… {df.height - max_rows} more rows")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")
