"""The repair chain, partitioned by repair cycle: traces, diagnosis, synthetic data, adapter, candidate pins, delta.

A cycle is opened (a `repair_cycles` partition plus `HOME/cycles/<cycle>/cycle.json`) for a
regression report of the champion with at least one regressed pin; `modelsmith.cycles.open_cycle`
does it, for the CLI now and for the pin-regression sensor later. Every asset reads the previous
link's files under `HOME/cycles/<cycle>/`, so a cycle's artifacts are addressable and each link
can be re-run on its own from the UI. The pins come from the `pins` resource (`resources.pins`): the
file whose pins are `pin_results`' checks.
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from modelsmith.cycles import CYCLES, CycleRecord, read_cycle
from modelsmith.atomic import write_with
from modelsmith.critics import CriticInput
from modelsmith.delta import benchmark_delta_for, blocking_pins, verdict_sentence
from modelsmith.review import build_review, review_markdown
from modelsmith.diagnosis import diagnosis_from_dict
from modelsmith.evaluate import failing_first
from modelsmith.labels import cycle_label, version_label
from modelsmith.model_card import adapter_card, write_card
from modelsmith.model_dir import Registry, directory_digest, file_sha256
from modelsmith.pin_runs import labelled_auctions, pin_version
from modelsmith.store import Home, PinRunFiles, read_json, write_json
from modelsmith.synthesis import anchor_to_champion, check_disjoint, synthesis_seed, synthesise, validation_pack
from modelsmith.traces import ATTR_PREFIX, failure_traces as traced_failures
from modelsmith_assets.executors import gpu_step_tags
from modelsmith_assets.pin_metadata import pin_checks, pin_results_metadata, regression_report_metadata
from modelsmith_assets.tables import frame_table, pins_table
from resources.critic import CriticSettings
from resources.inference import InferenceSettings
from resources.pins import PinSettings
from resources.signer import SignerSettings
from resources.storage import StorageEngine
from resources.trainer import TrainerSettings

GROUP = "repair"
repair_cycles = dg.DynamicPartitionsDefinition(name=CYCLES)


def _policy_of_cycle(home: Home, cycle: CycleRecord):
    """The policy the regression was found under (the `policy` asset records each one by digest)."""
    from scenario_data.policy import load_policy

    digest = cycle.policy_digest
    record = read_json(home.policy_record(digest))
    policy = load_policy(record["path"])
    if policy.digest != digest:
        raise ValueError(f"policy file {record['path']} changed since the cycle opened: digest {policy.digest[:12]}, "
                         f"the cycle's labels were made by {digest[:12]}")
    return policy


# Every cycle reads one version's regression report; Dagster cannot map a cycle to that version's
# partition statically, so the edge (shown in the lineage graph) maps to all of them.
@dg.asset(group_name=GROUP, partitions_def=repair_cycles, kinds={"parquet"},
          deps=[dg.AssetDep("regression_report", partition_mapping=dg.AllPartitionMapping())])
def failure_traces(context: dg.AssetExecutionContext, storage: StorageEngine, inference: InferenceSettings,
                   pins: PinSettings) -> dg.MaterializeResult:
    """The rows the champion failed in the regressed pins, with leave-one-feature-out attributions."""
    home = storage.home()
    cycle = read_cycle(home.root, context.partition_key)
    registry = Registry(home.root)
    version = registry.get(cycle.model_version)
    predictions = pl.read_parquet(PinRunFiles(Path(cycle.run_dir)).predictions)
    engine = inference.load_version(version, registry)
    traces = traced_failures(engine, predictions, pins.load(), cycle.regressed)
    path = home.cycle(context.partition_key).failure_traces
    write_with(path, lambda tmp: traces.write_parquet(tmp))
    failing = traces.filter(pl.col("failed"))
    attr = pl.DataFrame({"feature": [c.removeprefix(ATTR_PREFIX) for c in failing.columns if c.startswith(ATTR_PREFIX)],
                         "mean_attribution": [float(failing[c].mean() or 0.0) for c in failing.columns
                                              if c.startswith(ATTR_PREFIX)]}).sort("mean_attribution", descending=True)
    sha256 = file_sha256(path)
    return dg.MaterializeResult(data_version=dg.DataVersion(sha256), metadata={
        "cycle_label": cycle_label(cycle), "sha256": sha256,
        "dagster/row_count": traces.height, "failing_rows": failing.height,
        "contrast_rows": traces.height - failing.height, "pins": ", ".join(cycle.regressed),
        "model_version": version.digest, "path": dg.MetadataValue.path(str(path)),
        "attributions": frame_table(attr.head(10)),
    })

@dg.asset(group_name=GROUP, partitions_def=repair_cycles, deps=[failure_traces], kinds={"json"})
def diagnosis(context: dg.AssetExecutionContext, storage: StorageEngine, critic: CriticSettings,
              pins: PinSettings) -> dg.MaterializeResult:
    """The critic's typed diagnosis: segments, features, hypothesis, synthesis spec, recipe, provenance."""
    home, key = storage.home(), context.partition_key
    cycle = read_cycle(home.root, key)
    traces = pl.read_parquet(home.cycle(key).failure_traces)
    by_name = {p.name: p for p in pins.load().pins}
    inp = CriticInput(cycle=key, model_version=cycle.model_version, policy_digest=cycle.policy_digest,
                      regressed=cycle.report, traces=traces,
                      pin_filters={n: {c.feature: {c.op: c.value} for c in by_name[n].where} for n in cycle.regressed})
    result = critic.build().diagnose(inp)
    path = write_json(home.cycle(key).diagnosis, {**result.as_dict(), "digest": result.digest})
    if result.provenance.fallback:
        context.log.warning(f"critic fallback: {result.provenance.fallback}")
    features = pl.DataFrame([{"feature": f.feature, "values": ", ".join(f.values), "error_lift": f.error_lift,
                              "attribution": f.attribution} for f in result.features])
    return dg.MaterializeResult(data_version=dg.DataVersion(result.digest), metadata={
        "cycle_label": cycle_label(cycle), "sha256": result.digest,
        "hypothesis": result.hypothesis, "segments": ", ".join(result.segments), "confidence": result.confidence,
        "critic": result.provenance.critic, "critic_model": result.provenance.model,
        "fallback": result.provenance.fallback or "none", "recipe": " then ".join(result.recipe.stages),
        "synthesis": json.dumps({"filters": result.synthesis.filters, "rows": result.synthesis.rows,
                                 "replay_ratio": result.synthesis.replay_ratio}),
        "features": frame_table(features),
        "path": dg.MetadataValue.path(str(path)),
    })

