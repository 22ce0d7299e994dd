"""Model stage: the base model, pin results per model version, and the regression report.

`pin_results` and `regression_report` are partitioned by model version (dynamic partitions named
by the first 16 hex digits of the version's content digest). Each pin in the pin file is one asset
check on `pin_results`, so the checks are built from the pin file when the definitions load
(`build_model_defs`): the pin file is a property of the code location, like the assets themselves.
"""

import time
from pathlib import Path

import dagster as dg
import polars as pl

from modelsmith.base_model import build_default
from modelsmith.evaluate import PinResult, markdown_table, status_text
from modelsmith.audit import bootstrap_champion
from modelsmith.champion import read_champion
from modelsmith.labels import version_label
from modelsmith.model_dir import Registry, file_sha256
from modelsmith.pin_runs import pin, reference_for, runs, store
from modelsmith.pins import PinSet
from modelsmith.regression import regression_report_for
from modelsmith_assets.executors import gpu_step_tags
from resources.inference import InferenceSettings
from resources.model import ModelSettings
from resources.signer import SignerSettings
from resources.storage import StorageEngine

GROUP = "model"
MODEL_VERSIONS = "model_versions"
model_versions = dg.DynamicPartitionsDefinition(name=MODEL_VERSIONS)


@dg.asset(group_name=GROUP, kinds={"pytorch", "safetensors"})
def base_model(context: dg.AssetExecutionContext, model: ModelSettings, storage: StorageEngine,
               signer: SignerSettings) -> dg.MaterializeResult:
    """The base model directory (a user's, or the embedded default built here), registered by digest.

    The default built here is signed in the OpenSSF model-signing format (`model.sig`); a user's
    directory is not written to, so it is signed only if it came with a `model.sig` of its own.

    Adds the version to the `model_versions` partitions and, when there is no champion yet, makes
    it the champion (bootstrap). It never moves an existing champion: only the promotion gate does.
    """
    home = storage.base()
    user_dir = model.user_model()
    if user_dir is not None:
        path, info = user_dir, {"source": "base_model_dir"}
        signed = {"model_signature": "none: a user's directory is not written to"}
    else:
        key = signer.model_signing_key()
        path, info = build_default(home / "models" / "base", model.pretrain_config(), model.build_pack_size,
                                   log=context.log.info, sign=key.ensure_signed)
        signature = key.ensure_signed(path)
        signed = {"model_signature": dg.MetadataValue.path(signature.signature),
                  "model_signing_public_key": dg.MetadataValue.path(signature.public_key),
                  "model_signing_key_id": signature.key_id}
        info = {"source": "built: the embedded default" if not info["reused"] else "reused: an identical earlier build",
                "parameters": info["parameters"], "rounds": info["rounds"], "training_loss": info["training_loss"],
                "training_rows": info["rows"], "build_key": info["build_key"],
                "pack_seeds": dg.MetadataValue.json({k: info["config"][k] for k in
                                                     ("train_pack_seed", "validation_pack_seed", "holdout_pack_seed")}),
                **_unseen_metadata(info["unseen"])}
    version = Registry(home).register(path, "base")
    context.instance.add_dynamic_partitions(MODEL_VERSIONS, [version.key])
    champion = bootstrap_champion(home, version.digest)
    if not context.instance.fetch_materializations(dg.AssetKey("champion"), limit=1).records:
        _record_champion(context, home)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={"sha256": version.digest, "partition_key": version.key, "label": version_label(home, version),
                  "path": dg.MetadataValue.path(str(path)),
                  "champion": champion.model_version[:16], **info, **signed},
    )


def _record_champion(context: dg.AssetExecutionContext, home) -> None:
    """The `champion` asset's first materialisation, in this run: its history starts with the bootstrap (every
    later one is the gate's), so a fresh home's champion is not Missing until a first decision."""
    from modelsmith_assets.gate import champion_state

    metadata, version = champion_state(home)
    context.log_event(dg.AssetMaterialization(
        "champion", metadata={**metadata, "recorded_by": "base_model (bootstrap)"},
        tags={"dagster/data_version": version}))


