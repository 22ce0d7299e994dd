"""The promotion gate: the only code that moves the champion, on a human's decision about one bundle.

A decision names the approver, the decision (`approve`, `reject`, or `rollback` to an earlier
champion), the digest of the bundle they reviewed and a note. The gate verifies the bundle with
the signer's public key, refuses a digest that matches no bundle, a bundle already decided, a
bundle built against another champion, and (to approve) a candidate that failed a pin or regressed
another segment. Every decision is signed (an in-toto Statement with a SLSA verification-summary
predicate, in a DSSE envelope), recorded under `HOME/decisions/`, and appended to the audit log
before the champion record is replaced atomically; a refused decision is appended as a `refused`
entry with its reason. The audit entry is the commit point: a decision
killed before it leaves nothing decided (the same decision can be taken again), and one killed after
it is completed (the champion record moved) by the next call into the gate.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from modelsmith import audit
from modelsmith.atomic import write_bytes, write_text
from modelsmith.attest import BUNDLE_FILE
from modelsmith.model_dir import Registry, file_sha256, short
from modelsmith.champion import read_champion, write_champion
from modelsmith.store import Home

DECISIONS = ("approve", "reject", "rollback")
VSA = "https://slsa.dev/verification_summary/v1"
GATE_ID = "https://modelsmith.dev/gate"


class GateError(ValueError):
    """A decision the gate refuses; the message says why."""


@dataclass(frozen=True)
class Decision:
    approver: str
    decision: str
    bundle_digest: str = ""
    note: str = ""
    rollback_to: str = ""  # a model version key or digest that was champion before (decision "rollback")
    signature: str = ""  # a reviewer's signed approval (`modelsmith gate sign`), required when the home lists reviewers


def bundles(home: Path) -> list[tuple[str, Path]]:
    """(digest, directory) of every bundle in the home, newest first."""
    found = []
    for envelope in Home(home).bundles.glob(f"*/{BUNDLE_FILE}"):
        if envelope.parent.name.startswith("."):  # a bundle still being written (or left by a killed writer)
            continue
        found.append((envelope.stat().st_mtime, file_sha256(envelope), envelope.parent))
    return [(d, p) for _, d, p in sorted(found, reverse=True)]


def decision_path(home: Path, digest: str) -> Path:
    return Home(home).decisions / f"{digest}.json"


def decided(home: Path, digest: str) -> dict | None:
    """The audit entry that decided bundle `digest`, or None. The audit entry is a decision's commit
    point: a decision record under `decisions/` without one is what a killed decision left behind."""
    return next((e for e in audit.entries(home)
                 if e.get("bundle") == digest and e.get("action") in ("approve", "reject")), None)


def pending(home: Path) -> str:
    """The newest bundle offered for promotion and not yet decided ('' when there is none)."""
    for digest, path in bundles(home):
        if decided(home, digest):
            continue
        if _summary_unverified(path).get("offer_for_promotion"):
            return digest
    return ""


def newest_undecided(home: Path) -> tuple[str, bool]:
    """(digest, offered) of the newest bundle not yet decided, whatever its verdict; ('', False) when none.

    The Launchpad's default: a reviewer also closes refused cycles, with a reject.
    """
    for digest, path in bundles(home):
        if not decided(home, digest):
            return digest, bool(_summary_unverified(path).get("offer_for_promotion"))
    return "", False


def _summary_unverified(bundle_dir: Path) -> dict:
    """The bundle's summary predicate, read without verification: only to pre-fill the Launchpad."""
    import base64

    try:
        envelope = json.loads((bundle_dir / BUNDLE_FILE).read_text())
        predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # any unreadable file: nothing to pre-fill
        return {}
    return predicate if isinstance(predicate, dict) else {}


