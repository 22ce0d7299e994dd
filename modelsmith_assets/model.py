"""Model stage: the base model, pin results per model version, and the regression report.

`pin_results` and `regression_report` are partitioned by model version (dynamic partitions named
by the first 16 hex digits of the version's content digest). Each pin in the pin file is one asset
check on `pin_results`, so the checks are built from the pin file when the definitions load
(`pin_results_with_checks`, the only part of the graph built per pin file): the pin file is a
property of the code location, like the assets themselves. The assets read the same file through
the `pins` resource (`resources.pins.PinSettings`), which `build_definitions` declares the checks from.
"""

import dagster as dg

from modelsmith.base_model import build_default
from modelsmith.audit import bootstrap_champion
from modelsmith.labels import version_label
from modelsmith.model_dir import Registry
from modelsmith.pin_runs import pin_version
from modelsmith.pins import PinSet
from modelsmith.store import Home
from modelsmith_assets.executors import gpu_step_tags
from modelsmith_assets.pin_metadata import EVERY_PIN_HOLDS, pin_checks, pin_results_metadata, regression_report_metadata
from modelsmith_assets.scenarios import replayed_auctions
from resources.inference import InferenceSettings
from resources.model import ModelSettings
from resources.pins import PinSettings
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
        path, info = build_default(Home(home).base_models, model.pretrain_config(), model.build_pack_size,
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


# The `pin_results` asset's body; `pin_results_with_checks` (below) makes it the asset, with a check per pin.
def pin_results(context: dg.AssetExecutionContext, inference: InferenceSettings, storage: StorageEngine,
                pins: PinSettings):
    """Every replayed auction decided by this model version; per-pin metrics and the paired test."""
    home = storage.base()
    pinset = _declared_pins(context, pins)
    registry = Registry(home)
    version = registry.get(context.partition_key)
    run, run_dir, reference_name = pin_version(home, pinset, version, lambda v: inference.load_version(v, registry))
    context.log.info(f"pinned {version.key} against {reference_name}: composite {run.composite:.4f}")
    metadata = pin_results_metadata(run, version, run_dir, reference_name, version_label(home, version))
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(metadata["sha256"]))
    for check in pin_checks(run.results, version.key):
        yield dg.AssetCheckResult(asset_key="pin_results", **check)


def _declared_pins(context: dg.AssetExecutionContext, pins: PinSettings) -> PinSet:
    """The bound pin file, refused unless its pins are the checks `pin_results` declares (a Launchpad override
    of the resource's path would judge by one file and report checks of another)."""
    pinset = pins.load()
    declared = {spec.name for spec in context.assets_def.check_specs} - {EVERY_PIN_HOLDS}
    if declared != {p.check_name for p in pinset.pins}:
        raise dg.Failure(description=f"the pin file {pinset.source} is not the one this code location declared "
                                     "pin_results' checks from: set the pin file where the definitions load "
                                     "(MODELSMITH_PINS) and reload them", allow_retries=False)
    return pinset


def pin_check_specs(pins: PinSet) -> list[dg.AssetCheckSpec]:
    """`every_pin_holds`, then one check per pin of `pins`."""
    return [dg.AssetCheckSpec(EVERY_PIN_HOLDS, asset="pin_results",
                              description="Every pin of this version holds (inconclusive ones aside); lists "
                                          "the failing pins first with their reasons"),
            *(dg.AssetCheckSpec(p.check_name, asset="pin_results",
                                description=f"pin {p.name!r}: {p.describe()}; "
                                f"accuracy >= {p.accuracy_floor}, p99 <= {p.latency_p99_ms} ms, "
                                f"drop within {p.max_drop} (Holm-adjusted paired test and bound; a warning "
                                "when inconclusive)") for p in pins.pins)]


def pin_results_with_checks(pins: PinSet) -> dg.AssetsDefinition:
    """The `pin_results` asset, with a check per pin of `pins`: checks are declared with their asset, so this
    is built when the definitions load, from the file the `pins` resource reads."""
    return dg.asset(
        group_name=GROUP,
        partitions_def=model_versions,
        deps=[replayed_auctions, base_model],
        kinds={"polars", "parquet"},
        op_tags=gpu_step_tags(),  # inference (vLLM on a GPU node when scaled out)
        check_specs=pin_check_specs(pins),
    )(pin_results)


@dg.asset(group_name=GROUP, partitions_def=model_versions, deps=["pin_results"], kinds={"json"})
def regression_report(context: dg.AssetExecutionContext, storage: StorageEngine,
                      pins: PinSettings) -> dg.MaterializeResult:
    """Which pins of this version regressed, by how much, with p-values and failing rows: the repair chain's input."""
    home = storage.base()
    version = Registry(home).get(context.partition_key)
    metadata = regression_report_metadata(context.instance, storage, pins.load(), version, version_label(home, version))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(metadata["sha256"]))


pin_model_version_job = dg.define_asset_job(
    "pin_model_version_job", selection=["pin_results", "regression_report"],
    description="Pin one model version (a partition) and write its regression report")
build_base_model_job = dg.define_asset_job("build_base_model_job", selection=[base_model])


def model_defs(pins: PinSet) -> dg.Definitions:
    """The model stage, `pin_results` with a check per pin of `pins`."""
    return dg.Definitions(assets=[base_model, pin_results_with_checks(pins), regression_report],
                          jobs=[pin_model_version_job, build_base_model_job])
