"""Helpers for the fault drills: child processes killed with SIGKILL at chosen points, and what they left.

A drill runs real work in a child Python process and sends it a real SIGKILL. Where to kill it is
chosen in one of two ways, both outside the source under test:

* by watching the filesystem from the parent (a work directory appears, then a measured delay);
* by a *trap* armed in the child before the work starts (`arm`, from the environment variable
  `DRILL_TRAP`): the child patches one function of the standard library or of Modelsmith so that,
  at the chosen call, it writes a marker file and stops there. The parent sees the marker and kills
  the child. A trap is the exact moment between two steps, e.g. "the temp file is fsync'd, the
  rename has not happened", which timing alone only hits by luck.

Traps (a JSON list in `DRILL_TRAP`; the marker path is `DRILL_MARKER`):

    {"kind": "rename", "name": "summary.json", "nth": 1}   before the nth os.replace/os.rename to a
                                                           target whose base name matches (fnmatch)
    {"kind": "after", "target": "modelsmith.audit:append"} after a call to module:function returns
    {"kind": "before", "target": "modelsmith.audit:append"} before a call to module:function
    {"kind": "unlink", "under": ["adapter"], "nth": 1}     after the nth file removed from a directory
                                                           whose path has a component matching `under`
"""

import fnmatch
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# --- in the child ---

def arm() -> None:
    """Install the traps named in DRILL_TRAP (nothing when it is unset)."""
    spec = os.environ.get("DRILL_TRAP")
    if not spec:
        return
    marker = Path(os.environ["DRILL_MARKER"])
    for trap in json.loads(spec):
        _ARMERS[trap["kind"]](trap, marker)


def _stop(marker: Path, what: str) -> None:
    """Tell the parent where we are, then wait to be killed."""
    with open(marker, "w", encoding="utf-8") as f:  # plain open: os.replace may be the patched function
        f.write(what)
    while True:
        time.sleep(60)


def _arm_rename(trap: dict, marker: Path) -> None:
    pattern, nth, seen = trap["name"], int(trap.get("nth", 1)), [0]
    for name in ("replace", "rename"):
        original = getattr(os, name)

        def patched(src, dst, *args, _original=original, _name=name, **kwargs):
            if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern):
                seen[0] += 1
                if seen[0] == nth:
                    _stop(marker, f"before os.{_name}({os.fspath(src)!r}, {os.fspath(dst)!r})")
            return _original(src, dst, *args, **kwargs)

        setattr(os, name, patched)


def _arm_call(trap: dict, marker: Path) -> None:
    module_name, attr = trap["target"].split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    after = trap["kind"] == "after"

    def patched(*args, **kwargs):
        if not after:
            _stop(marker, f"before {trap['target']}")
        result = original(*args, **kwargs)
        _stop(marker, f"after {trap['target']}")
        return result

    setattr(module, attr, patched)


def _arm_unlink(trap: dict, marker: Path) -> None:
    under, nth, seen = trap["under"], int(trap.get("nth", 1)), [0]
    patterns = [under] if isinstance(under, str) else list(under)
    original = os.unlink

    def patched(path, *args, dir_fd=None, **kwargs):
        result = original(path, *args, dir_fd=dir_fd, **kwargs)
        where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.path.dirname(os.fspath(path))
        if any(fnmatch.fnmatch(part, p) for part in Path(where).parts for p in patterns):
            seen[0] += 1
            if seen[0] == nth:
                _stop(marker, f"after unlinking {os.fspath(path)!r} in {where}")
        return result

    os.unlink = patched
    os.remove = patched


_ARMERS = {"rename": _arm_rename, "after": _arm_call, "before": _arm_call, "unlink": _arm_unlink}


# --- in the parent ---

@dataclass
class Killed:
    where: str  # what the marker said, or what the parent saw
    after_s: float  # from start to the kill
    returncode: int


class Child:
    """A child Python process running `code` in the repository root, its output in files beside `workdir`."""

    def __init__(self, code: str, workdir: Path, env: dict[str, str] | None = None, trap: list[dict] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.marker = workdir / "drill.marker"
        self.marker.unlink(missing_ok=True)
        self.out, self.err = workdir / "child.out", workdir / "child.err"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("DRILL_TRAP", None)
        if trap:
            full_env |= {"DRILL_TRAP": json.dumps(trap), "DRILL_MARKER": str(self.marker)}
        preamble = "from tests.drills.fault_support import arm; arm()\n"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([PYTHON, "-c", preamble + code, *args], cwd=REPO, env=full_env,
                                         stdout=out, stderr=err, start_new_session=True)
        self.started = time.monotonic()

    def output(self) -> str:
        return (self.out.read_text(errors="replace") + self.err.read_text(errors="replace"))[-3000:]

    def kill_when(self, condition: Callable[[], str | bool], timeout: float = 180.0, delay: float = 0.0,
                  poll: float = 0.005) -> Killed:
        """SIGKILL the child `delay` seconds after `condition()` first holds; fail if it exits before."""
        deadline = time.monotonic() + timeout
        while True:
            seen = condition()
            if seen:
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"the child exited ({self.proc.returncode}) before the kill point:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no kill point within {timeout}s:\n{self.output()}")
            time.sleep(poll)
        if delay:
            time.sleep(delay)
        if self.proc.poll() is not None:
            raise AssertionError(f"the child exited ({self.proc.returncode}) before the kill:\n{self.output()}")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL, self.output()
        return Killed(seen if isinstance(seen, str) else "condition held", time.monotonic() - self.started,
                      self.proc.returncode)

    def kill_at_trap(self, timeout: float = 180.0) -> Killed:
        def reached() -> str | bool:
            return self.marker.is_file() and self.marker.stat().st_size > 0 and self.marker.read_text()

        return self.kill_when(reached, timeout)

    def finish(self, timeout: float = 300.0) -> str:
        """Wait for a normal exit; the output, or a failure with it."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 0, self.output()
        return self.output()


def hidden(root: Path) -> list[str]:
    """Entries under `root` whose own name starts with '.': the temp names writers use, which readers skip."""
    found = []
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            if n.startswith("."):
                found.append((Path(dirpath) / n).relative_to(root).as_posix())
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


def visible(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` whose path has no hidden component: what a reader sees."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith("."):
                path = Path(dirpath) / n
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
