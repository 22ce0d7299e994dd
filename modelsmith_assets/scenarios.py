"""Scenario stage: the active policy, the generated scenario pack, and the replayed auctions."""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from modelsmith.model_dir import file_sha256
from modelsmith.store import read_json, write_json
from modelsmith_assets.tables import frame_table
from resources.scenarios import ScenarioSettings
from resources.storage import StorageEngine
from scenario_data.expectations import validate_features, validate_labels
from scenario_data.generator import write_pack
from scenario_data.replay import build_replay_set, segment_counts, write_replay_set

GROUP = "scenarios"


@dg.asset(group_name=GROUP, kinds={"yaml"})
def policy(scenarios: ScenarioSettings, storage: StorageEngine) -> dg.MaterializeResult:
    """The active ground-truth policy, validated; its identity is the SHA-256 of its canonical form."""
    active = scenarios.load_policy(storage.base())
    # A copy per digest: cycles and bundles name the policy by digest long after another is activated.
    home = storage.home()
    copy = home.policy_copy(active.digest)
    if not copy.exists():
        from modelsmith.atomic import write_bytes

        write_bytes(copy, Path(active.source).read_bytes())
    record = {"digest": active.digest, "name": active.name, "version": active.version, "path": str(copy),
              "activated_from": active.source, "canonical": active.canonical()}
    write_json(home.policy_record(active.digest), record)
    write_json(home.active_policy_record, record)
    rules = pl.DataFrame(
        [{"rule": r.name, "decision": r.decision,
          "conditions": f"{'all' if r.at_least is None else f'>= {r.at_least}'} of {len(r.conditions)}"}
         for r in active.rules] + [{"rule": "(default)", "decision": active.default, "conditions": ""}],
        schema={"rule": pl.String, "decision": pl.String, "conditions": pl.String})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(active.digest),
        metadata={
            "sha256": active.digest,  # of the policy's canonical form: its identity
            "version": active.version,
            "path": dg.MetadataValue.path(active.source),
            "rules": frame_table(rules),
        },
    )


@dg.asset(group_name=GROUP, deps=[policy], kinds={"json"})
def scenario_pack(scenarios: ScenarioSettings, storage: StorageEngine) -> dg.MaterializeResult:
    """The generated default scenario pack (OpenRTB 2.6 JSONL), labelled by the active policy."""
    active = scenarios.load_policy(storage.base())
    home = storage.home()
    path = home.pack(scenarios.pack_size, scenarios.pack_seed, active.digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pack(path, scenarios.pack_size, scenarios.pack_seed, active)
    digest = file_sha256(path)
    write_json(home.pack_record, {"path": str(path), "sha256": digest, "policy_digest": active.digest})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest),
        metadata={"path": dg.MetadataValue.path(str(path)), "sha256": digest, "requests": scenarios.pack_size,
                  "seed": scenarios.pack_seed, "policy_digest": active.digest},
    )


@dg.asset(
    group_name=GROUP,
    deps=[policy, scenario_pack],
    kinds={"polars", "parquet"},
    check_specs=[
        dg.AssetCheckSpec("requests_balance", asset="replayed_auctions",
                          description="requests_in = accepted + quarantined: nothing dropped silently"),
        dg.AssetCheckSpec("feature_table_expectations", asset="replayed_auctions",
                          description="Great Expectations suite on the feature table"),
        dg.AssetCheckSpec("label_expectations", asset="replayed_auctions",
                          description="Great Expectations suite on the labels (enumeration, distribution)"),
    ],
)
def replayed_auctions(context: dg.AssetExecutionContext, scenarios: ScenarioSettings, storage: StorageEngine):
    """Every decision row to replay: the generated pack plus real files in the replay directory, labelled."""
    home = storage.home()
    fingerprint = scenarios.fingerprint(home.root)  # before reading: what this output reflects
    active = scenarios.load_policy(storage.base())
    pack = read_json(home.pack_record)["path"]
    replay_dir = scenarios.replay_path(home.root)
    replay = build_replay_set([Path(pack), replay_dir], active, scenarios.domain_map())
    labelled_path, quarantine_path = home.labelled_auctions, home.replay_quarantine
    write_replay_set(replay, labelled_path, quarantine_path)
    summary = replay.ingest.summary()
    write_json(home.replay_summary, {**summary, "policy_digest": active.digest, "files": replay.ingest.files})
    digest = file_sha256(labelled_path)
    context.log.info(f"replayed auctions: {json.dumps(summary)}")
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(digest),
        metadata={
            "dagster/row_count": replay.labelled.height,
            **summary,
            "policy_digest": active.digest,
            "scenario_fingerprint": fingerprint,
            "sha256": digest,
            "path": dg.MetadataValue.path(str(labelled_path)),
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
            "segments": frame_table(segment_counts(replay.labelled)),
        },
    )
    balanced = summary["requests_in"] == summary["accepted"] + summary["quarantined"]
    yield dg.AssetCheckResult(check_name="requests_balance", passed=balanced, metadata=summary)
    features = validate_features(replay.ingest.features)
    yield dg.AssetCheckResult(check_name="feature_table_expectations", passed=features.success,
                              metadata={"result": dg.MetadataValue.md(features.to_markdown())})
    labels = validate_labels(replay.labelled)
    yield dg.AssetCheckResult(check_name="label_expectations", passed=labels.success,
                              metadata={"result": dg.MetadataValue.md(labels.to_markdown())})


scenario_assets = [policy, scenario_pack, replayed_auctions]
materialize_scenarios_job = dg.define_asset_job("materialize_scenarios_job", selection=dg.AssetSelection.groups(GROUP))

defs = dg.Definitions(assets=scenario_assets, jobs=[materialize_scenarios_job])
