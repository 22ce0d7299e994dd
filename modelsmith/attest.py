"""Signed evidence bundles: in-toto Statements in DSSE envelopes, written once, verified offline.

A repair cycle ends with an evidence bundle that a human approves. This module writes it and checks it.

Attestations
    Each attestation is an in-toto Statement v1::

        {"_type": "https://in-toto.io/Statement/v1",
         "subject": [{"name": "report.html", "digest": {"sha256": "<hex>"}}, ...],
         "predicateType": "<URI>", "predicate": {...}}

    carried in a DSSE envelope::

        {"payload": "<base64 of the statement's canonical JSON>",
         "payloadType": "application/vnd.in-toto+json",
         "signatures": [{"keyid": "<key_id_for(pem)>", "sig": "<base64 Ed25519 signature>"}]}

    The signature is Ed25519 over the DSSE pre-authentication encoding
    ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` (LEN: the byte length,
    in ASCII decimal), never over the JSON, so a payload cannot be read as another type.

    Both the statement (the payload) and the envelope are written in one canonical serialization,
    `modelsmith.lineage.canonical_json` (sorted keys, no whitespace, UTF-8), with standard base64
    and exactly one signature. The verifier re-serializes what it parsed and requires the file's
    bytes to be that serialization, byte for byte: an edit that leaves the signature valid (added
    whitespace, reordered keys, URL-safe base64, a duplicate key) is still detected, and a bundle
    has one digest. This is stricter than DSSE, which lets verifiers accept either base64 alphabet:
    a bundle is a closed format that only `write_bundle` writes.

The bundle, on disk
    A directory::

        <out_dir>/
          <payload files>                 top level, any names (failure_trace.parquet, diagnosis.json, ...)
          adapter/...                     the candidate adapter's files, copied in
          attestations/<name>.dsse.json   one DSSE envelope per predicate
          public_key.pem                  the signer's public key: a convenience, not a trust anchor
          bundle.dsse.json                the bundle statement

    Every attestation's subjects are all payload files, all adapter files (named ``adapter/...``)
    and ``public_key.pem``. ``bundle.dsse.json`` is a DSSE envelope whose statement has
    predicateType ``https://modelsmith.dev/evidence-bundle/v1``, a caller's summary as predicate,
    and as subjects every other file in the bundle (payload, adapter, attestation files and
    ``public_key.pem``), each with its SHA-256. Subject names are relative POSIX paths, sorted.

    The **bundle digest** is the SHA-256 (hex) of the bytes of ``bundle.dsse.json``: it names the
    whole bundle, since that file's signed statement fixes every other file's digest.

    ``<out_dir>.tar`` beside the directory holds the same files under one top-level directory
    ``<out_dir name>/``, deterministically: sorted entries, mtime 0, uid/gid 0, no user or group
    names, modes 0644/0755, GNU format (no pax headers, so no pax timestamps). The same directory
    always gives the same tar bytes.

    A bundle is immutable once written: it is built in a temporary sibling directory and renamed
    into place, and writing to an ``out_dir`` (or ``.tar``) that exists is an error. A write that
    fails (a full disk: the error names the file and the bundle) leaves neither. The directory is
    the commit point: when a writer was killed before the ``.tar``, writing the bundle again writes
    that tar from the directory (the same bytes) before refusing.

Verification (`verify_bundle`, ``modelsmith bundle verify``) needs no network: it takes the
directory or the ``.tar`` (extracted to a temporary directory, refusing absolute paths, ``..``,
links and anything but plain files and directories) and a public key. With no key given it uses
the bundle's own ``public_key.pem`` and says so in ``VerifyReport.warning``: that proves the bundle
is intact and self-consistent, not who signed it. It checks that ``bundle.dsse.json`` is
canonical, of payloadType ``application/vnd.in-toto+json``, signed by the key and of the bundle
predicateType; that the files in the directory are exactly its subjects and match their digests;
that every attestation opens the same way with the key; and that every attestation's subjects are
exactly the payload, adapter and key files, with matching digests. Each error names the file and
what failed; when the bundle statement does not verify, its (unverified) subjects are still read
so that the report says which file was changed.

Library: the DSSE envelope (PAE, base64, sign and verify) is securesystemslib's
``securesystemslib.dsse.Envelope`` (securesystemslib==1.6.0; no dependencies of its own, it
verifies Ed25519 through ``cryptography``), with the key as an ``SSlibKey`` whose keyid is
`modelsmith.engines.signer.key_id_for`. The private key stays inside `Ed25519Signer`: a small
``securesystemslib.signer.Signer`` adapter calls its ``sign``. The in-toto Statement is a plain
dict (four fields) built and checked here: the ``in-toto-attestation`` package (0.9.3, 2023) is
generated protobuf bindings and would add protobuf for what `statement` does in a few lines.
"""

