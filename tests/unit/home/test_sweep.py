"""`modelsmith home sweep`: what killed writes left is removed once idle, and nothing else ever is."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from modelsmith.cli import main
from modelsmith.leftovers import find_leftovers, sweep

HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    """Set the mtime of `path` and everything under it `seconds` into the past."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then), follow_symlinks=False)


def _killed_write(target: Path) -> Path:
    """A real `atomic.write_with` SIGKILLed while its writer is mid-file: returns the temp it left."""
    code = ("import sys, time\nfrom modelsmith.atomic import write_with\n"
            "def writer(tmp):\n    tmp.write_bytes(b'half of it')\n    print('writing', flush=True)\n    time.sleep(60)\n"
            f"write_with({str(target)!r}, writer)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[3])
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    (tmp,) = target.parent.glob(f".{target.name}.*.tmp")
    return tmp


def _home(tmp_path: Path) -> dict[str, Path]:
    home = tmp_path / "home"
    (home / "pins" / "run1").mkdir(parents=True)
    published = home / "pins" / "run1" / "summary.json"
    published.write_text("{}")
    temp = _killed_write(home / "pins" / "run1" / "metrics.parquet")
    work = home / "models" / ".adapter.k3x_9abc"  # a training work directory (mkdtemp, no suffix)
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "weights.bin").write_bytes(b"\0" * 1000)
    live = home / "models" / ".base.q7w2e4r1"  # a build still at work: an old directory, a fresh file in it
    live.mkdir()
    (live / "step.bin").write_bytes(b"\0" * 10)
    own = [home / ".gitignore", home / "dagster" / ".telemetry", home / ".cache.d"]  # hidden, not ours to remove
    for p in own:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for p in (published, temp, work, *own):
        _age(p, 3 * 24 * HOUR)
    os.utime(live, (time.time() - 3 * 24 * HOUR,) * 2)
    return {"home": home, "published": published, "temp": temp, "work": work, "live": live, "own": own}


def test_a_killed_write_and_a_killed_training_are_swept_once_idle_and_nothing_else(tmp_path):
    h = _home(tmp_path)
    assert h["temp"].read_bytes() == b"half of it"
    found = find_leftovers(h["home"])
    assert sorted(f.path for f in found) == sorted([h["temp"], h["work"]])
    by_path = {f.path: f for f in found}
    assert by_path[h["temp"]].target == h["home"] / "pins" / "run1" / "metrics.parquet"
    assert by_path[h["work"]].target.name == "adapter" and by_path[h["work"]].size_bytes == 1000
    assert all(f.idle_s > 2 * 24 * HOUR for f in found)

    assert [f.path for f in sweep(h["home"], dry_run=True)] == [f.path for f in found]
    assert h["temp"].exists() and h["work"].exists()  # a dry run removes nothing
    assert sorted(f.path for f in sweep(h["home"])) == sorted([h["temp"], h["work"]])
    assert not h["temp"].exists() and not h["work"].exists()
    assert h["published"].exists() and h["live"].is_dir() and all(p.exists() for p in h["own"])
    assert sweep(h["home"]) == []


def test_a_fresh_leftover_is_kept_until_it_has_been_idle_long_enough(tmp_path):
    h = _home(tmp_path)
    _age(h["temp"], 2 * HOUR)
    assert [f.path for f in find_leftovers(h["home"])] == [h["work"]]  # the default: a day idle
    assert h["temp"] in [f.path for f in find_leftovers(h["home"], older_than_s=HOUR)]
    assert h["live"] in [f.path for f in find_leftovers(h["home"], older_than_s=0)]


def test_the_cli_lists_then_removes_and_reports_json(tmp_path):
    h = _home(tmp_path)
    runner = CliRunner()
    dry = runner.invoke(main, ["home", "sweep", "--home", str(h["home"]), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would remove {h['temp']}" in dry.output and "2 leftover(s), 1010 bytes (dry run" in dry.output
    assert h["temp"].exists()
    done = runner.invoke(main, ["home", "sweep", "--home", str(h["home"]), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["removed"] is True and summary["bytes"] == 1010
    assert sorted(f["path"] for f in summary["leftovers"]) == sorted(map(str, (h["temp"], h["work"])))
    assert not h["temp"].exists() and h["live"].exists()
    bad = runner.invoke(main, ["home", "sweep", "--home", str(h["home"]), "--older-than", "-1"])
    assert bad.exit_code == 2 and "--older-than" in bad.output
