"""The generator is deterministic and realistic; the CLI generates and ingests as the README says."""

import hashlib
import json
import subprocess
import sys

import polars as pl
from click.testing import CliRunner

from modelsmith_cli.cli import main
from scenario_data.ingest import ingest_paths


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    runner = CliRunner()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        result = runner.invoke(main, ["scenarios", "generate", "--n", "500", "--seed", str(seed),
                                      "--output", str(tmp_path / f"{name}.jsonl")])
        assert result.exit_code == 0, result.output
    assert _sha(tmp_path / "a.jsonl") == _sha(tmp_path / "b.jsonl")
    assert _sha(tmp_path / "a.jsonl") != _sha(tmp_path / "c.jsonl")


def test_generated_pack_is_realistic_and_labelled(tmp_path):
    out = tmp_path / "pack.jsonl"
    CliRunner().invoke(main, ["scenarios", "generate", "--n", "3000", "--seed", "0", "--output", str(out)])
    lines = out.read_text().splitlines()
    assert len(lines) == 3000
    first = json.loads(lines[0])
    assert all("label" in imp["ext"]["modelsmith"] for imp in first["imp"])
    features = ingest_paths([out]).features
    assert features.height >= 3000
    assert set(features["inventory_type"]) == {"site", "app"}
    assert set(features["media"]) == {"banner", "video", "native"}
    assert features["vertical"].n_unique() >= 30
    share = features["vertical"].value_counts(normalize=True).filter(pl.col("vertical") == "Video Gaming")
    assert 0.04 < share["proportion"][0] < 0.2
    assert features["sensitive"].mean() > 0.005
    assert features.filter(pl.col("vertical") == "Video Gaming")["rewarded"].mean() > 0.1


def test_ingest_command_prints_the_counts_as_json(tmp_path, realdata):
    pack = tmp_path / "pack.jsonl.gz"
    runner = CliRunner()
    assert runner.invoke(main, ["scenarios", "generate", "--n", "200", "--output", str(pack)]).exit_code == 0
    out = tmp_path / "out"
    result = runner.invoke(main, ["scenarios", "ingest", str(pack), str(realdata / "openrtb"),
                                  str(realdata / "openrtb_invalid" / "prebid-server__endpoints__openrtb2__sample-requests__invalid-whole__null.json"),
                                  "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["requests_in"] == 200 + 266 + 1
    assert summary["requests_in"] == summary["accepted"] + summary["quarantined"]
    assert summary["decisions"] == pl.read_parquet(out / "features.parquet").height
    # 11 real requests (tests/unit/scenario_data/test_ingest_realdata.py says which and why) and the null body
    assert summary["quarantined"] == pl.read_parquet(out / "quarantine.parquet").height == 13


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "modelsmith_cli.cli", "scenarios", "--help"], capture_output=True,
                            text=True, check=True)
    assert "generate" in result.stdout and "ingest" in result.stdout


def test_bad_policy_is_a_clear_cli_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nversion: 1\nrules: []\ndefault: bid:maybe\n")
    result = CliRunner().invoke(main, ["scenarios", "generate", "--n", "1", "--output", str(tmp_path / "o.jsonl"),
                                       "--policy", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:4: `default` must be one of" in result.output
    assert not (tmp_path / "o.jsonl").exists()
