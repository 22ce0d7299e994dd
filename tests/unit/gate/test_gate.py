"""The gate on real signed bundles: approve, refuse, reject, roll back; the audit log agrees throughout."""

import hashlib

import pytest

from modelsmith import audit
from modelsmith.attest import write_bundle
from modelsmith.gate import Decision, GateError, decide, newest_undecided, pending
from modelsmith.model_dir import Registry
from modelsmith.audit import bootstrap_champion
from modelsmith.champion import read_champion
from modelsmith.engines.signer import Ed25519Signer


def _version(home, name: str, kind: str, base=None):
    d = home / "versions" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(f'{{"name": "{name}"}}')
    return Registry(home).register(d, kind, base=base)


def _bundle(home, signer, name: str, candidate: str, champion: str, offered: bool) -> str:
    summary = {"cycle": name, "candidate": candidate, "champion": champion, "policy_digest": "p" * 64,
               "targets": ["Video Gaming/app"], "repaired": ["Video Gaming/app"] if offered else [],
               "flagged": [] if offered else ["Sports/app"], "offer_for_promotion": offered,
               "candidate_passed_every_pin": offered}
    info = write_bundle(home / "bundles" / name, {"report.html": b"<html></html>"}, None, [], summary, signer)
    return info.digest


@pytest.fixture
def gate(tmp_path):
    home = tmp_path / "home"
    base = _version(home, "base", "base")
    adapter = _version(home, "adapter", "adapter", base=base.digest)
    bootstrap_champion(home, base.digest)
    return home, base, adapter, Ed25519Signer(home / "keys")


def test_approve_then_refuse_a_second_decision_then_roll_back(gate):
    home, base, adapter, signer = gate
    digest = _bundle(home, signer, "c1", adapter.digest, base.digest, offered=True)
    assert pending(home) == digest
    record = decide(home, Decision("ana", "approve", digest, "fixes Gaming"), signer, "run-1")
    assert read_champion(home).model_version == adapter.digest and record["champion_before"] == base.digest
    assert (home / "decisions" / f"{digest}.dsse.json").exists() and pending(home) == ""
    with pytest.raises(GateError, match="already decided: approve by ana"):
        decide(home, Decision("bo", "reject", digest), signer)
    with pytest.raises(GateError, match="was never champion here"):
        decide(home, Decision("ana", "rollback", rollback_to="f" * 16), signer)
    decide(home, Decision("ana", "rollback", note="bad in prod", rollback_to=base.key), signer)
    assert read_champion(home).model_version == base.digest
    log = audit.entries(home)
    assert audit.verify(home).ok and [e["action"] for e in log] == ["bootstrap", "approve", "refused", "refused",
                                                                      "rollback"]
    assert (log[2]["approver"], log[2]["decision"], log[2]["bundle"]) == ("bo", "reject", digest)
    assert "already decided: approve by ana" in log[2]["reason"] and "never champion" in log[3]["reason"]


def test_a_candidate_not_offered_cannot_be_approved_but_can_be_rejected(gate):
    home, base, adapter, signer = gate
    digest = _bundle(home, signer, "c2", adapter.digest, base.digest, offered=False)
    with pytest.raises(GateError, match="not offered for promotion"):
        decide(home, Decision("ana", "approve", digest), signer)
    decide(home, Decision("ana", "reject", digest, "flagged Sports/app"), signer)
    assert read_champion(home).model_version == base.digest and audit.verify(home).ok


def test_a_tampered_or_unknown_or_stale_bundle_is_refused(gate):
    home, base, adapter, signer = gate
    with pytest.raises(GateError, match="no bundle"):
        decide(home, Decision("ana", "approve", "0" * 64), signer)
    stale = _bundle(home, signer, "c3", adapter.digest, "e" * 64, offered=True)
    with pytest.raises(GateError, match="compares against champion eeeeeeeeeeeeeeee"):
        decide(home, Decision("ana", "approve", stale), signer)
    fine = _bundle(home, signer, "c4", adapter.digest, base.digest, offered=True)
    (home / "bundles" / "c4" / "report.html").write_bytes(b"<html>changed</html>")
    with pytest.raises(GateError, match="does not verify: report.html: sha256 mismatch"):
        decide(home, Decision("ana", "approve", fine), signer)
    with pytest.raises(GateError, match="approver"):
        decide(home, Decision(" ", "approve", fine), signer)
    assert read_champion(home).model_version == base.digest
    assert hashlib.sha256((home / "bundles" / "c4" / "bundle.dsse.json").read_bytes()).hexdigest() == fine


