"""Verify an evidence bundle offline: its directory or its `.tar`, with the key you trust.

What is checked is in docs/evidence-bundle.md ("Verification"). Every error names the file and what
failed; when the bundle statement does not verify, its unverified subjects are still read so that the
report says which file changed.
"""

import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelsmith.attest import ATTESTATIONS_DIR, BUNDLE_FILE, BUNDLE_PREDICATE_TYPE, PUBLIC_KEY_FILE
from modelsmith.dsse import VerificationError, open_envelope, unverified_statement, verifying_key
from modelsmith.engines.signer import key_id_for
from modelsmith.model_dir import file_sha256


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


def verify_bundle(path: Path, public_key_pem: str | None = None) -> VerifyReport:
    """Verify a bundle directory or its `.tar` offline; docs/evidence-bundle.md says what is checked.

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
            key_id = verifying_key(public_key_pem, "public key").keyid
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
            bundle_stmt = unverified_statement(data)
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
