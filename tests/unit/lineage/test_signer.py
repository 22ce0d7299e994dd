"""The Ed25519 signer: key created once with mode 0600, reused, never leaked; verify says False, never raises."""

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelsmith.engines.signer import Ed25519Signer, key_id_for, verify
from resources.signer import SignerSettings


def test_key_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    first = Ed25519Signer(key_dir)
    key = key_dir / "ed25519.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((key_dir / "ed25519.pub").stat().st_mode) == 0o644  # public: readable
    assert (key_dir / "ed25519.pub").read_text() == first.public_key_pem()
    assert b"PRIVATE KEY" in key.read_bytes()
    assert not [p.name for p in key_dir.iterdir() if p.name.endswith(".tmp")]

    second = Ed25519Signer(key_dir)
    assert second.key_id() == first.key_id() and second.public_key_pem() == first.public_key_pem()
    assert verify(first.public_key_pem(), b"payload", second.sign(b"payload"))


def test_sign_and_verify(tmp_path: Path) -> None:
    signer = Ed25519Signer(tmp_path)
    sig = signer.sign(b"hello")
    assert len(sig) == 64
    assert verify(signer.public_key_pem(), b"hello", sig)
    assert not verify(signer.public_key_pem(), b"hellO", sig)
    assert not verify(signer.public_key_pem(), b"hello", bytes([sig[0] ^ 1]) + sig[1:])
    assert not verify(Ed25519Signer(tmp_path / "other").public_key_pem(), b"hello", sig)
    assert not verify("not a key", b"hello", sig)
    assert not verify(signer.public_key_pem(), b"hello", b"short")


def test_key_id_is_sha256_of_raw_public_key(tmp_path: Path) -> None:
    import hashlib

    signer = Ed25519Signer(tmp_path)
    private = serialization.load_pem_private_key((tmp_path / "ed25519.key").read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signer.key_id() == key_id_for(signer.public_key_pem()) == hashlib.sha256(raw).hexdigest()[:16]


def test_repr_does_not_show_the_private_key(tmp_path: Path) -> None:
    signer = Ed25519Signer(tmp_path)
    private = (tmp_path / "ed25519.key").read_text()
    body = "".join(private.splitlines()[1:-1])
    assert body not in repr(signer) and signer.key_id() in repr(signer)


def test_settings_default_to_the_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELSMITH_HOME", str(tmp_path / "home"))
    signer = SignerSettings().signer()
    assert signer.key_dir == tmp_path / "home" / "keys" and (signer.key_dir / "ed25519.key").is_file()
    assert SignerSettings(key_dir=str(tmp_path / "elsewhere")).signer().key_dir == tmp_path / "elsewhere"