import base64
import binascii
import copy
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import Key, Signature, Signer, SSlibKey

from modelsmith.atomic import fsync_dir, work_dir, write_bytes, write_text, write_with
from modelsmith.model_dir import file_sha256
from modelsmith.lineage import canonical_json
from modelsmith.engines.signer import key_id_for

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_PREDICATE_TYPE = "https://modelsmith.dev/evidence-bundle/v1"

BUNDLE_FILE = "bundle.dsse.json"
PUBLIC_KEY_FILE = "public_key.pem"
ADAPTER_DIR = "adapter"
ATTESTATIONS_DIR = "attestations"
ENVELOPE_SUFFIX = ".dsse.json"
_STATEMENT_FIELDS = {"_type", "subject", "predicateType", "predicate"}
_RESERVED = {BUNDLE_FILE, PUBLIC_KEY_FILE, ADAPTER_DIR, ATTESTATIONS_DIR}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class VerificationError(Exception):
    """A check failed; `file` names the file (relative to the bundle) it failed on."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


class BundleSigner(Protocol):
    def sign(self, payload: bytes) -> bytes: ...

    def public_key_pem(self) -> str: ...


@dataclass(frozen=True)
class BundleInfo:
    path: Path  # the bundle directory
    tar: Path  # <path>.tar
    digest: str  # SHA-256 hex of bundle.dsse.json
    files: dict[str, str]  # every file in the bundle (bundle.dsse.json included) -> SHA-256 hex


@dataclass
class VerifyReport:
    ok: bool
    digest: str  # SHA-256 hex of bundle.dsse.json ("" when it is missing)
    errors: list[str]
    checked: int  # files whose digest was checked against the bundle statement
    statements: dict[str, dict[str, Any]]  # envelope file (e.g. "attestations/pins.dsse.json") -> verified statement
    signatures: int = 0  # envelopes whose signature was checked
    key_id: str = ""  # the key verified with
    warning: str | None = None  # set when the key came from the bundle itself

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "digest": self.digest, "errors": self.errors, "checked": self.checked,
                "signatures": self.signatures, "key_id": self.key_id, "warning": self.warning,
                "statements": self.statements}


# --- DSSE and in-toto ---

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

    def __init__(self, signer: BundleSigner) -> None:
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


def sign_statement(stmt: dict, signer: BundleSigner) -> bytes:
    """The statement, signed by `signer`, as canonical DSSE envelope bytes."""
    envelope = Envelope(canonical_json(stmt), PAYLOAD_TYPE, {})
    envelope.sign(_DsseSigner(signer))
    return canonical_json(envelope.to_dict())


def open_envelope(envelope_bytes: bytes, public_key_pem: str, name: str = "envelope") -> dict:
    """Check a DSSE envelope (canonical bytes, payloadType, one signature by this key, whose keyid is
    `key_id_for(public_key_pem)`) and return its in-toto statement. Raises `VerificationError(name, ...)`."""
    key = _verifying_key(public_key_pem, name)
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


def _verifying_key(public_key_pem: str, name: str) -> SSlibKey:
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


def _unverified_statement(data: bytes) -> dict | None:
    """The statement an envelope carries, without checking anything: only to say which file changed."""
    try:
        raw = json.loads(data.decode("utf-8"))
        stmt = json.loads(base64.b64decode(raw["payload"], validate=True).decode("utf-8"))
        return stmt if isinstance(stmt, dict) and isinstance(stmt.get("subject"), list) else None
    except Exception:  # noqa: BLE001 - anything unreadable simply gives no statement
        return None


# --- writing ---

def write_bundle(out_dir: Path, files: dict[str, bytes | Path], adapter_dir: Path | None,
                 attestations: list[tuple[str, str, dict]], summary: dict, signer: BundleSigner) -> BundleInfo:
    """Write the bundle directory `out_dir` and `out_dir.tar`; see the module docstring for the format.

    `files`: top-level payload name -> bytes or a file to copy. `adapter_dir`: copied to `adapter/`.
    `attestations`: (name, predicateType, predicate), written to `attestations/<name>.dsse.json`.
    `summary`: the bundle statement's predicate. Raises FileExistsError when the bundle exists.
    """
    out_dir = Path(out_dir)
    tar_path = _tar_path(out_dir)
    for name in files:
        _check_name(name, "payload file")
        if name in _RESERVED:
            raise ValueError(f"payload file name {name!r} is reserved in a bundle ({', '.join(sorted(_RESERVED))})")
    att_names = [a[0] for a in attestations]
    for name in att_names:
        _check_name(name, "attestation")
    if len(set(att_names)) != len(att_names):
        raise ValueError(f"duplicate attestation names: {sorted(n for n in set(att_names) if att_names.count(n) > 1)}")
    if adapter_dir is not None and not Path(adapter_dir).is_dir():
        raise ValueError(f"adapter directory {adapter_dir} does not exist")
    if out_dir.is_dir() and (out_dir / BUNDLE_FILE).is_file() and not tar_path.exists():
        write_tar(out_dir, tar_path)  # a writer killed after publishing the directory: its tar is derived from it
    if out_dir.exists() or tar_path.exists():
        raise FileExistsError(f"bundle {out_dir} already exists: a bundle is immutable once written")

    tmp, lock = work_dir(out_dir)  # held until published: `modelsmith home sweep` leaves it alone
    try:
        for name, content in files.items():
            _put(tmp / name, content)
        if adapter_dir is not None:
            for rel, src in _adapter_files(Path(adapter_dir)):
                _put(tmp / ADAPTER_DIR / rel, src)
        write_text(tmp / PUBLIC_KEY_FILE, signer.public_key_pem())
        covered = [subject(rel, tmp / rel) for rel in _walk(tmp)]
        for name, predicate_type, predicate in attestations:
            write_bytes(tmp / ATTESTATIONS_DIR / f"{name}{ENVELOPE_SUFFIX}",
                        sign_statement(statement(covered, predicate_type, predicate), signer))
        everything = [subject(rel, tmp / rel) for rel in _walk(tmp)]
        write_bytes(tmp / BUNDLE_FILE, sign_statement(statement(everything, BUNDLE_PREDICATE_TYPE, summary), signer))
        for d in (tmp / ADAPTER_DIR, tmp / ATTESTATIONS_DIR, tmp):
            if d.is_dir():
                fsync_dir(d)
        try:
            os.rename(tmp, out_dir)  # replaces only an empty directory; the check above refuses that too
        except OSError as e:
            raise FileExistsError(f"bundle {out_dir} already exists: a bundle is immutable once written") from e
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        named = _naming(e, out_dir)
        if named is e:
            raise
        raise named from e
    finally:
        os.close(lock)
    fsync_dir(out_dir.parent)
    try:
        write_tar(out_dir, tar_path)
    except BaseException as e:
        # A call that fails (e.g. a full disk) leaves no bundle: the directory goes too, renamed aside
        # first so that no half-removed bundle is ever visible. (A kill here leaves the directory,
        # whose tar the next write completes.)
        aside = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.failed")
        try:
            os.rename(out_dir, aside)
        except OSError:
            aside = out_dir
        shutil.rmtree(aside, ignore_errors=True)
        named = _naming(e, out_dir)
        if named is e:
            raise
        raise named from e
    digests = {rel: file_sha256(out_dir / rel) for rel in _walk(out_dir)}
    return BundleInfo(path=out_dir, tar=tar_path, digest=digests[BUNDLE_FILE], files=digests)


def _naming(e: BaseException, out_dir: Path) -> BaseException:
    """An OSError (e.g. ENOSPC) that also names the bundle not written; any other exception as it is."""
    if not isinstance(e, OSError) or isinstance(e, FileExistsError) or e.errno is None:
        return e
    return OSError(e.errno, f"{e.strerror}; bundle {out_dir} not written", e.filename)  # the errno's subclass


def write_tar(bundle_dir: Path, tar_path: Path | None = None) -> Path:
    """Write the deterministic tar of `bundle_dir` (default `<bundle_dir>.tar`), atomically."""
    bundle_dir = Path(bundle_dir)
    tar_path = Path(tar_path) if tar_path is not None else _tar_path(bundle_dir)
    top = bundle_dir.name
    entries = sorted({str(PurePosixPath(*Path(rel).parts[:i])) for rel in _walk(bundle_dir)
                      for i in range(1, len(Path(rel).parts) + 1)})

    def writer(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(_tarinfo(top, tarfile.DIRTYPE, 0))
            for rel in entries:
                path = bundle_dir / rel
                if path.is_dir():
                    tar.addfile(_tarinfo(f"{top}/{rel}", tarfile.DIRTYPE, 0))
                else:
                    with path.open("rb") as f:
                        tar.addfile(_tarinfo(f"{top}/{rel}", tarfile.REGTYPE, path.stat().st_size), f)

    write_with(tar_path, writer)
    return tar_path


def _tarinfo(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_path(bundle_dir: Path) -> Path:
    return bundle_dir.with_name(bundle_dir.name + ".tar")


MAX_NAME = 200  # characters of a payload or attestation name (file systems stop at 255 bytes)


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or not set(name) <= _NAME_CHARS:
        raise ValueError(f"{what} name {name!r}: use letters, digits, '.', '_' and '-' only (top level, no '/')")
    if len(name) > MAX_NAME:
        raise ValueError(f"{what} name {name[:40]!r}...: {len(name)} characters, at most {MAX_NAME}")


def _put(target: Path, content: bytes | Path) -> None:
    if isinstance(content, (bytes, bytearray)):
        write_bytes(target, bytes(content))
    else:
        src = Path(content)
        if not src.is_file():
            raise ValueError(f"{src} is not a file")
        write_with(target, lambda tmp: shutil.copyfile(src, tmp))


def _adapter_files(adapter_dir: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, file) for every file under `adapter_dir`, sorted; links to files are copied as files."""
    out = []
    for root, dirs, names in os.walk(adapter_dir):
        dirs.sort()
        for n in names:
            path = Path(root) / n
            if not path.is_file():
                raise ValueError(f"{path} in the adapter directory is not a regular file")
            out.append((path.relative_to(adapter_dir).as_posix(), path))
    return iter(sorted(out))


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under `root` (links not followed), sorted."""
    out = []
    for dirpath, dirs, names in os.walk(root):
        for n in names:
            out.append((Path(dirpath) / n).relative_to(root).as_posix())
    return sorted(out)


# --- verifying ---

def verify_bundle(path: Path, public_key_pem: str | None = None) -> VerifyReport:
    """Verify a bundle directory or its `.tar` offline; see the module docstring for what is checked.

    `public_key_pem`: the key you trust. Without it the bundle's own public_key.pem is used, which
    shows the bundle is intact but not who signed it (`warning` says so).
    """
    path = Path(path)
    if path.is_dir():
        return _verify_dir(path, public_key_pem)
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="modelsmith-bundle-") as tmp:
            try:
                root = _extract_tar(path, Path(tmp))
            except VerificationError as e:
                return VerifyReport(ok=False, digest="", errors=[str(e)], checked=0, statements={})
            return _verify_dir(root, public_key_pem)
    return VerifyReport(ok=False, digest="", errors=[f"{path}: no such bundle directory or tar"], checked=0,
                        statements={})


def _extract_tar(tar_path: Path, dest: Path) -> Path:
    """Extract `tar_path` into `dest` after checking every member: plain files and directories only,
    relative paths without '..', no duplicates. Returns the bundle root inside `dest`."""
    try:
        tar = tarfile.open(tar_path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise VerificationError(tar_path.name, f"not a readable tar ({e})") from None
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as e:
            raise VerificationError(tar_path.name, f"not a readable tar ({e})") from None
        seen: set[str] = set()
        problems = []
        for m in members:
            p = PurePosixPath(m.name)
            if m.name.startswith("/") or p.is_absolute() or "\\" in m.name or "\x00" in m.name:
                problems.append(f"member {m.name!r} is an absolute or non-POSIX path")
            elif ".." in p.parts:
                problems.append(f"member {m.name!r} escapes the bundle directory ('..')")
            elif m.issym() or m.islnk():
                problems.append(f"member {m.name!r} is a link (-> {m.linkname!r})")
            elif not (m.isreg() or m.isdir()):
                problems.append(f"member {m.name!r} is not a plain file or directory")
            elif str(p) in seen:
                problems.append(f"member {m.name!r} appears twice")
            seen.add(str(p))
        if problems:
            raise VerificationError(tar_path.name, "refused, nothing extracted: " + "; ".join(problems))
        try:
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("xb") as out:
                    shutil.copyfileobj(tar.extractfile(m), out)
        except (OSError, tarfile.TarError) as e:
            raise VerificationError(tar_path.name, f"cannot extract member {m.name!r} ({e})") from None
    top = list(dest.iterdir())
    if not (dest / BUNDLE_FILE).exists() and len(top) == 1 and top[0].is_dir() and not top[0].is_symlink():
        return top[0]
    return dest


def _verify_dir(root: Path, public_key_pem: str | None) -> VerifyReport:
    errors: list[str] = []
    statements: dict[str, dict] = {}
    warning = None
    present, links, special = _files_and_links(root)
    errors += [f"{rel}: is a symbolic link, not a file" for rel in links]
    errors += [f"{rel}: is not a regular file (a FIFO, socket or device); a bundle holds files only" for rel in special]
    digest = file_sha256(root / BUNDLE_FILE) if BUNDLE_FILE in present else ""

    if public_key_pem is None:
        warning = (f"no public key given: verified with the bundle's own {PUBLIC_KEY_FILE}, which shows the bundle "
                   f"is intact, not who signed it; pass the key you trust")
        if PUBLIC_KEY_FILE in present:
            public_key_pem = (root / PUBLIC_KEY_FILE).read_bytes().decode("ascii", errors="replace")
    key_id = ""
    if public_key_pem is None:
        errors.append(f"{PUBLIC_KEY_FILE}: missing, and no public key given to verify with")
    else:
        try:
            key_id = _verifying_key(public_key_pem, "public key").keyid
        except VerificationError as e:
            name = PUBLIC_KEY_FILE if warning else "public key"
            errors.append(f"{name}: {e.message}")
    cached: dict[str, str] = {}

    def file_digest(rel: str) -> str:
        if rel not in cached:
            cached[rel] = file_sha256(root / rel)
        return cached[rel]

    # The bundle statement: signed, then its subjects against the files.
    signatures = 0
    bundle_stmt = None
    if BUNDLE_FILE not in present:
        errors.append(f"{BUNDLE_FILE}: missing")
    else:
        data = (root / BUNDLE_FILE).read_bytes()
        if key_id:
            signatures += 1
            try:
                bundle_stmt = open_envelope(data, public_key_pem, BUNDLE_FILE)
                statements[BUNDLE_FILE] = bundle_stmt
                if bundle_stmt["predicateType"] != BUNDLE_PREDICATE_TYPE:
                    errors.append(f"{BUNDLE_FILE}: predicateType is {bundle_stmt['predicateType']!r}, "
                                  f"expected {BUNDLE_PREDICATE_TYPE}")
            except VerificationError as e:
                errors.append(str(e))
        if bundle_stmt is None:  # unverified: read only to say which files differ from it
            bundle_stmt = _unverified_statement(data)
            if bundle_stmt is None:
                errors.append(f"{BUNDLE_FILE}: its statement cannot be read, so no file can be checked against it")

    checked = 0
    reported: set[str] = set()
    if bundle_stmt is not None:
        expected = _subject_digests(bundle_stmt, BUNDLE_FILE, errors)
        for rel in sorted(set(expected) | (present - {BUNDLE_FILE})):
            if rel not in present:
                errors.append(f"{rel}: missing" + (" (a link is there)" if rel in links else ""))
                reported.add(rel)
            elif rel not in expected:
                errors.append(f"{rel}: not a subject of {BUNDLE_FILE} (extra file)")
                reported.add(rel)
            else:
                checked += 1
                if file_digest(rel) != expected[rel]:
                    errors.append(f"{rel}: sha256 mismatch (expected {_short(expected[rel])}, "
                                  f"found {_short(file_digest(rel))})")
                    reported.add(rel)
        if BUNDLE_FILE in expected:
            errors.append(f"{BUNDLE_FILE}: names itself as a subject")

    # The attestations: each signed, each covering exactly the payload, adapter and key files.
    covered = {rel for rel in present if rel != BUNDLE_FILE and not rel.startswith(f"{ATTESTATIONS_DIR}/")}
    for rel in sorted(r for r in present if r.startswith(f"{ATTESTATIONS_DIR}/")):
        if not key_id:
            continue
        signatures += 1
        try:
            stmt = open_envelope((root / rel).read_bytes(), public_key_pem, rel)
        except VerificationError as e:
            errors.append(str(e))
            continue
        statements[rel] = stmt
        subjects = _subject_digests(stmt, rel, errors)
        for name in sorted(set(subjects) | covered):
            if name not in subjects:
                if name not in reported:
                    errors.append(f"{rel}: does not cover {name}")
            elif name not in present:
                if name not in reported:
                    errors.append(f"{rel}: names {name}, which is not in the bundle")
            elif name not in covered:
                errors.append(f"{rel}: names {name}, which an attestation must not cover")
            elif name not in reported and file_digest(name) != subjects[name]:
                errors.append(f"{rel}: subject {name} sha256 mismatch (expected {_short(subjects[name])}, "
                              f"found {_short(file_digest(name))})")

    # The convenience copy of the key should be the key the bundle was verified with.
    if key_id and not warning and PUBLIC_KEY_FILE in present and PUBLIC_KEY_FILE not in reported:
        try:
            held = key_id_for((root / PUBLIC_KEY_FILE).read_text(encoding="ascii"))
        except (ValueError, UnicodeError):
            held = "(unreadable)"
        if held != key_id:
            errors.append(f"{PUBLIC_KEY_FILE}: holds key {held}, not the key {key_id} the bundle verifies with")

    return VerifyReport(ok=not errors, digest=digest, errors=errors, checked=checked, statements=statements,
                        signatures=signatures, key_id=key_id, warning=warning)


def _files_and_links(root: Path) -> tuple[set[str], set[str], set[str]]:
    """(regular files, symbolic links, anything else but directories), relative to `root`; nothing is
    opened, so a FIFO cannot block the verifier."""
    files, links, special = set(), set(), set()
    for dirpath, dirs, names in os.walk(root):
        for n in names + [d for d in dirs if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / n
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                links.add(rel)
            elif stat.S_ISREG(mode):
                files.add(rel)
            else:
                special.add(rel)
    return files, links, special


def _subject_digests(stmt: dict, name: str, errors: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in stmt.get("subject") or []:
        try:
            sname, sdigest = s["name"], s["digest"]["sha256"]
            if not isinstance(sname, str) or not isinstance(sdigest, str):
                raise TypeError
        except (KeyError, TypeError):
            errors.append(f"{name}: a subject without a name and a sha256 digest: {s!r}")
            continue
        if sname in out:
            errors.append(f"{name}: subject {sname} appears twice")
        out[sname] = sdigest
    return out


def _short(hex_digest: str) -> str:
    return f"{hex_digest[:16]}…"
