"""What a reviewer needs beside the pin table: what changed and why.

The policy diff (the cycle's policy against the one the regression was measured from), examples of
failing rows, the training data and the adapter in brief, the runs to open, the latency change in
words, and the digest to approve. Rendered twice from the same `Review`: into the bundle's report
(HTML) and as the `evidence_bundle` asset's markdown summary, which the Dagster UI shows in place.
"""

import base64
import difflib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from modelsmith.cycles import CycleRecord
from modelsmith.delta import verdict_sentence
from modelsmith.model_dir import short
from modelsmith.store import Home, PinRunFiles
from scenario_data.replay import to_markdown

EXAMPLE_COLUMNS = ("pin", "row_id", "vertical", "inventory_type", "expected", "predicted", "rule")


@dataclass(frozen=True)
class Review:
    verdict: str
    policy_diff: str  # unified diff; '' when the policy did not change
    policy_note: str
    examples: pl.DataFrame  # failing rows of the targets, with the implicated features
    data: dict  # rows by source, labels that moved to the champion's decision
    adapter: dict  # epoch kept, epochs run, held-out accuracy, recipe in brief
    runs: dict[str, str]  # asset -> Dagster run URL
    latency_note: str
    candidate: str
    champion: str


def ui_url() -> str:
    """Where the Dagster UI answers (`MODELSMITH_UI_URL`, default the `dagster dev` address)."""
    return os.environ.get("MODELSMITH_UI_URL", "http://127.0.0.1:3000").rstrip("/")


def _reference_policy(home: Path, run_dir: Path) -> str | None:
    """The policy digest of the pin run the regression was measured against (None when it had none)."""
    summary = json.loads(PinRunFiles(run_dir).summary.read_text())
    found = re.fullmatch(r"(?:its last passing pin run|champion (\w+)) \(([^)]+)\)", str(summary.get("reference", "")))
    if not found:
        return None
    owner = run_dir.parent if not found.group(1) else Home(home).pin_runs / found.group(1)
    reference = PinRunFiles(owner / found.group(2)).summary
    return json.loads(reference.read_text())["policy_digest"] if reference.is_file() else None


def policy_change(home: Path, cycle: CycleRecord) -> tuple[str, str]:
    """(unified diff, one-line note) between the reference run's policy and the cycle's."""
    home = Path(home)
    before = _reference_policy(home, Path(cycle.run_dir))
    after = cycle.policy_digest
    if before is None:
        return "", "no reference run to compare the policy with"
    if before == after:
        return "", "the policy did not change: the regression came from new scenarios or a new model"
    texts = [Home(home).policy_copy(d) for d in (before, after)]
    if not all(t.is_file() for t in texts):
        return "", f"policy {before[:12]} -> {after[:12]} (a policy text is missing from {texts[0].parent})"
    diff = difflib.unified_diff(texts[0].read_text().splitlines(keepends=True),
                                texts[1].read_text().splitlines(keepends=True),
                                f"policy {before[:12]} (the reference run)", f"policy {after[:12]} (this cycle)")
    return "".join(diff), f"policy {before[:12]} -> {after[:12]}"


