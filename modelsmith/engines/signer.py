"""The signer: one Ed25519 key in the Modelsmith home that signs lineage (and, later, the evidence bundle).

The interface is bytes in, bytes out, so any statement format (lineage JSON, in-toto/DSSE) can
use it. The private key is created on first use, mode 0600, and never leaves `key_dir`: it is not
logged, printed or returned; `repr` shows only the key id. A key file that group or others can access
is refused (`KeyPermissionError`), as ssh refuses one.
"""

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelsmith.atomic import write_with
from modelsmith.keyfiles import KeyPermissionError, create_exclusive, refuse_if_exposed  # noqa: F401  (KeyPermissionError: re-exported)

PRIVATE_KEY = "ed25519.key"
PUBLIC_KEY = "ed25519.pub"


class Ed25519Signer:
    """Signs payloads with the key in `key_dir/ed25519.key`, creating it (and `ed25519.pub`) on first use."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = Path(key_dir)
        self._key = _load_or_create(self.key_dir)
        pem = self.public_key_pem()
        pub = self.key_dir / PUBLIC_KEY
        if not pub.is_file() or pub.read_text(encoding="ascii") != pem:
            write_with(pub, lambda tmp: (tmp.write_text(pem, encoding="ascii"), tmp.chmod(0o644)))

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(payload)

    def public_key_pem(self) -> str:
        return _public_pem(self._key.public_key())

    def key_id(self) -> str:
        return key_id_for(self.public_key_pem())

    def __repr__(self) -> str:
        return f"Ed25519Signer(key_dir={str(self.key_dir)!r}, key_id={self.key_id()!r})"


def key_id_for(public_key_pem: str) -> str:
    """SHA-256 hex of the raw 32-byte public key, first 16 hex: a short name for the key."""
    key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify(public_key_pem: str, payload: bytes, signature: bytes) -> bool:
    """True when `signature` is the key's signature of `payload`; False (never an exception) otherwise,
    a malformed or non-Ed25519 key included: what cannot be checked does not verify."""
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            return False
        key.verify(signature, payload)
        return True
    except (InvalidSignature, ValueError, TypeError, UnicodeEncodeError):
        return False


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _load_or_create(key_dir: Path) -> Ed25519PrivateKey:
    path = key_dir / PRIVATE_KEY
    if not path.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        create_exclusive(path, pem)
    refuse_if_exposed(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key