def _unseen_metadata(unseen: dict) -> dict:
    """The base's accuracy on packs it never trained on: what the pins will measure."""
    out = {}
    for name, u in unseen.items():
        out |= {f"{name}_accuracy": u["accuracy"], f"{name}_min_pin_accuracy": u["min_pin_accuracy"],
                f"{name}_pins_under_floor": ", ".join(u["pins_under_floor"]) or "none"}
    holdout = unseen["holdout"]["pins"]
    out["holdout_pins"] = dg.MetadataValue.table(
        records=[dg.TableRecord({"pin": r["pin"], "rows": r["rows"], "accuracy": round(r["accuracy"], 4),
                                 "accuracy_floor": r["accuracy_floor"]}) for r in holdout],
        schema=dg.TableSchema(columns=[dg.TableColumn("pin", "string"), dg.TableColumn("rows", "int"),
                                       dg.TableColumn("accuracy", "float"), dg.TableColumn("accuracy_floor", "float")]))
    return out


def labelled_auctions(storage: StorageEngine) -> tuple[pl.DataFrame, str]:
    path = storage.path("replayed_auctions", "replayed_auctions.parquet")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialise replayed_auctions first")
    from modelsmith.model_dir import file_sha256

    return pl.read_parquet(path), file_sha256(path)


def engine_for(version, registry: Registry, inference: InferenceSettings):
    """The engine that decides for one registered version, as it would be served.

    An adapter version is merged into its base (`merge_adapters`, the default with the transformers
    engine), so its pins judge the latency a bidder would see once it is promoted; otherwise it is
    attached to its loaded base by digest and switched on. The candidate's accuracy is the merged
    model's: the weights it would serve.
    """
    if version.kind == "base":
        return inference.load(version.path)
    base = registry.get(version.base)
    if inference.merge_adapters and inference.engine == "transformers":
        from modelsmith.engines.inference import TransformersEngine

        return TransformersEngine.merged(base.path, version.path, inference.device, inference.batch_size,
                                         inference.threads)
    engine = inference.load(base.path)
    engine.attach_adapter(version.digest, version.path)
    engine.use(version.digest)
    return engine


def pin_version(storage: StorageEngine, inference: InferenceSettings, pins: PinSet, version):
    """Pin one registered version on the replayed auctions against its reference, and store the run.

    The reference is the champion's decisions for any other version, the champion's own last passing
    run for the champion (`modelsmith.pin_runs.reference_for`). Returns (run, run directory, reference).
    """
    home = storage.base()
    labelled, scenarios_digest = labelled_auctions(storage)
    champion = read_champion(home)
    champion_digest = champion.model_version if champion else None
    reference, reference_name = reference_for(home, version.digest, champion_digest, labelled)
    engine = engine_for(version, Registry(home), inference)
    run = pin(engine, labelled, pins, version.digest, scenarios_digest, reference, reference_name)
    return run, store(home, run), reference_name


EVERY_PIN_HOLDS = "every_pin_holds"  # sorts before every `pin_*` check: the UI lists checks by name
STATUS_ORDER = {"failed": 0, "inconclusive": 1, "ok": 2}


def failing_first(results: list[PinResult]) -> list[PinResult]:
    """Failed pins, then inconclusive ones, then the rest, each in pin-file order."""
    return sorted(results, key=lambda r: STATUS_ORDER[r.status])