def failing_examples(traces: pl.DataFrame, targets: list[str], implicated: list[str], n: int = 8) -> pl.DataFrame:
    """Up to `n` failing rows of the target pins (spread over them), with the implicated features."""
    columns = [c for c in (*EXAMPLE_COLUMNS[:4], *implicated, *EXAMPLE_COLUMNS[4:]) if c in traces.columns]
    failing = traces.filter(pl.col("failed") & pl.col("pin").is_in(targets)).unique("row_id", keep="first",
                                                                                       maintain_order=True)
    per_pin = max(1, n // max(1, len(targets)))
    picked = failing.group_by("pin", maintain_order=True).head(per_pin).head(n)
    return picked.select(list(dict.fromkeys(columns))).with_columns(pl.all().cast(pl.String))


def latency_note(delta: dict) -> str:
    """The candidate's p99 against the champion's, in words (median over the pins)."""
    ratios = [p["p99_after_ms"] / p["p99_before_ms"] for p in delta["pins"] if p.get("p99_before_ms")]
    if not ratios:
        return "no latency measured"
    change = sorted(ratios)[len(ratios) // 2] - 1
    worst = max(delta["pins"], key=lambda p: p["p99_after_ms"])
    return (f"p99 per decision {'rose' if change > 0 else 'fell'} {abs(change):.0%} (median over {len(ratios)} pins); "
            f"the slowest pin, {worst['pin']}, is at {worst['p99_after_ms']:.1f} ms"
            + ("; an adapter attached unmerged costs time on every decision (pin and serve it merged: "
               "InferenceSettings.merge_adapters)" if change > 0.1 else ""))


def build_review(home: Path, cycle: CycleRecord, delta: dict, diagnosis: dict, adapter: dict,
                 run_ids: dict[str, str]) -> Review:
    diff, note = policy_change(home, cycle)
    traces = pl.read_parquet(Home(home).cycle(cycle.cycle).failure_traces)
    implicated = [f["feature"] for f in diagnosis["features"] if f.get("values")]
    rows = pl.read_parquet(Home(home).dataset(cycle.cycle).rows, columns=["source", "expected", "rule"])
    data = {"rows": rows.height, "by_source": dict(rows.group_by("source").len().sort("source").iter_rows()),
            "anchored_to_champion": int(rows["rule"].str.starts_with("anchor").sum())}
    kept = {"epoch kept": adapter.get("best_epoch"), "epochs run": adapter.get("epochs_run", len(adapter.get("history", []))),
            "held-out": {k: round(v, 4) for k, v in adapter.get("heldout", {}).items()},
            "train rows": adapter.get("train_rows"), "stages": adapter.get("stages"),
            "recipe": {k: adapter["recipe"]["sft"].get(k) for k in ("learning_rate", "epochs", "batch_size", "patience")}
            | {"lora_r": adapter["recipe"]["lora"]["r"]} if "recipe" in adapter else {}}
    return Review(verdict_sentence(delta), diff, note, failing_examples(traces, delta["targets"], implicated), data, kept,
                  {asset: f"{ui_url()}/runs/{run}" for asset, run in run_ids.items() if run}, latency_note(delta),
                  delta["candidate"], delta["champion"])


APPROVE = ("The digest to approve is the SHA-256 of `bundle.dsse.json` beside this report (it signs this report, "
           "so it cannot be printed inside it): `sha256sum bundle.dsse.json`, the `sha256` of the "
           "`evidence_bundle` asset, and the Launchpad's default.")


def review_markdown(review: Review, bundle_digest: str = "", plots: Sequence[tuple[str, str]] = ()) -> str:
    """The reviewer's summary as markdown: the `evidence_bundle` asset's `summary` in the Dagster UI.

    `plots` ((title, SVG), the report's) are embedded as data-URI images: the UI's markdown view renders them,
    so the report's plots open in the UI with no server beside it.
    """
    lines = [f"**Verdict:** {review.verdict}", "",
             f"**Candidate** `{short(review.candidate)}` against champion `{short(review.champion)}`"
             + (f"; approve bundle `{bundle_digest}`" if bundle_digest else ""), "",
             f"**What changed:** {review.policy_note}"]
    if review.policy_diff:
        lines += ["", "```diff", review.policy_diff.rstrip("\n"), "```"]
    if review.examples.height:
        lines += ["", "**Failing rows (examples):**", "", to_markdown(review.examples)]
    lines += ["", f"**Training data:** {review.data['rows']} rows {json.dumps(review.data['by_source'])}, "
                  f"{review.data['anchored_to_champion']} replay rows carry the champion's decision",
              "", f"**Adapter:** {json.dumps(review.adapter, default=str)}", "", f"**Latency:** {review.latency_note}"]
    if review.runs:
        lines += ["", "**Runs:** " + ", ".join(f"[{asset}]({url})" for asset, url in review.runs.items())]
    for n, (title, svg) in enumerate(plots, start=1):
        data = base64.b64encode(svg.encode()).decode()
        lines += ["", f"**Plot {n}: {title}**", "", f"![plot {n}](data:image/svg+xml;base64,{data})"]
    return "\n".join(lines) + "\n"


def review_html(review: Review) -> str:
    """The same content as sections of the bundle's report."""
    import html

    esc = html.escape
    diff = (f"<pre>{esc(review.policy_diff)}</pre>" if review.policy_diff else "")
    table = ""
    if review.examples.height:
        head = "".join(f"<th>{esc(c)}</th>" for c in review.examples.columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>"
                       for r in review.examples.iter_rows())
        table = f"<table><tr>{head}</tr>{body}</table>"
    runs = "".join(f"<li><a href='{esc(url)}'>{esc(asset)}</a></li>" for asset, url in review.runs.items())
    return (f"<h2>What changed</h2><p>{esc(review.policy_note)}</p>{diff}"
            f"<h2>Failing rows (examples from the targets)</h2>{table or '<p>none traced</p>'}"
            f"<h2>Training data and adapter</h2><p>{review.data['rows']} rows "
            f"{esc(json.dumps(review.data['by_source']))}; {review.data['anchored_to_champion']} replay rows carry the "
            f"champion's decision.</p><pre>{esc(json.dumps(review.adapter, indent=2, default=str))}</pre>"
            f"<h2>Latency</h2><p>{esc(review.latency_note)}</p>"
            f"<h2>To approve</h2><p>{esc(APPROVE)}</p><h2>Runs</h2><ul>{runs}</ul>")
