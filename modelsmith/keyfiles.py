"""Private key files: created once with mode 0600, and refused when group or others may read them.

Shared by the Ed25519 signer (`modelsmith.engines.signer`) and the model-signing P-256 key
(`modelsmith.model_signature`), so both keys are born and guarded the same way.
"""

import fcntl
import os
import tempfile
from pathlib import Path

from modelsmith.atomic import fsync_dir


class KeyPermissionError(PermissionError):
    """The private key file is open to group or others: it is refused, not used."""


def refuse_if_exposed(path: Path, what: str = "signing key") -> None:
    """Refuse a private key that group or others may read (or write): as ssh does, a key someone else can
    read is no longer this home's alone. The message names the file and its mode, never its content."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyPermissionError(
            f"{path}: the {what} is accessible by group or others (mode {mode:04o}); it must be readable "
            f"by its owner only. Fix it with `chmod 600 {path}`, and replace the key if others may have read it")


def create_exclusive(target: Path, data: bytes) -> None:
    """Publish `data` at `target` atomically (temp file, fsync, link) with mode 0600, unless it exists.

    Not `modelsmith.atomic.write_bytes`: that renames over the target, so two first uses at once
    could replace a key the other had already signed with. `os.link` fails instead, and the loser
    loads the winner's key.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # mode 0600
    fcntl.flock(fd, fcntl.LOCK_SH)  # in use (`modelsmith.atomic.hold`) until written
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return
        fsync_dir(target.parent)
    finally:
        os.unlink(tmp)
