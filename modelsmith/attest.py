"""Evidence bundles, written once: payload files, the adapter, signed attestations, the bundle statement.

The format is docs/evidence-bundle.md; `modelsmith.bundle_verify` checks a bundle offline and
`modelsmith.dsse` signs its envelopes. A bundle is built in a work directory and renamed into place;
its deterministic `.tar` follows, and a failed write leaves neither.
"""

import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelsmith.atomic import fsync_dir, work_dir, write_bytes, write_text, write_with
from modelsmith.dsse import EnvelopeSigner, sign_statement, statement, subject
from modelsmith.model_dir import file_sha256

BUNDLE_PREDICATE_TYPE = "https://modelsmith.dev/evidence-bundle/v1"
BUNDLE_FILE = "bundle.dsse.json"
PUBLIC_KEY_FILE = "public_key.pem"
ADAPTER_DIR = "adapter"
ATTESTATIONS_DIR = "attestations"
ENVELOPE_SUFFIX = ".dsse.json"
_RESERVED = {BUNDLE_FILE, PUBLIC_KEY_FILE, ADAPTER_DIR, ATTESTATIONS_DIR}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class BundleInfo:
    path: Path  # the bundle directory
    tar: Path  # <path>.tar
    digest: str  # SHA-256 hex of bundle.dsse.json
    files: dict[str, str]  # every file in the bundle (bundle.dsse.json included) -> SHA-256 hex


def write_bundle(out_dir: Path, files: dict[str, bytes | Path], adapter_dir: Path | None,
                 attestations: list[tuple[str, str, dict]], summary: dict, signer: EnvelopeSigner) -> BundleInfo:
    """Write the bundle directory `out_dir` and `out_dir.tar`; see docs/evidence-bundle.md for the format.

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
