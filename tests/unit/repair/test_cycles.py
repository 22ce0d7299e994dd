"""Repair cycles: one per regression report, stable ids, idempotent opening, readable records."""

import json

import pytest

from modelsmith.cycles import cycle_dir, cycle_id, open_cycle, read_cycle

VERSION = "ab12" * 16


def _report(run: str = "20250101T000000-aaaaaaaa-bbbbbbbb-0000", pins=("Video Gaming/app", "rewarded atf"),
            drop: float = 0.12) -> dict:
    return {
        "model_version": VERSION, "policy_digest": "p" * 64, "scenarios_digest": "s" * 64,
        "run_dir": f"/home/x/.modelsmith/pins/{VERSION[:16]}/{run}",
        "regressed": [{"pin": p, "rows": 400, "drop": drop, "p_value": 1e-6, "failing_row_ids": [f"req-{i}/1" for i in range(3)]}
                      for p in pins],
    }


def test_opening_twice_gives_the_same_cycle_and_does_not_rewrite_it(tmp_path):
    first = open_cycle(tmp_path, _report())
    path = cycle_dir(tmp_path, first) / "cycle.json"
    before, stat = path.read_text(), path.stat()
    again = open_cycle(tmp_path, _report(drop=0.5))  # same run and pins, other numbers: the same cycle
    assert again == first
    assert path.read_text() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert json.loads(before)["report"][0]["drop"] == 0.12
    assert [p.name for p in (tmp_path / "cycles").iterdir()] == [first]


def test_the_id_is_the_model_key_and_a_digest_of_policy_and_pins():
    key = cycle_id(_report())
    prefix, digest = key.split("-")
    assert prefix == VERSION[:8] and len(digest) == 12 and int(digest, 16) >= 0
    assert cycle_id(_report(pins=("rewarded atf", "Video Gaming/app"))) == key  # order does not matter
    moved = _report()
    moved["run_dir"] = "/elsewhere/" + moved["run_dir"].rsplit("/", 1)[1]
    assert cycle_id(moved) == key
    # a re-pin of the same champion (nightly, a backfill) that finds the same regression: the same cycle
    assert cycle_id(_report(run="20250102T000000-aaaaaaaa-bbbbbbbb-0001")) == key
    assert cycle_id({**_report(), "policy_digest": "q" * 64}) != key
    assert cycle_id(_report(pins=("Video Gaming/app",))) != key


def test_a_report_without_regressed_pins_is_refused(tmp_path):
    report = _report(pins=())
    with pytest.raises(ValueError, match="no regressed pin") as e:
        open_cycle(tmp_path, report)
    assert VERSION[:16] in str(e.value)
    assert not (tmp_path / "cycles").exists()


def test_the_record_drops_failing_row_ids(tmp_path):
    report = _report()
    key = open_cycle(tmp_path, report)
    record = read_cycle(tmp_path, key)
    assert record.cycle == key
    assert record.model_version == VERSION
    assert (record.policy_digest, record.scenarios_digest) == ("p" * 64, "s" * 64)
    assert record.run_dir == report["run_dir"]
    assert record.regressed == ["Video Gaming/app", "rewarded atf"]
    assert record.opened
    assert [set(p) for p in record.report] == [{"pin", "rows", "drop", "p_value"}] * 2
    assert "failing_row_ids" not in json.dumps(record.as_dict())
    assert report["regressed"][0]["failing_row_ids"]  # the caller's report is left as it was


def test_reading_an_unknown_cycle_names_it(tmp_path):
    open_cycle(tmp_path, _report())
    with pytest.raises(FileNotFoundError, match="no repair cycle 'deadbeef-000000000000'"):
        read_cycle(tmp_path, "deadbeef-000000000000")