@dg.asset(
    group_name=GROUP, partitions_def=repair_cycles, deps=[diagnosis], kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec("training_data_expectations", asset="synthetic_dataset", blocking=True,
                          description="Great Expectations suite on the training rows: bad data never reaches a trainer"),
        dg.AssetCheckSpec("disjoint_from_pins", asset="synthetic_dataset", blocking=True,
                          description="No training row is a pin scenario, by request id or by content"),
    ],
)
def synthetic_dataset(context: dg.AssetExecutionContext, storage: StorageEngine, signer: SignerSettings,
                      inference: InferenceSettings):
    """Targeted rows labelled by the policy, plus replay anchored to the champion and near misses; a validation
    pack (never trained on) that chooses the adapter's epoch; the champion's decision on every row; signed lineage."""
    from modelsmith.lineage import build_lineage, write_lineage
    from scenario_data.expectations import validate_training_rows

    home, key = storage.home(), context.partition_key
    cycle = read_cycle(home.root, key)
    diag = diagnosis_from_dict(read_json(home.cycle(key).diagnosis))
    policy = _policy_of_cycle(home, cycle)
    pin_scenarios, _ = labelled_auctions(home.root)
    seed = synthesis_seed(policy.digest, diag)
    implicated = {f.feature: f.values for f in diag.features if f.values}
    result = synthesise(diag.synthesis, policy, seed, pin_scenarios, implicated)
    validation = validation_pack(policy, seed, pin_scenarios.height, result.rows, pin_scenarios)
    generated = pl.concat([result.rows, validation], how="diagonal_relaxed")
    registry = Registry(home.root)
    champion = inference.load_version(registry.get(cycle.model_version), registry)
    rows = anchor_to_champion(generated, champion.decide(generated).decision)
    moved = int(((rows["expected"] != generated["expected"])).sum())
    context.log.info(f"{moved} of {int((rows['source'] == 'replay').sum())} replay rows take the "
                     "champion's decision over the policy's")
    out = home.dataset(key)
    write_with(out.rows, lambda tmp: rows.write_parquet(tmp))
    lineage = build_lineage(rows.to_dicts(), policy_digest=policy.digest, generator_seed=seed,
                            diagnosis_digest=diag.digest, cycle=key, signer=signer.signer())
    write_lineage(out.dir, rows.to_dicts(), lineage)
    counts = rows.group_by("source").len()
    sha256 = file_sha256(out.rows)
    yield dg.MaterializeResult(data_version=dg.DataVersion(sha256), metadata={
        "cycle_label": cycle_label(cycle), "sha256": sha256,
        "dagster/row_count": rows.height, "target_rows": int((rows["source"] == "target").sum()),
        "replay_rows": int((rows["source"] == "replay").sum()),
        "contrast_rows": int((rows["source"] == "contrast").sum()),
        "near_miss_rows": int((rows["source"] == "near_miss").sum()),
        "validation_rows": int((rows["source"] == "validation").sum()), "requests_generated": result.requests_generated,
        "excluded_by_request_id": result.excluded_by_id, "excluded_by_content": result.excluded_by_content,
        "anchored_rows_unlike_policy": moved,
        "policy_digest": policy.digest, "generator_seed": seed, "merkle_root": lineage.root,
        "signed_by": lineage.key_id, "path": dg.MetadataValue.path(str(out.rows)),
        "sources": frame_table(counts.sort("source")),
    })
    suite = validate_training_rows(rows)
    yield dg.AssetCheckResult(check_name="training_data_expectations", passed=suite.success,
                              metadata={"result": dg.MetadataValue.md(suite.to_markdown())})
    overlap = check_disjoint(rows, pin_scenarios)
    yield dg.AssetCheckResult(check_name="disjoint_from_pins", passed=not any(overlap.values()), metadata=overlap)

