"""Targeted synthetic data: rows in the failing segment plus a replay buffer of the others.

Rows come from the scenario generator (its own seed stream, never the pins' pack seed), are
labelled by the active policy, and are split by the diagnosis's filters: `target` rows match them,
`replay` rows do not (so the other segments are not forgotten), and `contrast` rows are replay rows
with the diagnosis's implicated values (near misses: the same layout outside the segment). When the
filters narrow a segment to a cause (`spec.segment`), `near_miss` rows are the segment's own rows
without the cause (in-segment near misses, labelled by the policy). No row may be a pin scenario: a
row is dropped when its request id or its content (the feature row without identity columns) is
among the pin scenarios', and `check_disjoint` proves it afterwards.
"""

import hashlib
import json
from dataclasses import dataclass

import polars as pl

from modelsmith.diagnosis import SynthesisSpec
from modelsmith.prompt import PROMPT_FEATURES, Bucketed
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import Policy, _parse_conditions

IDENTITY_COLUMNS = ("row_id", "request_id", "imp_id", "source_file", "source_line")
LABEL_COLUMNS = ("expected", "rule", "policy_digest", "champion")
SOURCES = ("target", "replay", "contrast", "near_miss", "validation")


class SynthesisError(RuntimeError):
    """The generator could not produce what the spec asks within the request budget."""


@dataclass(frozen=True)
class SynthesisResult:
    rows: pl.DataFrame  # labelled rows, `source` in SOURCES, `content_digest`
    requests_generated: int
    excluded_by_id: int
    excluded_by_content: int


def filter_expr(filters: dict[str, dict]) -> pl.Expr:
    """The spec's filters (policy grammar) as one polars expression."""
    exprs = []
    for feature, spec in filters.items():
        for cond in _parse_conditions(feature, spec, "<diagnosis>", 0, "synthesis.filters"):
            exprs.append(cond.expr())
    return pl.all_horizontal(exprs) if exprs else pl.lit(True)


def content_digests(rows: pl.DataFrame) -> pl.Series:
    """SHA-256 of each row's features (identity and label columns left out): what makes two rows the same auction."""
    cols = sorted(c for c in rows.columns if c not in IDENTITY_COLUMNS + LABEL_COLUMNS + ("source", "content_digest"))
    return pl.Series("content_digest", [
        hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest()
        for r in rows.select(cols).iter_rows(named=True)], dtype=pl.String)


def prompt_value(feature, value: str) -> str:
    """A critic's value for a prompt feature in the prompt's own form: 'True' -> '1', 0.35 -> '0.3-0.4'.

    Critics name values as they see them (the statistical critic in prompt buckets, Claude as raw
    values such as 'True' or 'Video Gaming'); both mean the same rows.
    """
    text = str(value).strip()
    if isinstance(feature, Bucketed):
        try:
            return feature.word(float(text)).split("=", 1)[1]
        except ValueError:
            return text  # already a bucket label such as '0.3-0.4'
    if text.lower() in ("true", "false") and f"{feature.key}=1" in feature.vocabulary():
        return "1" if text.lower() == "true" else "0"
    return text.replace(" ", "_")


def implicated_mask(rows: pl.DataFrame, implicated: dict[str, tuple[str, ...]]) -> pl.Series:
    """Rows whose prompt value (bucket) of every implicated feature is one of the implicated values."""
    features = [f for f in PROMPT_FEATURES if implicated.get(f.column)]
    if not features:
        return pl.Series([False] * rows.height, dtype=pl.Boolean)
    wanted = {f.column: {prompt_value(f, v) for v in implicated[f.column]} for f in features}
    return pl.Series([
        all(f.word(r[f.column]).split("=", 1)[1] in wanted[f.column] for f in features)
        for r in rows.select([f.column for f in features]).iter_rows(named=True)], dtype=pl.Boolean)


