"""In-toto Statements v1 in DSSE envelopes, Ed25519-signed, in one canonical serialization.

The format (the pre-authentication encoding, canonical JSON, exactly one signature) is in
docs/evidence-bundle.md. Library: the envelope (PAE, base64, sign and verify) is securesystemslib's
``securesystemslib.dsse.Envelope`` with the key as an ``SSlibKey`` whose keyid is
`modelsmith.engines.signer.key_id_for`; the private key stays inside `Ed25519Signer` (a small
``securesystemslib.signer.Signer`` adapter calls its ``sign``). The Statement is a plain dict built
and checked here: the ``in-toto-attestation`` package is generated protobuf bindings and would add
protobuf for what `statement` does in a few lines.
"""

import base64
import binascii
import copy
import json
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import Key, Signature, Signer, SSlibKey

from modelsmith.engines.signer import key_id_for
from modelsmith.lineage import canonical_json
from modelsmith.model_dir import file_sha256

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
_STATEMENT_FIELDS = {"_type", "subject", "predicateType", "predicate"}


class VerificationError(Exception):
    """A check failed; `file` names the file (relative to the bundle) it failed on."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


class EnvelopeSigner(Protocol):
    def sign(self, payload: bytes) -> bytes: ...

    def public_key_pem(self) -> str: ...


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE pre-authentication encoding of (UTF8(payload_type), payload): what is signed."""
    return Envelope(payload, payload_type, {}).pae()


def statement(subjects: list[dict], predicate_type: str, predicate: dict) -> dict:
    """An in-toto Statement v1."""
    if not subjects:
        raise ValueError("an in-toto statement needs at least one subject")
    for s in subjects:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict)
                and s["digest"]):
            raise ValueError(f"a subject is {{name, digest: {{alg: hex}}}}, not {s!r}")
    if not isinstance(predicate_type, str) or not predicate_type:
        raise ValueError("predicate_type must be a non-empty string (a URI)")
    if not isinstance(predicate, dict):
        raise ValueError("predicate must be a dict")
    return {"_type": STATEMENT_TYPE, "subject": [copy.deepcopy(s) for s in subjects],
            "predicateType": predicate_type, "predicate": copy.deepcopy(predicate)}


def subject(name: str, path: Path) -> dict:
    """A subject naming `name` with the SHA-256 of the file at `path`."""
    return {"name": name, "digest": {"sha256": file_sha256(Path(path))}}


class _DsseSigner(Signer):
    """securesystemslib's Signer interface over an `Ed25519Signer`: the private key stays inside it."""

    def __init__(self, signer: EnvelopeSigner) -> None:
        self._signer = signer
        self._key = _sslib_key(signer.public_key_pem())

    @property
    def public_key(self) -> Key:
        return self._key

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._key.keyid, self._signer.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None) -> Signer:  # noqa: ANN001
        raise NotImplementedError("wrap an Ed25519Signer instead")


def sign_statement(stmt: dict, signer: EnvelopeSigner) -> bytes:
    """The statement, signed by `signer`, as canonical DSSE envelope bytes."""
    envelope = Envelope(canonical_json(stmt), PAYLOAD_TYPE, {})
    envelope.sign(_DsseSigner(signer))
    return canonical_json(envelope.to_dict())


def open_envelope(envelope_bytes: bytes, public_key_pem: str, name: str = "envelope") -> dict:
    """Check a DSSE envelope (canonical bytes, payloadType, one signature by this key, whose keyid is
    `key_id_for(public_key_pem)`) and return its in-toto statement. Raises `VerificationError(name, ...)`."""
    key = verifying_key(public_key_pem, name)
    envelope = _parse_envelope(envelope_bytes, name)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise VerificationError(name, f"payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE}")
    (signed_by,) = envelope.signatures  # _parse_envelope admits exactly one
    if signed_by != key.keyid:
        raise VerificationError(name, f"signature does not verify with key {key.keyid}: it names key {signed_by}")
    try:
        envelope.verify([key], 1)
    except Exception:  # securesystemslib's VerificationError, or a malformed signature
        raise VerificationError(name, f"signature does not verify with key {key.keyid}") from None
    return _parse_statement(envelope.payload, name)


