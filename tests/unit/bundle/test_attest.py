"""Evidence bundles: DSSE/in-toto envelopes, the on-disk format, and offline verification that
names the file behind every failure (a flipped byte in any file, whitespace in an envelope, a wrong
key, a wrong payloadType, a missing or extra file, an unsafe tar)."""

import base64
import io
import json
import shutil
import tarfile
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from modelsmith.attest import BUNDLE_FILE, BUNDLE_PREDICATE_TYPE, PUBLIC_KEY_FILE, write_bundle, write_tar
from modelsmith.bundle_verify import verify_bundle
from modelsmith.dsse import PAYLOAD_TYPE, STATEMENT_TYPE, VerificationError, open_envelope, pae, sign_statement, \
    statement, subject
from modelsmith_cli.cli import main
from modelsmith.lineage import canonical_json
from modelsmith.engines.signer import Ed25519Signer

ATTESTATIONS = [
    ("pins", "https://modelsmith.dev/pins/v1", {"composite": 0.91, "passed": True}),
    ("diagnosis", "https://modelsmith.dev/diagnosis/v1", {"hypothesis": "ctv x finance under-blocks"}),
    ("delta", "https://modelsmith.dev/benchmark-delta/v1", {"repaired": ["a"], "not_repaired": []}),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Ed25519Signer:
    return Ed25519Signer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, keys: Ed25519Signer):
    base = tmp_path_factory.mktemp("bundle")
    trace = base / "src" / "failure_trace.parquet"
    trace.parent.mkdir()
    pl.DataFrame({"row_id": ["r1", "r2", "r3"], "correct": [True, False, False]}).write_parquet(trace)
    adapter = base / "src" / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}\n')
    (adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    files = {"failure_trace.parquet": trace,
             "diagnosis.json": b'{"hypothesis": "ctv x finance under-blocks"}\n',
             "report.html": b"<html><body><h1>Cycle 7</h1></body></html>\n"}
    info = write_bundle(base / "cycle-7", files, adapter, ATTESTATIONS, {"cycle": "7", "candidate": "abc"}, keys)
    return info


def _copy(info, tmp_path: Path) -> Path:
    return Path(shutil.copytree(info.path, tmp_path / "b"))


def _errors_naming(report, name: str) -> list[str]:
    return [e for e in report.errors if e.startswith(f"{name}: ")]


# --- the DSSE pieces ---

def test_pae_matches_the_dsse_spec_example() -> None:
    expected = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("http://example.com/HelloWorld", b"hello world") == expected
    assert pae(PAYLOAD_TYPE, b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "
    assert pae("application/vnd.exämple+json", b"x").startswith(b"DSSEv1 29 ")  # LEN is the UTF-8 byte length


def test_dsse_protocol_md_test_vector_verifies() -> None:
    """protocol.md's published vector (ECDSA P-256/SHA-256, raw r||s), checked through `cryptography` over our PAE."""
    x = 46950820868899156662930047687818585632848591499744589407958293238635476079160
    y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
    sig = "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="
    envelope = {"payload": "aGVsbG8gd29ybGQ=", "payloadType": "http://example.com/HelloWorld",
                "signatures": [{"sig": sig}]}
    key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raw = base64.b64decode(envelope["signatures"][0]["sig"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    message = pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
    key.verify(der, message, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature if our PAE were wrong
    with pytest.raises(Exception):
        key.verify(der, message + b" ", ec.ECDSA(hashes.SHA256()))


def test_sign_and_open_envelope(tmp_path: Path, keys: Ed25519Signer) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    stmt = statement([subject("a.txt", tmp_path / "a.txt")], "https://example.com/p/v1", {"k": 1})
    assert stmt["_type"] == STATEMENT_TYPE
    sha_a = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    assert stmt["subject"] == [{"name": "a.txt", "digest": {"sha256": sha_a}}]
    data = sign_statement(stmt, keys)
    env = json.loads(data)
    assert data == canonical_json(env) and env["payloadType"] == PAYLOAD_TYPE
    assert env["signatures"][0]["keyid"] == keys.key_id()
    assert len(base64.b64decode(env["signatures"][0]["sig"], validate=True)) == 64
    assert json.loads(base64.b64decode(env["payload"])) == stmt
    assert open_envelope(data, keys.public_key_pem()) == stmt

    other = Ed25519Signer(tmp_path / "other")
    with pytest.raises(VerificationError, match="signature does not verify with key") as e:
        open_envelope(data, other.public_key_pem(), "x.dsse.json")
    assert e.value.file == "x.dsse.json"
    with pytest.raises(VerificationError, match="canonical"):
        open_envelope(json.dumps(env).encode(), keys.public_key_pem())
    urlsafe = dict(env, signatures=[dict(env["signatures"][0], sig=env["signatures"][0]["sig"]
                                         .replace("+", "-").replace("/", "_"))])
    if urlsafe != env:
        with pytest.raises(VerificationError, match="canonical"):
            open_envelope(canonical_json(urlsafe), keys.public_key_pem())


# --- the bundle ---

def test_bundle_layout_and_subjects(built, keys: Ed25519Signer) -> None:
    root = built.path
    assert sorted(built.files) == sorted([
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "attestations/delta.dsse.json",
        "attestations/diagnosis.dsse.json", "attestations/pins.dsse.json", BUNDLE_FILE, "diagnosis.json",
        "failure_trace.parquet", PUBLIC_KEY_FILE, "report.html"])
    assert (root / PUBLIC_KEY_FILE).read_text() == keys.public_key_pem()
    assert pl.read_parquet(root / "failure_trace.parquet").height == 3
    bundle = open_envelope((root / BUNDLE_FILE).read_bytes(), keys.public_key_pem())
    assert bundle["predicateType"] == BUNDLE_PREDICATE_TYPE
    assert bundle["predicate"] == {"cycle": "7", "candidate": "abc"}
    assert [s["name"] for s in bundle["subject"]] == sorted(set(built.files) - {BUNDLE_FILE})
    att = open_envelope((root / "attestations/pins.dsse.json").read_bytes(), keys.public_key_pem())
    assert [s["name"] for s in att["subject"]] == [
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "diagnosis.json", "failure_trace.parquet",
        PUBLIC_KEY_FILE, "report.html"]
    assert att["predicate"] == {"composite": 0.91, "passed": True}
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_intact_bundle_verifies_as_directory_and_tar(built, keys: Ed25519Signer) -> None:
    for path in (built.path, built.tar):
        report = verify_bundle(path, keys.public_key_pem())
        assert report.ok, report.errors
        assert report.digest == built.digest and report.warning is None and report.key_id == keys.key_id()
        assert report.checked == 9 and report.signatures == 4
        assert set(report.statements) == {BUNDLE_FILE, "attestations/pins.dsse.json",
                                          "attestations/diagnosis.dsse.json", "attestations/delta.dsse.json"}
    own = verify_bundle(built.path)
    assert own.ok and own.warning and PUBLIC_KEY_FILE in own.warning


def test_tar_is_deterministic(built, tmp_path: Path) -> None:
    again = write_tar(built.path, tmp_path / "again.tar")
    assert again.read_bytes() == built.tar.read_bytes()
    with tarfile.open(built.tar) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == "cycle-7"
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and not m.uname and not m.gname and not m.pax_headers
               for m in members)
    assert b"mtime=" not in built.tar.read_bytes()


def test_bundle_is_immutable(built, keys: Ed25519Signer) -> None:
    with pytest.raises(FileExistsError):
        write_bundle(built.path, {"x.txt": b"x"}, None, [], {}, keys)


@pytest.mark.parametrize("name", ["", "a/b", "..", "bundle.dsse.json", "public_key.pem", "adapter", "attestations"])
def test_bad_payload_names_are_refused(tmp_path: Path, keys: Ed25519Signer, name: str) -> None:
    with pytest.raises(ValueError):
        write_bundle(tmp_path / "b", {name: b"x"}, None, [], {}, keys)
    assert not (tmp_path / "b").exists()


def _flip(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipping_one_byte_of_any_file_is_detected_and_named(built, keys: Ed25519Signer, tmp_path: Path) -> None:
    pem = keys.public_key_pem()
    for rel in sorted(built.files):
        size = (built.path / rel).stat().st_size
        for index in sorted({0, size // 2, size - 1}):
            for key in ((pem, None) if rel == PUBLIC_KEY_FILE else (pem,)):
                root = _copy(built, tmp_path / f"{rel.replace('/', '_')}-{index}-{key is None}")
                _flip(root / rel, index)
                report = verify_bundle(root, key)
                assert not report.ok, (rel, index)
                assert _errors_naming(report, rel), (rel, index, report.errors)
                if rel == PUBLIC_KEY_FILE and key is not None:
                    assert any(e.startswith(f"{PUBLIC_KEY_FILE}: sha256 mismatch (expected ") for e in report.errors)
                if rel != BUNDLE_FILE:
                    assert report.digest == built.digest


@pytest.mark.parametrize("edit", ["trailing newline", "space after brace", "pretty printed"])
def test_whitespace_only_changes_to_envelopes_are_detected(built, keys: Ed25519Signer, tmp_path: Path,
                                                           edit: str) -> None:
    for rel in [BUNDLE_FILE, "attestations/pins.dsse.json", "attestations/delta.dsse.json"]:
        root = _copy(built, tmp_path / f"{edit}-{rel.replace('/', '_')}")
        data = (root / rel).read_text()
        changed = {"trailing newline": data + "\n", "space after brace": "{ " + data[1:],
                   "pretty printed": json.dumps(json.loads(data), indent=2, sort_keys=True)}[edit]
        assert json.loads(changed) == json.loads(data)
        (root / rel).write_text(changed)
        report = verify_bundle(root, keys.public_key_pem())
        assert not report.ok
        assert f"{rel}: not in canonical form (sorted keys, no whitespace, standard base64): the file was edited " \
               f"after signing" in report.errors, report.errors


def test_wrong_key_fails_naming_the_signature(built, tmp_path: Path) -> None:
    other = Ed25519Signer(tmp_path / "other")
    report = verify_bundle(built.path, other.public_key_pem())
    assert not report.ok
    assert any(e.startswith(f"{BUNDLE_FILE}: signature does not verify with key {other.key_id()}")
               for e in report.errors)
    assert any(e.startswith(f"attestations/pins.dsse.json: signature does not verify with key {other.key_id()}")
               for e in report.errors)
    assert any(e.startswith(f"{PUBLIC_KEY_FILE}: holds key") for e in report.errors)


def _resign(path: Path, payload_type: str, signer: Ed25519Signer) -> None:
    payload = base64.b64decode(json.loads(path.read_bytes())["payload"])
    sig = base64.b64encode(signer.sign(pae(payload_type, payload))).decode()
    path.write_bytes(canonical_json({"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
                                     "signatures": [{"keyid": signer.key_id(), "sig": sig}]}))


def test_resigned_with_another_payload_type_fails_naming_payload_type(built, keys: Ed25519Signer,
                                                                       tmp_path: Path) -> None:
    for rel in [BUNDLE_FILE, "attestations/diagnosis.dsse.json"]:
        root = _copy(built, tmp_path / rel.replace("/", "_"))
        _resign(root / rel, "text/plain", keys)
        report = verify_bundle(root, keys.public_key_pem())
        assert not report.ok
        assert f"{rel}: payloadType is 'text/plain', expected application/vnd.in-toto+json" in report.errors
    root = _copy(built, tmp_path / "same")  # re-signing with the right type is fine: the check is the type
    _resign(root / BUNDLE_FILE, PAYLOAD_TYPE, keys)
    assert verify_bundle(root, keys.public_key_pem()).ok


def test_missing_and_extra_files_are_detected(built, keys: Ed25519Signer, tmp_path: Path) -> None:
    root = _copy(built, tmp_path / "missing")
    (root / "diagnosis.json").unlink()
    (root / "adapter/adapter_config.json").unlink()
    report = verify_bundle(root, keys.public_key_pem())
    assert not report.ok
    assert "diagnosis.json: missing" in report.errors and "adapter/adapter_config.json: missing" in report.errors

    root = _copy(built, tmp_path / "extra")
    (root / "notes.txt").write_text("approved?")
    (root / "adapter" / "extra.bin").write_bytes(b"\x00")
    report = verify_bundle(root, keys.public_key_pem())
    assert not report.ok
    assert f"notes.txt: not a subject of {BUNDLE_FILE} (extra file)" in report.errors
    assert f"adapter/extra.bin: not a subject of {BUNDLE_FILE} (extra file)" in report.errors

    root = _copy(built, tmp_path / "no-bundle-file")
    (root / BUNDLE_FILE).unlink()
    report = verify_bundle(root, keys.public_key_pem())
    assert not report.ok and f"{BUNDLE_FILE}: missing" in report.errors and report.digest == ""

    root = _copy(built, tmp_path / "link")
    (root / "report.html").unlink()
    (root / "report.html").symlink_to(built.path / "report.html")
    report = verify_bundle(root, keys.public_key_pem())
    assert not report.ok and "report.html: is a symbolic link, not a file" in report.errors


def _tar_with(tmp_path: Path, built, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    out = tmp_path / "evil.tar"
    with tarfile.open(built.tar) as src, tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m) if m.isreg() else None)
        extra.size = len(data)
        tar.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return out


def test_unsafe_tars_are_refused(built, keys: Ed25519Signer, tmp_path: Path) -> None:
    cases = {"../evil.txt": tarfile.REGTYPE, "/tmp/evil.txt": tarfile.REGTYPE, "cycle-7/link": tarfile.SYMTYPE,
             "cycle-7/hard": tarfile.LNKTYPE, "cycle-7/report.html": tarfile.REGTYPE}
    for name, kind in cases.items():
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "../../etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        case = tmp_path / name.replace("/", "_")
        case.mkdir()
        report = verify_bundle(_tar_with(case, built, info, b"evil"), keys.public_key_pem())
        assert not report.ok and len(report.errors) == 1, report.errors
        assert report.errors[0].startswith("evil.tar: refused, nothing extracted:") and repr(name) in report.errors[0]
        assert not (case.parent / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


# --- the command line ---

def test_cli_verify_ok_and_tampered(built, keys: Ed25519Signer, tmp_path: Path) -> None:
    key_file = tmp_path / "trusted.pem"
    key_file.write_text(keys.public_key_pem())
    runner = CliRunner()
    for path in (built.path, built.tar):
        result = runner.invoke(main, ["bundle", "verify", str(path), "--public-key", str(key_file)])
        assert result.exit_code == 0, result.output
        assert f"OK {built.digest}" in result.output and "9 files and 4 signatures checked" in result.output

    result = runner.invoke(main, ["bundle", "verify", str(built.path), "--json"])
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert out["ok"] and out["digest"] == built.digest and out["warning"]

    root = _copy(built, tmp_path / "tampered")
    _flip(root / "report.html", 5)
    result = runner.invoke(main, ["bundle", "verify", str(root), "--public-key", str(key_file)])
    assert result.exit_code == 1
    assert "report.html: sha256 mismatch (expected " in result.output and "OK" not in result.output
    result = runner.invoke(main, ["bundle", "verify", str(root), "--public-key", str(key_file), "--json"])
    assert result.exit_code == 1 and not json.loads(result.output)["ok"]
