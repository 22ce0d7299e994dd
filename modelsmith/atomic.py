"""Atomic writes: a temp file in the target's directory, fsync, then rename.

A run killed at any point leaves either the old file or the new one, never half of one; what it
may leave besides is a temp file with a hidden name (`.<name>.<random>.tmp`), which readers skip
and `modelsmith home sweep` removes (`modelsmith.leftovers`). A writer holds a shared lock on its
temp file or work directory (`hold`) while it works, so the sweep never takes one in use; the kernel
drops the lock when the process dies. A write that fails (a full disk, a file size limit) removes
its temp file and names the target.
"""

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to `target`; on success fsync it and rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    fcntl.flock(fd, fcntl.LOCK_SH)  # in use until closed (see `hold`)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except OSError as e:
        if e.errno is None:
            raise
        # A failed write(2) or fsync(2) names no file ("[Errno 28] No space left on device"), a failed copy
        # names its source: name the error code and the target (OSError(errno, ...) keeps the subclass).
        raise OSError(e.errno, f"{e.strerror} ({errno.errorcode.get(e.errno, e.errno)}) writing {target}",
                      e.filename) from e
    except Exception as e:  # e.g. a parquet writer's own error on a full disk, which names no file
        e.add_note(f"while writing {target} (atomically: nothing was published)")
        raise
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


def hold(path: str | os.PathLike[str]) -> int:
    """A shared lock on the temp file or work directory `path`, held while the returned descriptor is
    open: `modelsmith home sweep` leaves it alone. Close the descriptor when done (a killed process
    closes it by dying)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a live writer holds `path` (`hold`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def work_dir(target: str | os.PathLike[str]) -> tuple[Path, int]:
    """A hidden work directory beside `target` (`.<name>.<random>.tmp`), held (`hold`): the path and
    the descriptor to close when the work is published or abandoned."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    return work, hold(work)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_with(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` (e.g. a parquet writer) and publish the result atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)


def replace_dir(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Publish the finished directory `src` (a sibling of `target`) at `target`, replacing any old one.

    Every file of `src` is fsync'd first. An existing `target` is first renamed aside to a hidden temp
    name and removed only once `src` is in place, so a kill leaves at `target` the old directory,
    nothing (between the two renames), or the new one; never a half-deleted or half-written one.
    """
    src, target = Path(src), Path(target)
    for root, _, names in os.walk(src):
        for name in names:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.rename(target, old)  # over the empty temp directory: atomic
    os.rename(src, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (the directory's own metadata)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