def _sslib_key(public_key_pem: str) -> SSlibKey:
    key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return SSlibKey.from_crypto(key, keyid=key_id_for(public_key_pem), scheme="ed25519")


def verifying_key(public_key_pem: str, name: str) -> SSlibKey:
    try:
        return _sslib_key(public_key_pem)
    except (ValueError, TypeError, UnicodeError) as e:
        raise VerificationError(name, f"cannot verify: the public key is not an Ed25519 public key PEM ({e})") from None


def _not_a_number(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def _json(data: bytes) -> Any:
    """Strict JSON: every failure is a ValueError (not UTF-8, not JSON, NaN or Infinity, a number out of
    range or past Python's digit limit, nested too deeply), so no bundle file can crash the verifier."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _parse_envelope(data: bytes, name: str) -> Envelope:
    try:
        raw = _json(data)
    except ValueError as e:
        raise VerificationError(name, f"not a DSSE envelope: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or set(raw) != {"payload", "payloadType", "signatures"}:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise VerificationError(name, f"not a DSSE envelope: expected keys payload, payloadType, signatures; "
                                      f"found {found}")
    sigs = raw["signatures"]
    if not isinstance(sigs, list) or len(sigs) != 1:
        n = len(sigs) if isinstance(sigs, list) else "no list of"
        raise VerificationError(name, f"expected exactly one signature, found {n}")
    if not (isinstance(sigs[0], dict) and set(sigs[0]) == {"keyid", "sig"}
            and all(isinstance(v, str) for v in sigs[0].values())):
        raise VerificationError(name, "the signature is not {keyid, sig} strings")
    if not isinstance(raw["payload"], str) or not isinstance(raw["payloadType"], str):
        raise VerificationError(name, "payload and payloadType must be strings")
    try:
        envelope = Envelope.from_dict(copy.deepcopy(raw))
    except (binascii.Error, ValueError, KeyError, TypeError) as e:
        raise VerificationError(name, f"not a DSSE envelope: bad base64 or signature ({e})") from None
    if canonical_json(envelope.to_dict()) != data:
        raise VerificationError(name, "not in canonical form (sorted keys, no whitespace, standard base64): "
                                      "the file was edited after signing")
    return envelope


def _parse_statement(payload: bytes, name: str) -> dict:
    try:
        stmt = _json(payload)
    except ValueError as e:
        raise VerificationError(name, f"payload is not JSON ({e})") from None
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE:
        raise VerificationError(name, f"payload is not an in-toto Statement v1 (_type {STATEMENT_TYPE})")
    try:
        canonical = canonical_json(stmt) == payload
    except (ValueError, RecursionError):
        canonical = False
    if not canonical:
        raise VerificationError(name, "payload is not canonical JSON")
    if set(stmt) != _STATEMENT_FIELDS:
        raise VerificationError(name, f"statement fields are {sorted(stmt)}, expected {sorted(_STATEMENT_FIELDS)}")
    try:
        statement(stmt["subject"], stmt["predicateType"], stmt["predicate"])
    except (ValueError, TypeError, RecursionError) as e:
        raise VerificationError(name, f"malformed in-toto statement: {e or 'nested too deeply'}") from None
    return stmt


def unverified_statement(data: bytes) -> dict | None:
    """The statement an envelope carries, without checking anything: only to say which file changed."""
    try:
        raw = json.loads(data.decode("utf-8"))
        stmt = json.loads(base64.b64decode(raw["payload"], validate=True).decode("utf-8"))
        return stmt if isinstance(stmt, dict) and isinstance(stmt.get("subject"), list) else None
    except Exception:  # noqa: BLE001 - anything unreadable simply gives no statement
        return None