# pool "training": the production instance limits it to one run at a time (dagster.yaml.example).
@dg.asset(group_name=GROUP, partitions_def=repair_cycles, deps=[synthetic_dataset], kinds={"pytorch", "safetensors"},
          pool="training", op_tags=gpu_step_tags())
def adapter(context: dg.AssetExecutionContext, storage: StorageEngine, trainer: TrainerSettings,
            signer: SignerSettings, pins: PinSettings) -> dg.MaterializeResult:
    """A LoRA adapter (peft, trained with trl's SFT trainer) on the champion's base, registered as a model
    version and signed in the OpenSSF model-signing format (`model.sig`), which any model-signing tool verifies."""
    import os
    import shutil

    from modelsmith.adapter_training import train_adapter
    from modelsmith.model_dir import short

    home, key = storage.home(), context.partition_key
    cycle = read_cycle(home.root, key)
    registry = Registry(home.root)
    champion = registry.get(cycle.model_version)
    base = registry.get(champion.base) if champion.kind == "adapter" else champion
    diag = diagnosis_from_dict(read_json(home.cycle(key).diagnosis))
    rows = pl.read_parquet(home.dataset(key).rows)
    work = home.adapter_work(key)
    about = {"cycle": key, "base_digest": base.digest,
             "dataset_digest": f"sha256:{file_sha256(home.dataset(key).rows)}",
             "policy_digest": cycle.policy_digest, "hypothesis": diag.hypothesis,
             "sources": dict(rows.group_by("source").len().iter_rows())}
    signing_key = signer.model_signing_key()
    summary = train_adapter(base.path, rows, work, trainer.recipe(diag.recipe.stages), log=context.log.info,
                            about=about, sign=signing_key.sign, pins=pins.load())
    final = home.adapters / short(summary["digest"])
    if final.is_dir() and directory_digest(final) == summary["digest"]:
        shutil.rmtree(work)  # a re-run trained the same bytes: keep the published copy (it may be the champion)
    else:
        if final.exists():  # a damaged copy under this digest's name: set it aside, publish, then delete
            aside = final.with_name(f".{final.name}.replaced")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
            os.replace(work, final)
            shutil.rmtree(aside)
        else:
            os.replace(work, final)
    signature = signing_key.ensure_signed(final)  # the kept copy may predate signing
    version = registry.register(final, "adapter", base=base.digest, digest=summary["digest"])
    context.instance.add_dynamic_partitions("model_versions", [version.key])
    write_json(home.cycle(key).adapter, {**summary, "model_version": version.digest, "path": str(final),
                                         "about": about, "model_signature": signature.as_json()})
    history = pl.DataFrame(summary["history"])
    return dg.MaterializeResult(data_version=dg.DataVersion(version.digest), metadata={
        "cycle_label": cycle_label(cycle), "sha256": version.digest,
        "model_version": version.digest, "partition_key": version.key, "base_digest": base.digest,
        "stages_run": ", ".join(summary["stages"]), "stages_requested": ", ".join(summary["requested_stages"]),
        "grpo": json.dumps(summary["grpo"]) if summary["grpo"] else "not requested",
        "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
        "heldout_target_accuracy": summary["heldout"].get("target", 0.0),
        "heldout_others_accuracy": summary["heldout"]["others"],
        "train_rows": summary["train_rows"], "path": dg.MetadataValue.path(str(final)),
        "model_signature": dg.MetadataValue.path(signature.signature),
        "model_signing_public_key": dg.MetadataValue.path(signature.public_key),
        "model_signing_key_id": signature.key_id,
        "epochs": frame_table(history),
        **_validation_metadata(summary["validation"]),
    })


