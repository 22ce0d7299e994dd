"""Scenario stage: the active policy, the generated scenario pack, and the replayed auctions."""

import json
from pathlib import Path

import dagster as dg

from modelsmith.model_dir import file_sha256
from resources.scenarios import ScenarioSettings
from resources.storage import StorageEngine
from scenario_data.expectations import validate_features, validate_labels
from scenario_data.generator import write_pack
from scenario_data.replay import build_replay_set, segment_counts, to_markdown, write_replay_set

GROUP = "scenarios"


@dg.asset(group_name=GROUP, kinds={"yaml"})
def policy(scenarios: ScenarioSettings, storage: StorageEngine) -> dg.MaterializeResult:
    """The active ground-truth policy, validated; its identity is the SHA-256 of its canonical form."""
    active = scenarios.load_policy()
    # A copy per digest: cycles and bundles name the policy by digest long after another is activated.
    copy = storage.path("policies", f"{active.digest}.yaml")
    if not copy.exists():
        from modelsmith.atomic import write_bytes

        write_bytes(copy, Path(active.source).read_bytes())
    record = {"digest": active.digest, "name": active.name, "version": active.version, "path": str(copy),
              "activated_from": active.source, "canonical": active.canonical()}
    storage.put_json(f"policies/{active.digest}.json", record)
    storage.put_json("policies/active.json", record)
    rules = "\n".join(f"| {r.name} | {r.decision} | {'all' if r.at_least is None else f'>= {r.at_least}'} "
                      f"of {len(r.conditions)} |" for r in active.rules)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(active.digest),
        metadata={
            "sha256": active.digest,  # of the policy's canonical form: its identity
            "version": active.version,
            "path": dg.MetadataValue.path(active.source),
            "rules": dg.MetadataValue.md("| rule | decision | conditions |\n|---|---|---|\n" + rules
                                         + f"\n| (default) | {active.default} | |"),
        },
    )


@dg.asset(group_name=GROUP, deps=[policy], kinds={"json"})
def scenario_pack(scenarios: ScenarioSettings, storage: StorageEngine) -> dg.MaterializeResult:
    """The generated default scenario pack (OpenRTB 2.6 JSONL), labelled by the active policy."""
    active = scenarios.load_policy()
    path = storage.path("packs", f"default-n{scenarios.pack_size}-s{scenarios.pack_seed}-{active.digest[:12]}.jsonl")
    if not path.exists():
        write_pack(path, scenarios.pack_size, scenarios.pack_seed, active)
    digest = file_sha256(path)
    storage.put_json("packs/current.json", {"path": str(path), "sha256": digest, "policy_digest": active.digest})
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
    fingerprint = scenarios.fingerprint(storage.base())  # before reading: what this output reflects
    active = scenarios.load_policy()
    pack = storage.get_json("packs/current.json")["path"]
    replay_dir = scenarios.replay_path(storage.base())
    replay = build_replay_set([Path(pack), replay_dir], active, scenarios.domain_map())
    labelled_path, quarantine_path = write_replay_set(replay, storage.path("replayed_auctions", "summary.json").parent)
    summary = replay.ingest.summary()
    storage.put_json("replayed_auctions/summary.json", {**summary, "policy_digest": active.digest,
                                                        "files": replay.ingest.files})
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
            "segments": dg.MetadataValue.md(to_markdown(segment_counts(replay.labelled))),
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