def synthesise(spec: SynthesisSpec, policy: Policy, seed: int, pin_scenarios: pl.DataFrame,
               implicated: dict[str, tuple[str, ...]] | None = None,
               batch_requests: int = 5_000, max_requests: int = 400_000) -> SynthesisResult:
    """Generate until `spec.rows` target rows and `spec.rows * replay_ratio` replay rows are found.

    With `implicated` values (the diagnosis's findings) and `spec.contrast_share` > 0, that share of
    the replay rows are near misses: outside the segment, with the implicated values. With a
    `spec.segment` that the filters narrow, `spec.rows * contrast_share` more rows are in-segment near
    misses (`near_miss`: the segment without the cause), taken out of the replay rows' count.
    """
    want_target = spec.rows
    want_all_replay = int(round(spec.rows * spec.replay_ratio))
    want_contrast = int(round(want_all_replay * spec.contrast_share)) if implicated else 0
    want_near = int(round(spec.rows * spec.contrast_share)) if spec.segment else 0
    want_near = min(want_near, want_all_replay - want_contrast)
    want_replay = want_all_replay - want_contrast - want_near
    pin_ids = pin_scenarios["request_id"].unique()
    pin_content = content_digests(pin_scenarios).unique()
    match = filter_expr(spec.filters)
    in_segment = filter_expr(spec.segment) if spec.segment else pl.lit(False)
    target, replay, contrast, near_misses = [], [], [], []
    have_target = have_replay = have_contrast = have_near = generated = by_id = by_content = 0
    index = 0
    seen = pl.Series("content_digest", [], dtype=pl.String)  # a Series: `is_in` on it stays fast as it grows
    while (have_target < want_target or have_replay < want_replay or have_contrast < want_contrast
           or have_near < want_near):
        if generated >= max_requests:
            raise SynthesisError(f"after {generated} generated requests: {have_target} of {want_target} target rows "
                                 f"matching {spec.filters}, {have_contrast} of {want_contrast} near misses with "
                                 f"{implicated}, {have_near} of {want_near} in-segment near misses in {spec.segment}; "
                                 "the filters may select rows the generator rarely makes")
        requests = generate_requests(batch_requests, seed * 1_000_003 + index)
        index += 1
        generated += len(requests)
        rows = label_requests(requests, policy)
        rows = rows.with_columns(content_digests(rows))
        clash_id = rows["request_id"].is_in(pin_ids)
        clash_content = rows["content_digest"].is_in(pin_content)
        by_id += int(clash_id.sum())
        by_content += int((clash_content & ~clash_id).sum())
        rows = _fresh(rows, pin_ids, pin_content, seen)
        seen = pl.concat([seen, rows["content_digest"]])
        hit = rows.filter(match).head(want_target - have_target)
        outside = rows.filter(~match)
        inside = outside.filter(in_segment).head(want_near - have_near)  # the segment without the cause
        outside = outside.filter(~pl.col("content_digest").is_in(inside["content_digest"]))
        near = outside.filter(implicated_mask(outside, implicated or {})) if want_contrast else outside.clear()
        near = near.head(want_contrast - have_contrast)
        miss = outside.filter(~pl.col("content_digest").is_in(near["content_digest"])).head(want_replay - have_replay)
        target.append(hit.with_columns(pl.lit("target").alias("source")))
        replay.append(miss.with_columns(pl.lit("replay").alias("source")))
        contrast.append(near.with_columns(pl.lit("contrast").alias("source")))
        near_misses.append(inside.with_columns(pl.lit("near_miss").alias("source")))
        have_target += hit.height
        have_replay += miss.height
        have_contrast += near.height
        have_near += inside.height
    rows = pl.concat(target + contrast + near_misses + replay)
    return SynthesisResult(rows, generated, by_id, by_content)


def _fresh(rows: pl.DataFrame, known_ids: pl.Series, known_content: pl.Series, seen: pl.Series) -> pl.DataFrame:
    """`rows` (with `content_digest`) less known request ids and contents, each auction once, none already seen
    (two imps of one request can be the same auction)."""
    rows = rows.filter(~pl.col("request_id").is_in(known_ids) & ~pl.col("content_digest").is_in(known_content))
    return rows.unique("content_digest", keep="first", maintain_order=True).filter(~pl.col("content_digest").is_in(seen))