def _validation_metadata(validation: dict | None) -> dict:
    """What the validation pack said of the epochs tried on it (none without a pack or pins)."""
    if not validation:
        return {"validation": "no validation pack: the epoch was chosen on the held-out rows alone"}
    tried = pl.DataFrame([{"epoch": t["epoch"], "holds": t["holds"], "worst_upper": t["worst_upper"],
                           "failing": "; ".join(t["failing"])} for t in validation["tried"]])
    return {"validation_rows": validation["rows"], "validation_chosen_epoch": validation["chosen_epoch"],
            "validation_holds": validation["holds"], "validation_tried": frame_table(tried)}

@dg.asset(group_name=GROUP, partitions_def=repair_cycles, deps=[adapter], kinds={"parquet"},
          op_tags=gpu_step_tags())
def candidate_pins(context: dg.AssetExecutionContext, storage: StorageEngine, inference: InferenceSettings,
                   pins: PinSettings) -> dg.MaterializeResult:
    """The candidate (base + adapter) pinned on every segment, paired against the champion on the same rows.

    This pin run is also the adapter version's `pin_results` (and `regression_report`) partition, recorded
    here with a pin job's metadata, so no `model_versions` partition stays Missing, and with its checks: the
    `pin_*` checks are not partitioned and the UI shows the checks of the latest materialisation, which
    is this one (each names its partition; without them every check read "Not Evaluated").
    """
    home, key = storage.home(), context.partition_key
    pinset, registry = pins.load(), Registry(home.root)
    version = registry.get(read_json(home.cycle(key).adapter)["model_version"])
    run, run_dir, reference_name = pin_version(home.root, pinset, version,
                                               lambda v: inference.load_version(v, registry))
    write_json(home.cycle(key).candidate_pins, {"run_dir": str(run_dir), "pins_digest": pinset.digest,
                                                **run.summary()})
    label = version_label(home.root, version)
    by = {"pinned_by": f"candidate_pins[{key}]"}
    pinned = pin_results_metadata(run, version, run_dir, reference_name, label)
    context.log_event(dg.AssetMaterialization("pin_results", partition=version.key, metadata={**pinned, **by},
                                              tags={"dagster/data_version": pinned["sha256"]}))
    for check in pin_checks(run.results, version.key):  # in this run: the UI counts them as the latest's
        context.log_event(dg.AssetCheckEvaluation(asset_key=dg.AssetKey("pin_results"), partition=version.key,
                                                  **check))
    reported = regression_report_metadata(context.instance, storage, pinset, version, label)
    context.log_event(dg.AssetMaterialization("regression_report", partition=version.key,
                                              metadata={**reported, **by},
                                              tags={"dagster/data_version": reported["sha256"]}))
    return dg.MaterializeResult(data_version=dg.DataVersion(pinned["sha256"]), metadata={
        "cycle_label": cycle_label(read_cycle(home.root, key)), "model_version": version.digest,
        "path": pinned["path"], "sha256": pinned["sha256"], "dagster/row_count": run.predictions.height,
        "partition_key": version.key, "label": label,
        "composite": run.composite, "passed": run.passed, "reference": reference_name,
        "failed": ", ".join(run.summary()["failed"]) or "none",
        "regressed": ", ".join(run.summary()["regressed"]) or "none",
        "pins": pins_table(failing_first(run.results)),
    })

@dg.asset(group_name=GROUP, partitions_def=repair_cycles, deps=[candidate_pins], kinds={"json"})
def benchmark_delta(context: dg.AssetExecutionContext, storage: StorageEngine) -> dg.MaterializeResult:
    """Before (champion) vs after (candidate) per pin; whether the cycle offers the candidate for promotion."""
    files = storage.home().cycle(context.partition_key)
    cycle = read_cycle(storage.base(), context.partition_key)
    after = read_json(files.candidate_pins)["run_dir"]
    delta = benchmark_delta_for(cycle.run_dir, after, cycle.regressed)
    path = files.delta_table
    frame = pl.DataFrame(delta["pins"])
    write_with(path, lambda tmp: frame.write_parquet(tmp))
    write_json(files.delta, delta)
    adapter_info = read_json(files.adapter)
    if "about" in adapter_info:  # the card gains the pins before and after (the card is not in the digest)
        write_card(Path(adapter_info["path"]), adapter_card(adapter_info, adapter_info["about"], delta))
    shown = frame.select("pin", "rows", "before", "after", "delta", "p_adjusted", "p99_before_ms", "p99_after_ms",
                         "status", "notes")
    sha256 = file_sha256(path)
    return dg.MaterializeResult(data_version=dg.DataVersion(sha256), metadata={
        "cycle_label": cycle_label(cycle), "sha256": sha256, "dagster/row_count": frame.height,
        "offer_for_promotion": delta["offer_for_promotion"], "repaired": ", ".join(delta["repaired"]) or "none",
        "not_repaired": ", ".join(delta["not_repaired"]) or "none",
        "flagged": ", ".join(delta["flagged"]) or "none",
        "inconclusive": ", ".join(delta["inconclusive"]) or "none",
        "composite_before": delta["composite_before"], "composite_after": delta["composite_after"],
        "path": dg.MetadataValue.path(str(path)),
        "delta": frame_table(shown.sort("delta")),
    })