def _pin_check(r: PinResult) -> dict:
    meta = {"segment": r.segment, "rows": r.rows, "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high,
            "accuracy_floor": r.accuracy_floor, "latency_p99_ms": r.latency_p99_ms,
            "latency_p99_budget_ms": r.latency_p99_budget_ms, "composite": r.composite}
    meta |= {"status": r.status, "floor_p_adjusted": r.floor_p_adjusted, "min_detectable_drop": r.min_detectable_drop}
    if r.p_value is not None:
        meta |= {"p_value": r.p_value, "p_adjusted": r.p_adjusted, "drop": r.drop, "drop_upper": r.drop_upper,
                 "max_drop": r.max_drop, "regressed": r.regressed}
    if r.reasons:
        meta["reasons"] = r.reasons
    if r.notes:
        meta["notes"] = r.notes
    # An inconclusive pin is a warning in the UI: it did not fail, and it cannot vouch either. The UI labels
    # both "Failed" (by icon only they differ), so the description says which, and why.
    return {"check_name": r.check_name, "passed": r.status == "ok", "metadata": meta,
            "description": status_text(r)[:1000],
            "severity": dg.AssetCheckSeverity.WARN if r.status == "inconclusive" else dg.AssetCheckSeverity.ERROR}


def every_pin_sentence(results: list[PinResult]) -> str:
    """One sentence: which pins fail and why, or that every pin holds."""
    failed = [r for r in results if r.status == "failed"]
    inconclusive = sum(r.status == "inconclusive" for r in results)
    if not failed:
        return f"every pin holds: {len(results) - inconclusive} ok, {inconclusive} inconclusive"
    return f"{len(failed)} of {len(results)} pins fail: " + "; ".join(f"{r.pin} ({r.reasons})" for r in failed)


def _every_pin_check(results: list[PinResult]) -> dict:
    """The pins' verdict in one check, listed first; its table puts the failing pins on top."""
    shown = failing_first([r for r in results if r.status != "ok"])
    counts = {s: sum(r.status == s for r in results) for s in STATUS_ORDER}
    return {"check_name": EVERY_PIN_HOLDS, "passed": counts["failed"] == 0, "severity": dg.AssetCheckSeverity.ERROR,
            "description": every_pin_sentence(results)[:1000],
            "metadata": {**counts, "failing": ", ".join(r.pin for r in shown if r.status == "failed") or "none",
                         "pins": dg.MetadataValue.md(markdown_table(shown) if shown else "Every pin ok.")}}


def pin_checks(results: list[PinResult], partition: str) -> list[dict]:
    """The asset-check results of one pin run (as keyword arguments): `every_pin_holds`, then one per pin.

    Each names the version's partition in its metadata: the checks are not partitioned (a preview feature in
    Dagster 1.13), so the UI shows a result without it otherwise.
    """
    checks = [_every_pin_check(results), *(_pin_check(r) for r in results)]
    return [{**c, "metadata": {"partition": partition, **c["metadata"]}} for c in checks]


def pin_results_metadata(run, version, run_dir, reference_name: str, label: str) -> dict:
    """`pin_results`' metadata for one pin run of `version` (the pins table with the failing ones on top); its
    `sha256` (of the run's predictions) is the materialisation's data version."""
    return {
        "label": label, "dagster/row_count": run.predictions.height,
        "path": dg.MetadataValue.path(str(run_dir)), "sha256": file_sha256(Path(run_dir) / "predictions.parquet"),
        "composite": run.composite, "passed": run.passed,
        "failed": ", ".join(run.summary()["failed"]) or "none",
        "inconclusive": ", ".join(r.pin for r in run.results if r.inconclusive) or "none",
        "regressed": ", ".join(run.summary()["regressed"]) or "none",
        "reference": reference_name, "policy_digest": run.policy_digest, "scenarios_digest": run.scenarios_digest,
        "model_version": version.digest, "kind": version.kind,
        "pins": dg.MetadataValue.md(markdown_table(failing_first(run.results))),
    }