def decide(home: Path, decision: Decision, signer, run_id: str = "") -> dict:
    """Apply one human decision; returns the decision record (also written under HOME/decisions/).

    A refused decision raises GateError after appending a `refused` entry (who, what, which bundle,
    why) to the audit log: an attempt is part of the record even when it moves nothing.
    """
    home = Path(home)
    audit.complete_interrupted_move(home)  # a decision killed after its audit entry moved the champion
    try:
        return _decide(home, decision, signer, run_id)
    except GateError as refused:
        audit.append(home, "refused", approver=decision.approver, decision=decision.decision,
                     bundle=decision.bundle_digest, rollback_to=decision.rollback_to, reason=str(refused),
                     dagster_run_id=run_id)
        raise


def _signed_by(home: Path, decision: Decision) -> dict:
    """Who signed this decision (`reviewer_key_id`, `approval_sha256`), checked against the reviewers file.

    {} when the home lists no reviewers: the approver is then a name typed into the Launchpad, and the
    decision record says so (`reviewer_verified: false`).
    """
    from modelsmith import reviewers

    path = reviewers.reviewers_path(home)
    if not path.exists():
        return {}
    try:
        signed = reviewers.check_approval(decision.signature, reviewers.load_reviewers(path), decision.approver,
                                          decision.decision, decision.bundle_digest, decision.rollback_to)
    except reviewers.ReviewerError as e:
        raise GateError(str(e)) from None
    used = next((e for e in audit.entries(home) if e.get("approval_sha256") == signed.sha256), None)
    if used:
        raise GateError(f"signature: this signed approval was already used (audit entry {used['seq']}, {used['action']} "
                        f"at {used['at']}): sign the decision again")
    return {"approver": signed.reviewer.name, "reviewer_key_id": signed.reviewer.key_id,
            "approval_sha256": signed.sha256}


def _decide(home: Path, decision: Decision, signer, run_id: str) -> dict:
    signed = _signed_by(home, decision)
    if signed:
        decision = replace(decision, approver=signed["approver"])
    if not decision.approver.strip():
        raise GateError("approver: name the person deciding")
    if decision.decision not in DECISIONS:
        raise GateError(f"decision: must be one of {list(DECISIONS)}, got {decision.decision!r}")
    identity = {"reviewer_verified": bool(signed), "reviewer_key_id": signed.get("reviewer_key_id", ""),
                "approval_sha256": signed.get("approval_sha256", "")}
    champion = read_champion(home)
    before = champion.model_version if champion else None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if decision.decision == "rollback":
        target, summary, bundle_dir = _rollback_target(home, decision, before), {}, None
        digest = hashlib.sha256(f"rollback:{target}:{now}".encode()).hexdigest()
        subject = {"name": f"model_version/{short(target)}", "digest": {"sha256": target}}
    else:
        digest, bundle_dir, summary = _verified_bundle(home, decision, signer)
        subject = {"name": BUNDLE_FILE, "digest": {"sha256": digest}}
        target = summary["candidate"] if decision.decision == "approve" else before
        if decision.decision == "approve":
            _check_offered(summary, digest, before)
    predicate = {
        "verifier": {"id": GATE_ID}, "timeVerified": now,
        "resourceUri": str(bundle_dir) if bundle_dir else f"modelsmith:model_version/{short(target)}",
        "policy": {"uri": f"modelsmith:policy/{summary.get('policy_digest', '')}",
                   "digest": {"sha256": summary.get("policy_digest", "")}},
        "inputAttestations": [{"uri": BUNDLE_FILE, "digest": {"sha256": digest}}] if bundle_dir else [],
        "verificationResult": "FAILED" if decision.decision == "reject" else "PASSED",
        "verifiedLevels": [],
        "modelsmith": {"approver": decision.approver, "decision": decision.decision, "note": decision.note,
                       "champion_before": before, "champion_after": target, "dagster_run_id": run_id, **identity},
    }
    record = _record(home, decision, digest if bundle_dir else "", digest, now, before, target,
                     _sign_predicate(subject, predicate, signer), identity, run_id)
    audit.append(home, decision.decision, approver=decision.approver, bundle=record["bundle_digest"],
                 champion_before=before, champion_after=target, attestation_sha256=record["attestation_sha256"],
                 note=decision.note, **({k: v for k, v in identity.items() if k != "reviewer_verified"} if signed else {}))
    if decision.decision in ("approve", "rollback"):
        write_champion(home, target, by=decision.approver,
                       reason=f"{decision.decision} {('bundle ' + digest[:16]) if bundle_dir else ''}".strip())
    return record


