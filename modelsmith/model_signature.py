"""Model directories signed in the OpenSSF model-signing format, so that tools other than ours can verify them.

The `model-signing` library (v1.1.1) writes `model.sig` beside the weights: a Sigstore bundle whose DSSE
envelope carries an in-toto statement listing every file's SHA-256. Any holder of the public key checks
it with that library's own command line, with no Modelsmith code:

    model_signing verify key --signature DIR/model.sig --public_key HOME/keys/model-signing-p256.pub DIR

Why a second key (P-256) rather than moving every signature to P-256: the library's key signer takes
elliptic-curve keys only (P-256, P-384, P-521), while our lineage, evidence bundles, audit log and the
reviewers' approvals are Ed25519 and already verified in the field (`modelsmith bundle verify`, the
audit chain). Moving them would re-key every record signed so far, for no gain in strength. A separate
key also keeps one purpose per key: `model-signing-p256.key` vouches only for model bytes we published.
Like the Ed25519 key it is created on first use, mode 0600, and refused if group or others can read it.

What the signature covers: every file of the directory except `model.sig` itself and the model card
(README.md). The card is documentation rewritten after training (the benchmark delta fills in the pins
before and after), and it is outside the directory's digest for the same reason; the ignored paths are
recorded in the signed statement, so a verifier applies them without being told. Hidden files, which
our digest skips, are covered. `model.sig` is outside the digest (`modelsmith.model_dir.manifest`), so
signing never renames a model version.
"""

import fcntl
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelsmith.atomic import fsync_dir
from modelsmith.keyfiles import KeyPermissionError, create_exclusive, refuse_if_exposed  # noqa: F401  (KeyPermissionError: re-exported)
from modelsmith.model_dir import MODEL_CARD, SIGNATURE_FILE  # SIGNATURE_FILE: the library's default name

PRIVATE_KEY = "model-signing-p256.key"
PUBLIC_KEY = "model-signing-p256.pub"
UNSIGNED_PATHS = (MODEL_CARD, SIGNATURE_FILE)  # the model card and the signature itself


class ModelSigningUnavailable(RuntimeError):
    """The model-signing library cannot be imported; the message names the missing package."""


class ModelSignatureError(ValueError):
    """A model directory whose signature does not verify; the message is the library's reason."""


@dataclass(frozen=True)
class ModelSignature:
    signature: str  # path of model.sig
    public_key: str  # path of the PEM public key that verifies it
    key_id: str  # first 16 hex of SHA-256 of the DER public key
    files: int  # files the signed statement lists
    format: str = "OpenSSF model-signing v1.0 (Sigstore bundle, DSSE in-toto statement), ECDSA P-256"

    def as_json(self) -> dict:
        return asdict(self)


def _library():
    """Import model_signing, naming the fix when it fails: 1.1.1 imports pyOpenSSL without declaring it."""
    try:
        import model_signing
    except ModuleNotFoundError as e:
        raise ModelSigningUnavailable(
            f"the model-signing library cannot be imported ({e}); install it with its undeclared dependency: "
            "pip install 'model-signing==1.1.1' pyopenssl") from None
    return model_signing


class ModelSigningKey:
    """The P-256 key in `key_dir` that signs model directories, created (with its .pub) on first use."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = Path(key_dir)
        self.private_path = self.key_dir / PRIVATE_KEY
        self.public_path = self.key_dir / PUBLIC_KEY
        key = _load_or_create(self.private_path)
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        if not self.public_path.is_file() or self.public_path.read_bytes() != pem:
            _publish(self.public_path, pem, 0o644)
        self.key_id = key_id_for(self.public_path)

    def sign(self, model_dir: Path) -> ModelSignature:
        """Write `model_dir/model.sig` atomically (signed into a temp file beside the directory, then renamed in)."""
        ms = _library()
        model_dir = Path(model_dir)
        fd, tmp = tempfile.mkstemp(prefix=f".{model_dir.name}.{SIGNATURE_FILE}.", suffix=".tmp", dir=model_dir.parent)
        fcntl.flock(fd, fcntl.LOCK_SH)  # in use while signing: `modelsmith home sweep` leaves it alone
        try:
            hashing = ms.hashing.Config().set_ignored_paths(paths=list(UNSIGNED_PATHS), ignore_git_paths=True)
            ms.signing.Config().use_elliptic_key_signer(private_key=self.private_path).set_hashing_config(
                hashing).sign(model_dir, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, model_dir / SIGNATURE_FILE)
            fsync_dir(model_dir)
        finally:
            Path(tmp).unlink(missing_ok=True)
            os.close(fd)
        return verify(model_dir, self.public_path)

    def ensure_signed(self, model_dir: Path) -> ModelSignature:
        """The directory's signature by this key, signing it when there is none or it does not verify
        (a directory published before signing existed, or signed by another key)."""
        try:
            return verify(model_dir, self.public_path)
        except ModelSignatureError:
            return self.sign(model_dir)

    def __repr__(self) -> str:
        return f"ModelSigningKey(key_dir={str(self.key_dir)!r}, key_id={self.key_id!r})"


def verify(model_dir: Path, public_key: Path, signature: Path | None = None) -> ModelSignature:
    """Verify `model_dir` against its signature (default `model_dir/model.sig`) with the library, as its
    `model_signing verify key` command does; raises ModelSignatureError with the library's reason."""
    ms = _library()
    model_dir, public_key = Path(model_dir), Path(public_key)
    signature = Path(signature) if signature else model_dir / SIGNATURE_FILE
    if not model_dir.is_dir():
        raise ModelSignatureError(f"{model_dir}: no such model directory")
    if not signature.is_file():
        raise ModelSignatureError(f"{signature}: no signature; sign the directory first")
    if not public_key.is_file():
        raise ModelSignatureError(f"{public_key}: no such public key")
    ignored = [signature.resolve().relative_to(model_dir.resolve())] if signature.resolve().is_relative_to(
        model_dir.resolve()) else []
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            ms.hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True)).verify(model_dir, signature)
    except Exception as e:  # the library raises ValueError and others (a malformed bundle, a wrong key type)
        raise ModelSignatureError(f"{model_dir}: the signature does not verify: {e}") from None
    return ModelSignature(str(signature), str(public_key), key_id_for(public_key), _signed_files(signature))


def key_id_for(public_key: Path) -> str:
    """First 16 hex of SHA-256 of the DER public key: a short name to show beside the signature."""
    import hashlib

    key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _signed_files(signature: Path) -> int:
    import base64
    import json

    bundle = json.loads(Path(signature).read_text(encoding="utf-8"))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return len(statement["predicate"]["resources"])


def _load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        create_exclusive(path, pem)
    refuse_if_exposed(path, "model-signing key")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path} is not a P-256 (secp256r1) private key")
    key.sign(b"probe", ec.ECDSA(hashes.SHA256()))  # a key that cannot sign fails here, not mid-publish
    return key


def _publish(target: Path, data: bytes, mode: int) -> None:
    from modelsmith.atomic import write_with

    write_with(target, lambda tmp: (tmp.write_bytes(data), tmp.chmod(mode)))
