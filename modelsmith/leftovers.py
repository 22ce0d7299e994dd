"""What killed writes leave in the Modelsmith home, and removing it.

Every writer works under a hidden temp name beside its target (`modelsmith.atomic`:
`.<target>.<8 random chars>.tmp`; an old directory being replaced, `.<target>.<random>.old`; a
bundle that failed after publishing, `.<target>.<pid>.failed`) and renames it into place when done.
A run killed with SIGKILL (or a lost machine) cannot clean up, so the temp file or work directory
stays: readers skip it, but a killed merge of a 7B adapter is gigabytes. `sweep` removes them when
no live writer holds them (`atomic.hold`: the lock dies with its process) and nothing in them has
changed for a while. One is kept whatever its age: a `.old` directory whose target is missing is the
last published version of it (a replace killed between its two renames).
"""

import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelsmith.atomic import in_use

LEFTOVER_NAME = re.compile(r"^\.(?P<target>.+)\.(?:[a-z0-9_]{8}\.(?:tmp|old)|[0-9]+\.failed)$")
DEFAULT_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class Leftover:
    path: Path
    target: Path  # what the killed writer was writing
    size_bytes: int
    idle_s: float  # since anything in it was last written

    def as_json(self) -> dict[str, str | int | float]:
        return {"path": str(self.path), "target": str(self.target), "size_bytes": self.size_bytes,
                "idle_s": round(self.idle_s, 1)}


@dataclass
class SweepReport:
    removed: list[Leftover] = field(default_factory=list)  # or, in a dry run, would be
    kept: list[tuple[Leftover, str]] = field(default_factory=list)  # with the reason
    failed: list[tuple[Leftover, str]] = field(default_factory=list)  # with the error

    @property
    def removed_bytes(self) -> int:
        return sum(f.size_bytes for f in self.removed)


def _size_and_newest(path: Path) -> tuple[int, float]:
    """Total bytes and newest mtime of a file or a directory tree (symlinks not followed)."""
    st = path.lstat()
    if not path.is_dir() or path.is_symlink():
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                s = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed meanwhile
                continue
            size += 0 if stat.S_ISDIR(s.st_mode) else s.st_size
            newest = max(newest, s.st_mtime)
    return size, newest


def find_leftovers(root: str | os.PathLike[str], older_than_s: float = DEFAULT_AGE_S,
                   now: float | None = None) -> list[Leftover]:
    """Temp files and work directories under `root` unchanged for at least `older_than_s` seconds."""
    root, now = Path(root), time.time() if now is None else now
    found: list[Leftover] = []
    for current, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            match = LEFTOVER_NAME.match(name)
            if not match:
                continue
            path = Path(current) / name
            if name in dirs:
                dirs.remove(name)  # a leftover goes whole; never look inside it
            try:
                size, newest = _size_and_newest(path)
            except FileNotFoundError:  # its writer finished (renamed it) meanwhile
                continue
            if now - newest >= older_than_s:
                found.append(Leftover(path, path.with_name(match["target"]), size, now - newest))
    return found


def _remove(path: Path) -> str | None:
    """Remove a file or a tree; the first error, or None."""
    errors: list[str] = []

    def note(_func, failed_path, exc) -> None:  # exc: the exception (onexc) or its sys.exc_info() (onerror)
        errors.append(f"{failed_path}: {exc if isinstance(exc, BaseException) else exc[1]}")

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, **({"onexc": note} if sys.version_info >= (3, 12) else {"onerror": note}))
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            errors.append(f"{path}: {e}")
    return errors[0] if errors else None


def sweep(root: str | os.PathLike[str], older_than_s: float = DEFAULT_AGE_S, dry_run: bool = False) -> SweepReport:
    """Remove (unless `dry_run`) the leftovers `find_leftovers` reports that no live writer holds."""
    report = SweepReport()
    for leftover in find_leftovers(root, older_than_s):
        if in_use(leftover.path):
            report.kept.append((leftover, "in use by a running writer"))
        elif leftover.path.name.endswith(".old") and not os.path.lexists(leftover.target):
            report.kept.append((leftover, f"the last published version of {leftover.target}, which is missing (a "
                                          f"replace killed between its two renames): rename it back, or re-run"))
        elif dry_run:
            report.removed.append(leftover)
        elif (error := _remove(leftover.path)) is not None:
            report.failed.append((leftover, error))
        else:
            report.removed.append(leftover)
    return report
