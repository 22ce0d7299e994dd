"""`modelsmith home sweep`: what killed writes left is removed once idle and unheld, and nothing else ever is."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from modelsmith.atomic import in_use, work_dir
from modelsmith_cli.cli import main
from modelsmith.leftovers import find_leftovers, sweep

HOUR = 3600.0
REPO = Path(__file__).resolve().parents[3]


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
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "writing"
    (tmp,) = target.parent.glob(f".{target.name}.*.tmp")
    assert in_use(tmp)  # the live writer holds it
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert not in_use(tmp)  # the lock died with the writer
    return tmp


def _home(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    (home / "pins" / "run1").mkdir(parents=True)
    published = home / "pins" / "run1" / "summary.json"
    published.write_text("{}")
    temp = _killed_write(home / "pins" / "run1" / "metrics.parquet")
    work = home / "adapters" / ".adapter.k3x_9abc.tmp"  # a killed training's work directory
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "weights.bin").write_bytes(b"\0" * 1000)
    held, lock = work_dir(home / "models" / "base")  # a live build: held, nothing written for days
    (held / "step.bin").write_bytes(b"\0" * 10)
    old = home / "adapters" / ".other.abcd1234.old"  # a replace killed after publishing the new one
    old.mkdir()
    (home / "adapters" / "other").mkdir()
    orphan = home / "adapters" / ".gone.wxyz5678.old"  # killed between the two renames: the only copy
    orphan.mkdir()
    (orphan / "adapter_model.safetensors").write_bytes(b"\1" * 100)
    # Hidden names that are not ours, some of them a near miss of the pattern.
    own = [home / ".gitignore", home / "dagster" / ".telemetry" / "id.yaml", home / ".cache.d",
           home / "models" / ".gitattributes.metadata", home / ".env.template", home / ".adapter.k3x_9abc"]
    for p in own:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for p in (published, temp, work, held, old, orphan, *own):
        _age(p, 3 * 24 * HOUR)
    return {"home": home, "published": published, "temp": temp, "work": work, "held": held, "lock": lock,
            "old": old, "orphan": orphan, "own": own}


def test_killed_writes_are_swept_once_idle_and_unheld_and_nothing_else(tmp_path):
    h = _home(tmp_path)
    assert h["temp"].read_bytes() == b"half of it"
    found = {f.path: f for f in find_leftovers(h["home"])}
    assert set(found) == {h["temp"], h["work"], h["held"], h["old"], h["orphan"]}
    assert found[h["temp"]].target == h["home"] / "pins" / "run1" / "metrics.parquet"
    assert found[h["work"]].target.name == "adapter" and found[h["work"]].size_bytes == 1000
    assert all(f.idle_s > 2 * 24 * HOUR for f in found.values())

    dry = sweep(h["home"], dry_run=True)
    assert {f.path for f in dry.removed} == {h["temp"], h["work"], h["old"]}
    assert all(p.exists() for p in (h["temp"], h["work"], h["old"]))  # a dry run removes nothing

    done = sweep(h["home"])
    assert {f.path for f in done.removed} == {h["temp"], h["work"], h["old"]} and done.failed == []
    assert done.removed_bytes == 10 + 1000
    kept = {f.path: why for f, why in done.kept}
    assert kept[h["held"]] == "in use by a running writer"
    assert "the last published version of" in kept[h["orphan"]] and "rename it back" in kept[h["orphan"]]
    assert not any(p.exists() for p in (h["temp"], h["work"], h["old"]))
    assert all(p.exists() for p in (h["published"], h["held"], h["orphan"], *h["own"]))

    os.close(h["lock"])  # the build ends (here: as if killed, its directory left behind)
    assert [f.path for f in sweep(h["home"]).removed] == [h["held"]]


def test_a_fresh_leftover_is_kept_until_it_has_been_idle_long_enough(tmp_path):
    h = _home(tmp_path)
    _age(h["temp"], 2 * HOUR)
    (h["work"] / "checkpoint" / "weights.bin").touch()  # written just now, in an old directory
    found = [f.path for f in find_leftovers(h["home"])]
    assert h["temp"] not in found and h["work"] not in found  # the default: a day idle
    assert h["temp"] in [f.path for f in find_leftovers(h["home"], older_than_s=HOUR)]
    assert h["work"] in [f.path for f in find_leftovers(h["home"], older_than_s=0)]
    os.close(h["lock"])


def test_a_bundle_killed_unpublished_leaves_a_held_then_sweepable_work_dir(tmp_path):
    """The bundle writer's own work directory (`attest.write_bundle`), as the kill drill leaves it."""
    out = tmp_path / "bundles" / "c1"
    work, lock = work_dir(out)
    assert work.name.startswith(".c1.") and work.name.endswith(".tmp")
    assert [f.path for f, _ in sweep(tmp_path, older_than_s=0).kept] == [work] and work.exists()
    os.close(lock)  # as the kill drill's SIGKILL does
    assert [f.path for f in sweep(tmp_path, older_than_s=0).removed] == [work]


def test_the_cli_lists_then_removes_and_reports_json(tmp_path):
    h = _home(tmp_path)
    runner = CliRunner()
    dry = runner.invoke(main, ["home", "sweep", "--home", str(h["home"]), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would remove {h['temp']}" in dry.output and f"kept {h['held']}: in use by a running writer" in dry.output
    assert "3 leftover(s), 1010 bytes (dry run: nothing removed); 2 kept" in dry.output
    assert h["temp"].exists()
    done = runner.invoke(main, ["home", "sweep", "--home", str(h["home"]), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["dry_run"] is False and summary["bytes"] == 1010 and summary["failed"] == []
    assert sorted(f["path"] for f in summary["removed"]) == sorted(map(str, (h["temp"], h["work"], h["old"])))
    assert {f["path"]: f["reason"] for f in summary["kept"]}[str(h["held"])] == "in use by a running writer"
    assert not h["temp"].exists() and h["held"].exists()
    bad = runner.invoke(main, ["home", "sweep", "--home", str(h["home"]), "--older-than", "-1"])
    assert bad.exit_code == 2 and "--older-than" in bad.output
    os.close(h["lock"])
