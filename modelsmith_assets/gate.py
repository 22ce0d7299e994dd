"""The human gate: `promotion`, launched from the Launchpad, is the only way the champion moves.

The Launchpad of `promotion_job` is pre-filled with the newest undecided bundle's digest, whatever
its verdict (read when the code location loads: reload it after a cycle), and with `reject` when
that bundle was not offered. The approver and a note are the reviewer's to fill in. A refused
decision fails the run with the gate's one-line reason (`dg.Failure`) and is in the audit log.
"""

from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from modelsmith.gate import DECISIONS, Decision, GateError, decide, newest_undecided
from modelsmith.home import modelsmith_home
from modelsmith.model_dir import short
from resources.signer import SignerSettings
from resources.storage import StorageEngine
from modelsmith_assets.tables import frame_table

GROUP = "gate"


class PromotionConfig(dg.Config):
    approver: str = Field(description="Who decides (recorded and signed)")
    decision: Literal["approve", "reject", "rollback"] = Field(
        "approve", description=f"One of {list(DECISIONS)}: the Launchpad refuses anything else")
    bundle_digest: str = Field("", description="SHA-256 of the bundle.dsse.json you reviewed")
    note: str = Field("", description="Why")
    rollback_to: str = Field("", description="For a rollback: the earlier champion's version key or digest")
    signature: str = Field("", description="Your signed decision: the output of `modelsmith gate sign` (required "
                                           "when the home lists reviewers in reviewers.yaml; the approver is then "
                                           "the key's reviewer)")


@dg.asset(group_name=GROUP, kinds={"json"}, deps=["evidence_bundle"])
def promotion(context: dg.AssetExecutionContext, config: PromotionConfig, storage: StorageEngine,
              signer: SignerSettings) -> dg.MaterializeResult:
    """A reviewer's decision on one evidence bundle: verified, signed, audited; on approval the champion moves."""
    try:
        record = decide(storage.base(), Decision(config.approver, config.decision, config.bundle_digest, config.note,
                                                 config.rollback_to, config.signature), signer.signer(), context.run.run_id)
    except GateError as refused:
        raise dg.Failure(description=f"refused: {refused}", metadata={
            "reason": str(refused), "decision": config.decision, "approver": config.approver,
            "bundle_digest": config.bundle_digest or "none", "recorded": "audit.jsonl (action: refused)"},
            allow_retries=False) from None
    context.log.info(f"{config.decision} by {config.approver}: champion {short(record['champion_before'] or '')} -> "
                     f"{short(record['champion_after'] or '')}")
    return dg.MaterializeResult(metadata={
        "decision": config.decision, "approver": config.approver, "bundle_digest": record["bundle_digest"] or "none",
        "champion_before": record["champion_before"] or "none", "champion_after": record["champion_after"] or "none",
        "attestation": dg.MetadataValue.path(record["attestation"]), "note": config.note,
        "reviewer_verified": record["reviewer_verified"], "reviewer_key_id": record["reviewer_key_id"] or "none",
    })


AUDIT_COLUMNS = {"seq": pl.Int64, "at": pl.String, "action": pl.String, "approver": pl.String,
                 "champion_after": pl.String, "reason": pl.String}


def champion_state(home) -> tuple[dict, str]:
    """`champion`'s metadata (the current champion and the audit log, newest first) and its data version."""
    from modelsmith import audit
    from modelsmith.champion import read_champion
    from modelsmith.labels import version_label
    from modelsmith.model_dir import Registry

    record = read_champion(home)
    version = Registry(home).find(record.model_version) if record else None
    entries = audit.entries(home)
    log = [{"seq": e["seq"], "at": e["at"], "action": e["action"], "approver": e.get("approver") or e.get("by") or "",
            "champion_after": short(e.get("champion_after") or ""), "reason": e.get("reason") or e.get("note") or ""}
           for e in entries]
    return ({"model_version": record.model_version if record else "none",
             "label": version_label(home, version) if version else "none", "by": record.by if record else "",
             "reason": record.reason if record else "", "audit_entries": len(entries),
             "last_decision": log[-1]["action"] if log else "none",
             "audit_log": frame_table(pl.DataFrame(log[::-1], schema=AUDIT_COLUMNS), max_rows=50)},
            record.model_version if record else "none")


@dg.asset(group_name=GROUP, kinds={"json"}, deps=[promotion])
def champion(context: dg.AssetExecutionContext, storage: StorageEngine) -> dg.MaterializeResult:
    """The model version every pin run loads, after each decision; its history is the audit log (from the bootstrap,
    which `base_model` records as this asset's first materialisation)."""
    metadata, version = champion_state(storage.base())
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


DECISION_RESOURCES = ("storage", "signer")  # all a decision needs: the Launchpad shows no other resource


def gate_defs(resources: dict[str, dg.ConfigurableResource],
              executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """`promotion_job`, its Launchpad pre-filled with the newest undecided bundle of this Modelsmith home.

    `resources`: the environment's (those named in DECISION_RESOURCES are used). Dagster binds every
    resource of the code location to an asset job (its Launchpad lists the critic, trainer, model and
    inference config too); a job resolved here with only the decision's resources keeps them, so its
    run config schema holds the promotion config, storage and signer (and Dagster's io_manager).
    """
    digest, offered = newest_undecided(modelsmith_home())
    prefill = {"approver": "", "decision": "approve" if offered else "reject", "bundle_digest": digest, "note": "",
               "rollback_to": "", "signature": ""}
    job = dg.define_asset_job("promotion_job", selection=[promotion, champion],
                              config={"ops": {"promotion": {"config": prefill}}},
                              description="Approve, reject or roll back: the only way the champion moves")
    needed = {k: resources[k] for k in DECISION_RESOURCES}  # the same objects as the code location's
    resolved = dg.Definitions(assets=[promotion, champion], jobs=[job], executor=executor,
                              resources=needed).resolve_job_def(job.name)
    return dg.Definitions(assets=[promotion, champion], jobs=[resolved], resources=needed)
