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
    check = _DirCheck(root)
    pem = check.key(public_key_pem)
    bundle_stmt = check.bundle_statement(pem)
    if bundle_stmt is not None:
        check.subjects(bundle_stmt)
    check.attestations(pem)
    check.key_copy()
    return VerifyReport(ok=not check.errors, digest=check.digest, errors=check.errors, checked=check.checked,
                        statements=check.statements, signatures=check.signatures, key_id=check.key_id,
                        warning=check.warning)


class _DirCheck:
    """One verification of an extracted bundle directory; each step appends what it finds to `errors`, in the
    order docs/evidence-bundle.md lists them, and a file already reported is not reported again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.present, self.links, special = _files_and_links(root)
        self.errors = [f"{rel}: is a symbolic link, not a file" for rel in self.links]
        self.errors += [f"{rel}: is not a regular file (a FIFO, socket or device); a bundle holds files only"
                        for rel in special]
        self.digest = file_sha256(root / BUNDLE_FILE) if BUNDLE_FILE in self.present else ""
        self.statements: dict[str, dict] = {}
        self.reported: set[str] = set()
        self.warning: str | None = None
        self.key_id = ""
        self.signatures = self.checked = 0
        self._digests: dict[str, str] = {}

    def file_digest(self, rel: str) -> str:
        if rel not in self._digests:
            self._digests[rel] = file_sha256(self.root / rel)
        return self._digests[rel]

    def key(self, public_key_pem: str | None) -> str | None:
        """The key to verify with: the one given, else (with a warning) the bundle's own copy."""
        if public_key_pem is None:
            self.warning = (f"no public key given: verified with the bundle's own {PUBLIC_KEY_FILE}, which shows the "
                            f"bundle is intact, not who signed it; pass the key you trust")
            if PUBLIC_KEY_FILE in self.present:
                public_key_pem = (self.root / PUBLIC_KEY_FILE).read_bytes().decode("ascii", errors="replace")
        if public_key_pem is None:
            self.errors.append(f"{PUBLIC_KEY_FILE}: missing, and no public key given to verify with")
            return None
        try:
            self.key_id = verifying_key(public_key_pem, "public key").keyid
        except VerificationError as e:
            self.errors.append(f"{PUBLIC_KEY_FILE if self.warning else 'public key'}: {e.message}")
        return public_key_pem

    def bundle_statement(self, pem: str | None) -> dict | None:
        """The bundle statement, verified when there is a key; else read unverified, only to say which files differ."""
        if BUNDLE_FILE not in self.present:
            self.errors.append(f"{BUNDLE_FILE}: missing")
            return None
        data = (self.root / BUNDLE_FILE).read_bytes()
        stmt = None
        if self.key_id:
            self.signatures += 1
            try:
                stmt = open_envelope(data, pem, BUNDLE_FILE)
                self.statements[BUNDLE_FILE] = stmt
                if stmt["predicateType"] != BUNDLE_PREDICATE_TYPE:
                    self.errors.append(f"{BUNDLE_FILE}: predicateType is {stmt['predicateType']!r}, "
                                       f"expected {BUNDLE_PREDICATE_TYPE}")
            except VerificationError as e:
                self.errors.append(str(e))
        if stmt is None:
            stmt = unverified_statement(data)
            if stmt is None:
                self.errors.append(f"{BUNDLE_FILE}: its statement cannot be read, so no file can be checked against it")
        return stmt

    def subjects(self, bundle_stmt: dict) -> None:
        """Every file is a subject of the bundle statement, with its digest, and every subject is there."""
        expected = _subject_digests(bundle_stmt, BUNDLE_FILE, self.errors)
        for rel in sorted(set(expected) | (self.present - {BUNDLE_FILE})):
            if rel not in self.present:
                self.errors.append(f"{rel}: missing" + (" (a link is there)" if rel in self.links else ""))
                self.reported.add(rel)
            elif rel not in expected:
                self.errors.append(f"{rel}: not a subject of {BUNDLE_FILE} (extra file)")
                self.reported.add(rel)
            else:
                self.checked += 1
                if self.file_digest(rel) != expected[rel]:
                    self.errors.append(f"{rel}: sha256 mismatch (expected {_short(expected[rel])}, "
                                       f"found {_short(self.file_digest(rel))})")
                    self.reported.add(rel)
        if BUNDLE_FILE in expected:
            self.errors.append(f"{BUNDLE_FILE}: names itself as a subject")

    def attestations(self, pem: str | None) -> None:
        """Each attestation signed, each covering exactly the payload, adapter and key files."""
        if not self.key_id:
            return
        covered = {rel for rel in self.present if rel != BUNDLE_FILE and not rel.startswith(f"{ATTESTATIONS_DIR}/")}
        for rel in sorted(r for r in self.present if r.startswith(f"{ATTESTATIONS_DIR}/")):
            self.signatures += 1
            try:
                stmt = open_envelope((self.root / rel).read_bytes(), pem, rel)
            except VerificationError as e:
                self.errors.append(str(e))
                continue
            self.statements[rel] = stmt
            subjects = _subject_digests(stmt, rel, self.errors)
            for name in sorted(set(subjects) | covered):
                self._attested(rel, name, subjects, covered)

    def _attested(self, rel: str, name: str, subjects: dict[str, str], covered: set[str]) -> None:
        if name not in subjects:
            if name not in self.reported:
                self.errors.append(f"{rel}: does not cover {name}")
        elif name not in self.present:
            if name not in self.reported:
                self.errors.append(f"{rel}: names {name}, which is not in the bundle")
        elif name not in covered:
            self.errors.append(f"{rel}: names {name}, which an attestation must not cover")
        elif name not in self.reported and self.file_digest(name) != subjects[name]:
            self.errors.append(f"{rel}: subject {name} sha256 mismatch (expected {_short(subjects[name])}, "
                               f"found {_short(self.file_digest(name))})")

    def key_copy(self) -> None:
        """The convenience copy of the key should be the key the bundle was verified with."""
        if not (self.key_id and not self.warning and PUBLIC_KEY_FILE in self.present
                and PUBLIC_KEY_FILE not in self.reported):
            return
        try:
            held = key_id_for((self.root / PUBLIC_KEY_FILE).read_text(encoding="ascii"))
        except (ValueError, UnicodeError):
            held = "(unreadable)"
        if held != self.key_id:
            self.errors.append(f"{PUBLIC_KEY_FILE}: holds key {held}, not the key {self.key_id} the bundle verifies with")


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