def _verified_bundle(home: Path, decision: Decision, signer) -> tuple[str, Path, dict]:
    """(digest, directory, summary predicate) of the undecided bundle the decision names, verified with the gate's key."""
    from modelsmith.bundle_verify import verify_bundle

    match = [p for d, p in bundles(home) if d == decision.bundle_digest]
    if not decision.bundle_digest or not match:
        raise GateError(f"bundle_digest: no bundle in {Home(home).bundles} has digest {decision.bundle_digest!r}")
    digest, bundle_dir = decision.bundle_digest, match[0]
    prior = decided(home, digest)
    if prior:
        raise GateError(f"bundle {digest[:16]} was already decided: {prior['action']} by {prior['approver']} "
                        f"at {prior['at']}")
    report = verify_bundle(bundle_dir, signer.public_key_pem())
    if not report.ok:
        raise GateError(f"bundle {digest[:16]} does not verify: " + "; ".join(report.errors))
    if report.digest != digest:
        raise GateError(f"bundle_digest: the bundle verifies as {report.digest}, not {digest}")
    return digest, bundle_dir, report.statements[BUNDLE_FILE]["predicate"]


def _check_offered(summary: dict, digest: str, champion: str | None) -> None:
    """An approval needs a bundle built against today's champion whose candidate was offered for promotion."""
    if summary["champion"] != champion:
        raise GateError(f"bundle {digest[:16]} compares against champion {short(summary['champion'])}, but the "
                        f"champion is now {short(champion or '')}: re-pin and build a new bundle")
    if not summary.get("candidate_passed_every_pin") or summary.get("flagged") or not summary.get(
            "offer_for_promotion"):
        raise GateError(f"bundle {digest[:16]}: the candidate is not offered for promotion (failed a pin or "
                        f"regressed another segment: flagged {summary.get('flagged')}, repaired "
                        f"{summary.get('repaired')})")


def _sign_predicate(subject: dict, predicate: dict, signer) -> bytes:
    from modelsmith.dsse import sign_statement, statement

    return sign_statement(statement([subject], VSA, predicate), signer)


def _record(home: Path, decision: Decision, bundle_digest: str, digest: str, now: str, before: str | None,
            target: str | None, envelope: bytes, identity: dict, run_id: str) -> dict:
    """Write the signed decision (`decisions/<digest>.dsse.json`) and its record (`<digest>.json`); the audit
    entry the caller appends next is the commit point."""
    out = Home(home).decisions
    write_bytes(out / f"{digest}.dsse.json", envelope)
    record = {**{k: v for k, v in asdict(decision).items() if k != "signature"}, **identity,
              "bundle_digest": bundle_digest, "at": now,
              "champion_before": before, "champion_after": target, "attestation": str(out / f"{digest}.dsse.json"),
              "attestation_sha256": hashlib.sha256(envelope).hexdigest(), "dagster_run_id": run_id}
    write_text(decision_path(home, digest), json.dumps(record, indent=2))
    return record


def _rollback_target(home: Path, decision: Decision, current: str | None) -> str:
    if not decision.rollback_to:
        raise GateError("rollback_to: name the model version (key or digest) to roll back to")
    earlier = [e["champion_after"] for e in audit.entries(home) if e["action"] in audit.MOVES and e.get("champion_after")]
    version = Registry(home).find(decision.rollback_to)
    if version is None or version.digest not in earlier:
        raise GateError(f"rollback_to: {decision.rollback_to!r} was never champion here; earlier champions: "
                        f"{sorted({short(d) for d in earlier})}")
    if version.digest == current:
        raise GateError(f"rollback_to: {short(version.digest)} is already the champion")
    return version.digest