def regression_report_metadata(instance: dg.DagsterInstance, storage: StorageEngine, pins: PinSet, version,
                               label: str) -> dict:
    """Write the regression report of `version`'s latest pin run (the latest copy for people, this run's for the
    sensor) and return `regression_report`'s metadata (its `sha256` is the data version)."""
    home = storage.base()
    done = runs(home, version.digest)
    if not done:
        raise FileNotFoundError(f"no pin run for {version.key}: materialise pin_results[{version.key}] first")
    run_dir, _ = done[-1]
    report = regression_report_for(run_dir, pins)
    champion = read_champion(home)
    storage.put_json(f"reports/{version.key}/regression_report.json", report)  # the latest, for people
    path = storage.put_json(f"reports/{version.key}/{run_dir.name}.json", report)  # this run's, for the sensor
    table = pl.DataFrame(report["regressed"]) if report["regressed"] else None
    landed = instance.fetch_materializations(dg.AssetKey("replayed_auctions"), limit=1).records
    detect = {"time_to_detect_s": round(time.time() - landed[0].timestamp, 1)} if landed and report["regressed"] else {}
    is_champion = champion is not None and champion.model_version == version.digest
    return {**(detect if is_champion else {}), "label": label,
            "regressed": len(report["regressed"]), "failed": len(report["failed"]),
            "pins": ", ".join(p["pin"] for p in report["regressed"]) or "none",
            "is_champion": is_champion, "path": dg.MetadataValue.path(str(path)), "sha256": file_sha256(path),
            "report": dg.MetadataValue.md(_report_markdown(table))}


def build_model_defs(pins: PinSet, deps: list) -> dg.Definitions:
    """The model stage's assets, with one asset check per pin in `pins`."""

    @dg.asset(
        group_name=GROUP,
        partitions_def=model_versions,
        deps=[*deps, base_model],
        kinds={"polars", "parquet"},
        op_tags=gpu_step_tags(),  # inference (vLLM on a GPU node when scaled out)
        check_specs=[dg.AssetCheckSpec(EVERY_PIN_HOLDS, asset="pin_results",
                                       description="Every pin of this version holds (inconclusive ones aside); lists "
                                                   "the failing pins first with their reasons"),
                     *(dg.AssetCheckSpec(p.check_name, asset="pin_results",
                                         description=f"pin {p.name!r}: {p.describe()}; "
                                         f"accuracy >= {p.accuracy_floor}, p99 <= {p.latency_p99_ms} ms, "
                                         f"drop within {p.max_drop} (Holm-adjusted paired test and bound; a warning "
                                         "when inconclusive)") for p in pins.pins)],
    )
    def pin_results(context: dg.AssetExecutionContext, inference: InferenceSettings, storage: StorageEngine):
        """Every replayed auction decided by this model version; per-pin metrics and the paired test."""
        home = storage.base()
        version = Registry(home).get(context.partition_key)
        run, run_dir, reference_name = pin_version(storage, inference, pins, version)
        context.log.info(f"pinned {version.key} against {reference_name}: composite {run.composite:.4f}")
        metadata = pin_results_metadata(run, version, run_dir, reference_name, version_label(home, version))
        yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(metadata["sha256"]))
        for check in pin_checks(run.results, version.key):
            yield dg.AssetCheckResult(asset_key="pin_results", **check)

    @dg.asset(group_name=GROUP, partitions_def=model_versions, deps=[pin_results], kinds={"json"})
    def regression_report(context: dg.AssetExecutionContext, storage: StorageEngine) -> dg.MaterializeResult:
        """Which pins of this version regressed, by how much, with p-values and failing rows: the repair chain's input."""
        home = storage.base()
        version = Registry(home).get(context.partition_key)
        metadata = regression_report_metadata(context.instance, storage, pins, version, version_label(home, version))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(metadata["sha256"]))

    pin_job = dg.define_asset_job("pin_model_version_job", selection=[pin_results, regression_report],
                                  description="Pin one model version (a partition) and write its regression report")
    base_job = dg.define_asset_job("build_base_model_job", selection=[base_model])
    return dg.Definitions(assets=[base_model, pin_results, regression_report], jobs=[pin_job, base_job])


def _report_markdown(table: pl.DataFrame | None) -> str:
    if table is None:
        return "No pin regressed."
    from scenario_data.replay import to_markdown

    return to_markdown(table.select("pin", "rows", "reference_accuracy", "accuracy", "drop", "p_value", "failing_rows"))