def validation_pack(policy: Policy, seed: int, rows: int, exclude: pl.DataFrame, pin_scenarios: pl.DataFrame,
                    batch_requests: int = 5_000) -> pl.DataFrame:
    """`rows` fresh rows drawn like the pinned pack (source `validation`), labelled by the policy.

    The adapter's epoch is chosen on them with the pins' own tests (`modelsmith.validation`), so
    collateral on a large segment shows there as it would on the pins, without the pins being seen.
    They come from their own generator stream; none is a pin scenario or a row of `exclude` (the
    training rows), by request id or by content.
    """
    stream = int(hashlib.sha256(f"validation:{seed}".encode()).hexdigest()[:8], 16)
    known_ids = pl.concat([pin_scenarios["request_id"], exclude["request_id"]]).unique()
    known_content = pl.concat([content_digests(pin_scenarios), exclude["content_digest"]])
    seen = pl.Series("content_digest", [], dtype=pl.String)
    parts, have, index = [], 0, 0
    while have < rows:
        batch = label_requests(generate_requests(batch_requests, stream * 1_000_003 + index), policy)
        index += 1
        batch = _fresh(batch.with_columns(content_digests(batch)), known_ids, known_content, seen).head(rows - have)
        seen = pl.concat([seen, batch["content_digest"]])
        parts.append(batch.with_columns(pl.lit("validation").alias("source")))
        have += batch.height
    return pl.concat(parts)


ANCHOR_RULE = "anchor: the champion's decision"


def anchor_to_champion(rows: pl.DataFrame, champion_decisions: list[str]) -> pl.DataFrame:
    """Replay rows learn the champion's own decision; target rows and near misses (both kinds) keep the policy's.

    Outside the regressed segments a repair must keep what the champion does, including the few rows
    it gets wrong there: they are not what this cycle repairs, and no pin asked for them (policy
    labels there, about 3 % of fresh replay rows, taught adapters to change small segments). Near
    misses are the exception: they share the cause's values outside its segments and exist to teach
    where the change applies and where it does not, which only the policy knows (a threshold that
    moved in every vertical applies in segments too small to have regressed; anchored to the
    champion, their near misses taught the old rule). `rule` says which rows were anchored;
    `policy_digest` stays the policy the other rows were labelled by. `champion` keeps the champion's
    decision on every row: on the validation rows it is the reference a candidate epoch is judged against.
    """
    if len(champion_decisions) != rows.height:
        raise ValueError(f"{len(champion_decisions)} champion decisions for {rows.height} rows")
    replay = pl.col("source") == "replay"
    decided = pl.Series("champion", champion_decisions, dtype=pl.String)
    return rows.with_columns(pl.when(replay).then(decided).otherwise(pl.col("expected")).alias("expected"),
                             pl.when(replay).then(pl.lit(ANCHOR_RULE)).otherwise(pl.col("rule")).alias("rule"),
                             decided.alias("champion"))


def synthesis_seed(policy_digest: str, diagnosis) -> int:
    """The generator seed of a cycle's dataset: a function of what is asked (policy, spec, implicated values).

    Not of the cycle id or the critic's provenance, so the same regression diagnosed the same way
    gets the same rows, and (training being seeded) the same adapter.
    """
    asked = {"policy": policy_digest, "synthesis": {"filters": diagnosis.synthesis.filters, "rows": diagnosis.synthesis.rows,
                                                    "replay_ratio": diagnosis.synthesis.replay_ratio,
                                                    "contrast_share": diagnosis.synthesis.contrast_share,
                                                    **({"segment": diagnosis.synthesis.segment}
                                                       if diagnosis.synthesis.segment else {})},
             "implicated": sorted((f.feature, sorted(f.values)) for f in diagnosis.features if f.values)}
    return int(hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()[:8], 16)


def check_disjoint(rows: pl.DataFrame, pin_scenarios: pl.DataFrame) -> dict[str, int]:
    """How many training rows share a request id or content with a pin scenario (both must be 0)."""
    same_id = rows["request_id"].is_in(pin_scenarios["request_id"].to_list()).sum()
    same_content = rows["content_digest"].is_in(content_digests(pin_scenarios).to_list()).sum()
    return {"same_request_id": int(same_id), "same_content": int(same_content)}
