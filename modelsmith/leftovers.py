"""What killed writes leave in the Modelsmith home, and removing it.

Every writer works under a hidden temp name beside its target (`modelsmith.atomic`, the bundle,
base-model and adapter builders: `.<target>.<8 random chars>` plus `.tmp` or `.old` for some) and
renames it into place when done. A run killed with SIGKILL (or a lost machine) cannot clean up, so
the temp file or work directory stays: readers skip it, but a killed merge of a 7B adapter is
gigabytes. `sweep` removes such leftovers once nothing has touched them for a while, so a writer
still at work (whose directory keeps getting new files) is never swept from under it.
"""

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

# tempfile's names: the prefix we give, 8 characters from [a-z0-9_], the suffix we give.
LEFTOVER_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}(?:\.tmp|\.old)?$")
DEFAULT_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class Leftover:
    path: Path
    target: Path  # what the killed writer was writing
    size_bytes: int
    idle_s: float  # since anything in it was last written

    def as_json(self) -> dict:
        return {"path": str(self.path), "target": str(self.target), "size_bytes": self.size_bytes,
                "idle_s": round(self.idle_s, 1)}


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
            size += s.st_size if name in files else 0
            newest = max(newest, s.st_mtime)
    return size, newest


def find_leftovers(root: str | os.PathLike[str], older_than_s: float = DEFAULT_AGE_S,
                   now: float | None = None) -> list[Leftover]:
    """Hidden temp files and work directories under `root` idle for at least `older_than_s` seconds."""
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


def sweep(root: str | os.PathLike[str], older_than_s: float = DEFAULT_AGE_S, dry_run: bool = False) -> list[Leftover]:
    """Remove (unless `dry_run`) and return the leftovers `find_leftovers` reports."""
    found = find_leftovers(root, older_than_s)
    if not dry_run:
        for leftover in found:
            if leftover.path.is_dir() and not leftover.path.is_symlink():
                shutil.rmtree(leftover.path, ignore_errors=True)
            else:
                leftover.path.unlink(missing_ok=True)
    return found
