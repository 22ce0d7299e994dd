"""What changed and why, for the reviewer: the policy diff against the reference run, failing rows, latency in words."""

import json

import polars as pl

from modelsmith.cycles import CycleRecord
from modelsmith.review import failing_examples, latency_note, policy_change
from scenario_data.policy import POLICIES_DIR


def _run(home, key: str, name: str, policy: str, reference: str) -> str:
    run = home / "pins" / key / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"policy_digest": policy, "reference": reference}))
    return str(run)


def _cycle(policy: str, run_dir: str) -> CycleRecord:
    return CycleRecord(cycle="c1", opened="", model_version="m" * 64, policy_digest=policy, scenarios_digest="",
                       run_dir=run_dir, regressed=[], report=[])


def test_the_policy_diff_is_against_the_run_the_regression_was_measured_from(tmp_path):
    home = tmp_path
    (home / "policies").mkdir()
    for digest, version in (("a" * 64, 1), ("b" * 64, 2)):
        (home / "policies" / f"{digest}.yaml").write_text((POLICIES_DIR / f"v{version}.yaml").read_text())
    _run(home, "m1", "r1", "a" * 64, "none")
    cycle = _cycle("b" * 64, _run(home, "m1", "r2", "b" * 64, "its last passing pin run (r1)"))
    diff, note = policy_change(home, cycle)
    assert note == f"policy {'a' * 12} -> {'b' * 12}" and diff.startswith(f"--- policy {'a' * 12} (the reference run)")
    assert any(line.startswith("+") and "version: 2" in line for line in diff.splitlines())
    same = _cycle("a" * 64, _run(home, "m1", "r3", "a" * 64, "its last passing pin run (r1)"))
    assert policy_change(home, same) == ("", "the policy did not change: the regression came from new scenarios or "
                                             "a new model")
    first = _cycle("a" * 64, _run(home, "m2", "r1", "a" * 64, "none"))
    assert policy_change(home, first) == ("", "no reference run to compare the policy with")


def test_failing_examples_spread_over_the_targets_with_the_implicated_features():
    traces = pl.DataFrame({"pin": ["A", "A", "A", "B", "B", "C"], "row_id": ["1", "2", "3", "4", "4", "5"],
                           "vertical": ["x"] * 6, "inventory_type": ["app"] * 6, "device_type": ["tablet"] * 6,
                           "expected": ["e"] * 6, "predicted": ["p"] * 6, "rule": ["r"] * 6,
                           "failed": [True, True, True, True, True, True]})
    out = failing_examples(traces, ["A", "B"], ["device_type"], n=4)
    assert out["pin"].to_list() == ["A", "A", "B"] and out["row_id"].to_list() == ["1", "2", "4"]
    assert out.columns == ["pin", "row_id", "vertical", "inventory_type", "device_type", "expected", "predicted", "rule"]


def test_a_latency_rise_is_said_in_words():
    pins = [{"pin": f"p{i}", "p99_before_ms": 2.0, "p99_after_ms": 2.7} for i in range(3)]
    note = latency_note({"pins": pins})
    assert note.startswith("p99 per decision rose 35% (median over 3 pins)") and "merge_adapters" in note
    assert latency_note({"pins": [{"pin": "a", "p99_before_ms": 2.0, "p99_after_ms": 1.9}]}).startswith(
        "p99 per decision fell 5%")


def test_the_reports_plots_are_images_in_the_ui_summary():
    """The UI's markdown view renders data-URI images (seen in Chromium: tests/integration/test_live_dagster.py)."""
    import base64
    import re

    from modelsmith.evidence import report_plots
    from modelsmith.review import Review, review_markdown

    pins = [{"pin": f"p{i}", "target": i == 0, "rows": 100, "delta": 0.01 * i, "before": 0.9, "after": 0.95,
             "before_ci_low": 0.85, "before_ci_high": 0.94, "after_ci_low": 0.9, "after_ci_high": 0.98,
             "p99_before_ms": 2.0, "p99_after_ms": 2.1} for i in range(3)]
    history = pl.DataFrame({"model_version": ["a" * 64, "b" * 64], "pin": ["p0", "p0"], "created": ["1", "2"],
                            "accuracy": [0.8, 0.95]})
    plots = report_plots({"pins": pins, "targets": ["p0"], "champion": "a" * 64, "candidate": "b" * 64}, history)
    review = Review("offered", "", "no change", pl.DataFrame(), {"rows": 10, "by_source": {}, "anchored_to_champion": 0},
                    {}, {}, "no latency measured", "b" * 64, "a" * 64)
    text = review_markdown(review, "d" * 64, plots)
    images = re.findall(r"!\[plot (\d)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", text)
    assert [n for n, _ in images] == ["1", "2", "3"]
    assert [base64.b64decode(data).decode() for _, data in images] == [svg for _, svg in plots]
    assert all(f"**Plot {n}: {title}**" in text for n, (title, _) in enumerate(plots, start=1))
