"""Reviewers and their signed decisions: a promotion is bound to a key that a reviewers file lists.

Dagster's open-source UI has no login, so a name typed into the Launchpad proves nothing. When
`HOME/reviewers.yaml` (or the file `MODELSMITH_REVIEWERS` names) exists, the gate takes a decision
only with a signed approval from a listed reviewer:

    reviewers:
      - name: ana
        public_key: |
          -----BEGIN PUBLIC KEY-----
          ...
          -----END PUBLIC KEY-----
        may: [approve, reject, rollback]

A signed approval is an in-toto statement (subject: the reviewed bundle's `bundle.dsse.json`, or
the version rolled back to) whose predicate names the decision, the reviewer and a random nonce,
in a DSSE envelope signed with the reviewer's own Ed25519 key (`modelsmith gate sign`); the
Launchpad carries it base64-encoded in `signature`. The gate refuses an unknown key, a signature
that does not verify, a decision or bundle other than the one signed, a reviewer not allowed the
decision, and an approval already used once (its digest is in the audit log).
"""

import base64
import binascii
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelsmith.attest import BUNDLE_FILE
from modelsmith.dsse import VerificationError, open_envelope, sign_statement, statement
from modelsmith.engines.signer import Ed25519Signer, key_id_for

APPROVAL_TYPE = "https://modelsmith.dev/approval/v1"
DECISIONS = ("approve", "reject", "rollback")


class ReviewerError(ValueError):
    """A reviewers file or a signed approval the gate cannot accept; the message says which field and why."""


@dataclass(frozen=True)
class Reviewer:
    name: str
    public_key_pem: str
    key_id: str
    may: tuple[str, ...]


@dataclass(frozen=True)
class SignedApproval:
    reviewer: Reviewer
    sha256: str  # of the envelope: what makes a replay recognisable


def reviewers_path(home: Path) -> Path:
    return Path(os.environ.get("MODELSMITH_REVIEWERS") or Path(home) / "reviewers.yaml")


def load_reviewers(path: Path) -> dict[str, Reviewer]:
    """Reviewers by key id. Raises ReviewerError naming the file and the entry for anything malformed."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError) as e:
        raise ReviewerError(f"{path}: cannot read the reviewers file ({e})") from None
    entries = raw.get("reviewers") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ReviewerError(f"{path}: reviewers: must be a non-empty list of {{name, public_key, may}}")
    out: dict[str, Reviewer] = {}
    for n, entry in enumerate(entries):
        where = f"{path}: reviewers[{n}]"
        if not isinstance(entry, dict):
            raise ReviewerError(f"{where}: must be a mapping with name, public_key and may")
        name, pem, may = entry.get("name"), entry.get("public_key"), entry.get("may", ["approve", "reject"])
        if not isinstance(name, str) or not name.strip():
            raise ReviewerError(f"{where}.name: must be a non-empty string")
        if not isinstance(may, list) or not may or any(m not in DECISIONS for m in may):
            raise ReviewerError(f"{where}.may: must be a non-empty list drawn from {list(DECISIONS)}")
        try:  # an Ed25519 key now, not a surprise at decision time
            if not isinstance(serialization.load_pem_public_key(pem.encode("ascii")), Ed25519PublicKey):
                raise ValueError("another kind of key")
            key_id = key_id_for(pem)
        except (ValueError, TypeError, AttributeError, UnicodeError) as e:
            raise ReviewerError(f"{where}.public_key: must be an Ed25519 public key PEM ({e})") from None
        if key_id in out:
            raise ReviewerError(f"{where}.public_key: the same key as {out[key_id].name}")
        out[key_id] = Reviewer(name.strip(), pem, key_id, tuple(may))
    return out


def _subject(decision: str, bundle_digest: str, rollback_to: str) -> dict:
    if decision == "rollback":
        return {"name": f"rollback/{rollback_to}", "digest": {"sha256": hashlib.sha256(rollback_to.encode()).hexdigest()}}
    return {"name": BUNDLE_FILE, "digest": {"sha256": bundle_digest}}


def sign_approval(key_dir: Path, reviewer: str, decision: str, bundle_digest: str = "", rollback_to: str = "",
                  note: str = "") -> str:
    """A reviewer's signed decision, base64 on one line (what the Launchpad's `signature` carries)."""
    if decision not in DECISIONS:
        raise ReviewerError(f"decision: must be one of {list(DECISIONS)}, got {decision!r}")
    if decision == "rollback" and not rollback_to:
        raise ReviewerError("rollback_to: name the version to roll back to")
    if decision != "rollback" and len(bundle_digest) != 64:
        raise ReviewerError(f"bundle_digest: the SHA-256 (64 hex) of the bundle.dsse.json reviewed, got {bundle_digest!r}")
    predicate = {"decision": decision, "reviewer": reviewer, "bundle_digest": bundle_digest,
                 "rollback_to": rollback_to, "note": note, "nonce": secrets.token_hex(16),
                 "signed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    envelope = sign_statement(statement([_subject(decision, bundle_digest, rollback_to)], APPROVAL_TYPE, predicate),
                              Ed25519Signer(Path(key_dir)))
    return base64.b64encode(envelope).decode("ascii")


def check_approval(token: str, reviewers: dict[str, Reviewer], approver: str, decision: str, bundle_digest: str,
                   rollback_to: str) -> SignedApproval:
    """The reviewer whose key signed exactly this decision; ReviewerError (field `signature`) otherwise."""
    if not token.strip():
        raise ReviewerError("signature: this home lists reviewers: sign the decision with `modelsmith gate sign` and "
                            "paste its output here")
    try:
        envelope = base64.b64decode(token.strip(), validate=True)
        key_ids = [s.get("keyid") for s in json.loads(envelope)["signatures"]]
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise ReviewerError("signature: not a signed approval (base64 of a DSSE envelope from `modelsmith gate sign`)") \
            from None
    known = [reviewers[k] for k in key_ids if k in reviewers]
    if len(key_ids) != 1 or not known:
        raise ReviewerError(f"signature: signed by key {key_ids}, which the reviewers file does not list")
    reviewer = known[0]
    try:
        stmt = open_envelope(envelope, reviewer.public_key_pem, "signature")
    except VerificationError as e:
        raise ReviewerError(f"signature: does not verify with {reviewer.name}'s key ({e})") from None
    signed = stmt["predicate"] if stmt.get("predicateType") == APPROVAL_TYPE else {}
    expected = {"decision": decision, "bundle_digest": bundle_digest if decision != "rollback" else "",
                "rollback_to": rollback_to if decision == "rollback" else ""}
    for field, value in expected.items():
        if signed.get(field, "") != value:
            raise ReviewerError(f"signature: {reviewer.name} signed {field} {signed.get(field)!r}, not {value!r}")
    if stmt["subject"] != [_subject(decision, bundle_digest, rollback_to)]:
        raise ReviewerError(f"signature: {reviewer.name} signed another subject")
    if approver.strip() and approver.strip() != reviewer.name:
        raise ReviewerError(f"approver: {approver!r}, but the signature is {reviewer.name}'s")
    if decision not in reviewer.may:
        raise ReviewerError(f"signature: {reviewer.name} may {list(reviewer.may)}, not {decision}")
    return SignedApproval(reviewer, hashlib.sha256(envelope).hexdigest())