candidate_offered_check = dg.AssetCheckSpec(
    "candidate_offered", asset="evidence_bundle", blocking=True,
    description="The cycle offers its candidate: every target repaired, no other pin flagged. Fails (and fails "
                "the run) on a refusal, listing each blocking pin with its numbers and reasons.")

@dg.asset(group_name=GROUP, partitions_def=repair_cycles, deps=[benchmark_delta], kinds={"json"},
          check_specs=[candidate_offered_check])
def evidence_bundle(context: dg.AssetExecutionContext, storage: StorageEngine, signer: SignerSettings):
    """The signed evidence a reviewer approves: traces, diagnosis, lineage, delta, integrity, report, attestations."""
    from modelsmith.evidence import assemble

    home, key = storage.home(), context.partition_key
    files = home.cycle(key)
    run_ids = {}
    for name in ("failure_traces", "diagnosis", "synthetic_dataset", "adapter", "candidate_pins", "benchmark_delta"):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[key]), limit=1).records
        run_ids[name] = records[0].run_id if records else ""
    run_ids["evidence_bundle"] = context.run.run_id
    cycle = read_cycle(home.root, key)
    info, plots = assemble(home.root, key, run_ids, cycle.opened, signer.signer())
    from datetime import UTC, datetime

    cycle_time = (datetime.now(UTC) - datetime.fromisoformat(cycle.opened)).total_seconds()
    delta = read_json(files.delta)
    shown = pl.DataFrame(delta["pins"]).select("pin", "before", "after", "delta", "p_value", "status")
    verdict = verdict_sentence(delta)
    review = build_review(home.root, cycle, delta, read_json(files.diagnosis), read_json(files.adapter), run_ids)
    # `sha256` is the bundle digest: the SHA-256 of bundle.dsse.json, which the Launchpad's bundle_digest names.
    yield dg.MaterializeResult(data_version=dg.DataVersion(info.digest), metadata={
        "cycle_label": cycle_label(cycle),
        "summary": dg.MetadataValue.md(review_markdown(review, info.digest, plots)),
        "verdict": verdict, "sha256": info.digest, "candidate": delta["candidate"],
        "cycle_time_s": round(cycle_time, 1),
        "report": dg.MetadataValue.path(str(info.path / "report.html")),
        "path": dg.MetadataValue.path(str(info.path)), "tar": dg.MetadataValue.path(str(info.tar)),
        "files": len(info.files), "signed_by": signer.signer().key_id(),
        "delta": frame_table(shown.sort("delta")),
        "next": "launch promotion_job from the Launchpad with this sha256 as bundle_digest"
        if delta["offer_for_promotion"] else
        "close it: launch promotion_job with this sha256 as bundle_digest and decision reject",
    })
    blocking = pl.DataFrame(blocking_pins(delta), schema={
        "pin": pl.String, "status": pl.String, "rows": pl.Int64, "before": pl.Float64, "after": pl.Float64,
        "delta": pl.Float64, "p_adjusted": pl.Float64, "reasons": pl.String})
    yield dg.AssetCheckResult(
        check_name="candidate_offered", passed=bool(delta["offer_for_promotion"]),
        severity=dg.AssetCheckSeverity.ERROR, description=verdict[:1000],
        metadata={"verdict": verdict, "bundle_digest": info.digest, "blocking_pins": blocking.height,
                  "pins": frame_table(blocking)})

repair_assets = [failure_traces, diagnosis, synthetic_dataset, adapter, candidate_pins, benchmark_delta,
                 evidence_bundle]
repair_cycle_job = dg.define_asset_job("repair_cycle_job", selection=repair_assets,
                                       description="Run one repair cycle (a partition) from traces to benchmark delta")

defs = dg.Definitions(assets=repair_assets, jobs=[repair_cycle_job])