def test_the_launchpad_default_is_the_newest_undecided_bundle_whatever_its_verdict(gate):
    home, base, adapter, signer = gate
    assert newest_undecided(home) == ("", False)
    refused = _bundle(home, signer, "c5", adapter.digest, base.digest, offered=False)
    assert newest_undecided(home) == (refused, False) and pending(home) == ""  # not offered: still to be closed
    decide(home, Decision("ana", "reject", refused, "flagged Sports/app"), signer)
    assert newest_undecided(home) == ("", False)


def test_a_refused_promotion_run_fails_with_the_reason_and_is_audited(gate, monkeypatch):
    import dagster as dg

    from modelsmith_assets.gate import gate_defs
    from resources.signer import SignerSettings
    from resources.storage import LocalStorage

    home, base, adapter, signer = gate
    digest = _bundle(home, signer, "c6", adapter.digest, base.digest, offered=False)
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    resources = {"storage": LocalStorage(root=str(home)), "signer": SignerSettings(key_dir=str(home / "keys"))}
    job = gate_defs(resources).resolve_job_def("promotion_job")
    assert job.run_config["ops"]["promotion"]["config"] == {  # the Launchpad: this bundle, and reject by default
        "approver": "", "decision": "reject", "bundle_digest": digest, "note": "", "rollback_to": "", "signature": ""}
    result = job.execute_in_process(raise_on_error=False, run_config={"ops": {"promotion": {
        "config": {"approver": "eve", "decision": "approve", "bundle_digest": digest}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data
    assert failure.user_failure_data.description.startswith(f"refused: bundle {digest[:16]}: the candidate is not "
                                                            "offered for promotion")
    assert "Traceback" not in failure.user_failure_data.description
    entry = audit.entries(home)[-1]
    assert (entry["action"], entry["approver"], entry["bundle"]) == ("refused", "eve", digest) and audit.verify(home).ok
    assert read_champion(home).model_version == base.digest


def test_the_champion_asset_follows_each_decision_downstream_of_the_bundle(gate, monkeypatch):
    import dagster as dg

    from modelsmith_assets.gate import champion, gate_defs, promotion
    from resources.signer import SignerSettings
    from resources.storage import LocalStorage

    home, base, adapter, signer = gate
    digest = _bundle(home, signer, "c7", adapter.digest, base.digest, offered=True)
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    assert dg.AssetKey("evidence_bundle") in promotion.dependency_keys  # the decision's lineage starts at the bundle
    assert champion.dependency_keys == {dg.AssetKey("promotion")}
    resources = {"storage": LocalStorage(root=str(home)), "signer": SignerSettings(key_dir=str(home / "keys"))}
    instance = dg.DagsterInstance.ephemeral()
    job = gate_defs(resources).resolve_job_def("promotion_job")
    result = job.execute_in_process(instance=instance, run_config={"ops": {"promotion": {"config": {
        "approver": "ana", "decision": "approve", "bundle_digest": digest}}}})
    (moved,) = result.asset_materializations_for_node("champion")
    assert moved.metadata["model_version"].value == adapter.digest and moved.metadata["last_decision"].value == "approve"
    assert moved.metadata["audit_entries"].value == 2
    assert "approve" in [r.data["action"] for r in moved.metadata["audit_log"].records]
    assert moved.tags["dagster/data_version"] == adapter.digest
    refused = job.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {"promotion": {
        "config": {"approver": "bo", "decision": "approve", "bundle_digest": digest}}}})
    assert not refused.success and refused.asset_materializations_for_node("champion") == []  # nothing moved


def test_the_promotion_launchpad_asks_only_what_a_decision_needs(gate, monkeypatch):
    """Dagster gives an asset job every resource of the code location; the gate's job keeps storage and signer."""
    import dagster as dg

    from modelsmith_assets.definitions import build_definitions

    home, *_ = gate
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    defs = build_definitions("embedded")
    schema = defs.resolve_job_def("promotion_job").run_config_schema.config_type
    assert set(schema.fields["resources"].config_type.fields) == {"storage", "signer", "io_manager"}
    assert set(schema.fields["ops"].config_type.fields) == {"promotion", "champion"}
    assert set(schema.fields["ops"].config_type.fields["promotion"].config_type.fields["config"].config_type.fields) == {
        "approver", "decision", "bundle_digest", "note", "rollback_to", "signature"}
    repin = defs.resolve_job_def("pin_model_version_job").run_config_schema.config_type  # others keep theirs
    assert {"inference", "critic", "trainer", "model"} <= set(repin.fields["resources"].config_type.fields)
    assert dg.Definitions.validate_loadable(defs) is None
