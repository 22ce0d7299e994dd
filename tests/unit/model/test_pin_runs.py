"""Pin runs end to end on a tiny untrained model: the CLI's JSON, the paired test, the stored history."""

import json

import polars as pl
import pytest
from click.testing import CliRunner

from modelsmith_cli.cli import main
from modelsmith.pin_runs import history, last_passing, pin, reference_for, store
from modelsmith.pins import parse_pins
from modelsmith.engines.inference import TransformersEngine
from scenario_data.generator import generate_requests, label_requests, write_pack
from scenario_data.policy import POLICIES_DIR, shipped_policy
from tests.unit.model.test_inference import model_dir, rows  # noqa: F401  (fixtures)

LENIENT = parse_pins("defaults: {accuracy_floor: 0.0, latency_p99_ms: 100000}\npins:\n  - {name: all}\n"
                     "  - {name: games, where: {vertical: Video Gaming}}\n")


def test_pins_run_json_and_against_itself(model_dir, tmp_path):  # noqa: F811
    pack = write_pack(tmp_path / "pack.jsonl", 60, 5, shipped_policy(1))
    pins_file = tmp_path / "pins.yaml"
    pins_file.write_text("defaults: {accuracy_floor: 0.0, latency_p99_ms: 100000}\npins:\n  - {name: all}\n")
    args = ["pins", "run", "--model", str(model_dir), "--policy", str(POLICIES_DIR / "v2.yaml"),
            "--scenarios", str(pack), "--pins", str(pins_file), "--json"]
    result = CliRunner().invoke(main, [*args, "--against", str(model_dir)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["policy"] == shipped_policy(2).digest and len(out["model"]) == 64
    (p,) = out["pins"]
    assert {"segment", "accuracy", "ci_low", "ci_high", "latency_p99_ms", "passed", "regressed", "p_value"} <= set(p)
    assert p["segment"] == "all" and p["regressed"] is False and p["p_value"] == 1.0  # the same model: no discordant pair
    assert p["ci_low"] <= p["accuracy"] <= p["ci_high"]

    strict = tmp_path / "strict.yaml"
    strict.write_text("pins:\n  - {name: all, accuracy_floor: 1.0}\n")
    failed = CliRunner().invoke(main, [*args[:-3], "--pins", str(strict), "--json"])
    assert failed.exit_code == 1 and json.loads(failed.stdout)["passed"] is False


def test_runs_are_stored_and_the_champion_is_compared_with_its_last_passing_run(model_dir, tmp_path):  # noqa: F811
    labelled = label_requests(generate_requests(80, seed=9), shipped_policy(1))
    engine = TransformersEngine(model_dir, batch_size=16)
    first = pin(engine, labelled, LENIENT, "d" * 64, "s" * 64)
    assert first.passed
    store(tmp_path, first)
    assert last_passing(tmp_path, "d" * 64) is not None
    reference, name = reference_for(tmp_path, "d" * 64, "d" * 64, labelled)
    assert "last passing" in name and reference.height == labelled.height
    second = pin(engine, labelled, LENIENT, "d" * 64, "s" * 64, reference, name)
    assert all(r.p_value == 1.0 and not r.regressed for r in second.results)  # same model, same labels
    store(tmp_path, second)
    hist = history(tmp_path)
    assert hist.height == 4 and set(hist["pin"]) == {"all", "games"}
    assert pl.read_parquet(next(tmp_path.glob("pins/*/*/predictions.parquet"))).height == labelled.height


def test_a_candidate_is_compared_with_the_champions_decisions(model_dir, tmp_path):  # noqa: F811
    labelled = label_requests(generate_requests(50, seed=4), shipped_policy(1))
    engine = TransformersEngine(model_dir, batch_size=16)
    store(tmp_path, pin(engine, labelled, LENIENT, "c" * 64, "s" * 64))
    reference, name = reference_for(tmp_path, "e" * 64, "c" * 64, labelled)
    assert name.startswith("champion cccccccc") and reference.height == labelled.height
    with pytest.raises(Exception):
        reference_for(tmp_path, "e" * 64, "c" * 64, labelled.drop("row_id"))
