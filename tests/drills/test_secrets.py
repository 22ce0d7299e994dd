"""Secrets drill: the critic's API key and the signing key never leave where they belong.

One full loop runs in a process of its own with the production resources (`MODELSMITH_ENV=production`
wiring: the Claude critic is chosen because ANTHROPIC_API_KEY is set, a distinctive fake key, and the
SDK is pointed at the local stand-in of the Messages API through ANTHROPIC_BASE_URL): policy v1 (every
pin passes), policy v2 (Gaming regresses; the repair cycle asks Claude, is re-asked once after an
invalid answer, synthesises signed data, trains, pins, writes the signed bundle), then the gate (a
signed decision, and a decision the gate refuses: a failed run with its exception in the event log).
Python logging runs at DEBUG. Then every file under MODELSMITH_HOME (the Dagster instance's SQLite
databases cell by cell with compressed snapshots inflated, Parquet values and metadata, bundles and
their tars, logs), the loop's stdout and stderr, every run's run config and every job snapshot (what
the UI's run and Launchpad pages show) are searched for the API key and for the signing key (PEM, its
body, PKCS#8 DER and the raw seed, in raw, hex and base64 forms). The key file itself is the one place
the signing key may be. Key files are 0600, and a key file open to group or others is refused.
"""

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import seed_default_base
from dagster._core.snap import JobSnap
from dagster._serdes import serialize_value

from modelsmith_assets.definitions import build_definitions
from modelsmith.engines.signer import PRIVATE_KEY, Ed25519Signer, KeyPermissionError
from resources.signer import SignerSettings
from tests.drills.load_support import REPO, scan, scan_text, secret_forms, signing_key_forms
from tests.support.fake_anthropic import FakeAnthropic, api_key, tool_use

pytestmark = pytest.mark.slow  # minutes each: `pytest -m 'not slow'` for a quick run

TOKEN = secrets.token_hex(20)
KEY = f"sk-ant-drill-{TOKEN}"  # distinctive: nothing else anywhere contains it
PIN = "Video Gaming/app"
ANSWER = {"segments": [PIN], "hypothesis": "Rewarded above-the-fold slots in gaming apps changed decision.",
          "features": [{"feature": "rewarded", "values": ["True"], "error_lift": 2.1},
                       {"feature": "position", "values": ["atf"], "error_lift": 2.5}],
          "confidence": 0.85, "recipe": {"stages": ["sft"]},
          "synthesis": {"filters": {"vertical": {"eq": "Video Gaming"}, "inventory_type": {"eq": "app"}},
                        "rows": 400, "replay_ratio": 1.5, "contrast_share": 0.3}}
# The loop (400 synthetic rows, two epochs: the drill tests where secrets go, not the recipe) takes ~2 min
# on an idle 2-core machine; pytest's own limit is 1,200 s (raise both on a slow box).
LOOP_TIMEOUT_S = int(os.environ.get("MODELSMITH_DRILL_LOOP_TIMEOUT", "1150"))


def _needles(home: Path) -> dict[str, bytes]:
    return {**secret_forms("API key", KEY.encode()), "API key (random part)": TOKEN.encode(),
            **signing_key_forms((home / "keys" / PRIVATE_KEY).read_bytes())}


@pytest.fixture(scope="module")
def loop(tmp_path_factory, default_base_models):
    """The loop, once for the module: (home, summary, stdout, stderr, the requests the stand-in saw)."""
    home = tmp_path_factory.mktemp("secrets") / "home"
    seed_default_base(home, default_base_models)  # the session's build of the default base model, reused by key
    with FakeAnthropic() as server:
        invalid = {**ANSWER, "segments": ["Not a failing pin"]}  # refused by validation: the critic re-asks once
        server.script(tool_use(invalid), tool_use(ANSWER))
        env = {k: v for k, v in os.environ.items()
               if k not in ("MODELSMITH_CRITIC", "MODELSMITH_KEY_DIR", "MODELSMITH_PINS", "MODELSMITH_EXECUTOR")}
        env |= {"MODELSMITH_ENV": "production", "MODELSMITH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
                "MODELSMITH_POLICY": "", "MODELSMITH_BASE_MODEL": "", "MODELSMITH_SENSORS": "stopped",
                "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.base_url}
        proc = subprocess.run([sys.executable, "-m", "tests.drills.load_support", "secrets-loop"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=LOOP_TIMEOUT_S)
        seen = list(server.requests)
    assert proc.returncode == 0, proc.stderr[-6000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return home, summary, proc.stdout, proc.stderr, seen


def test_the_loop_ran_the_claude_critic_with_the_key_and_reached_the_gate(loop):
    home, summary, _, _, seen = loop
    v1, v2 = summary["passes"]
    assert v1["regressed"] == [] and v2["regressed"] == [PIN] and v2["cycle"]
    # The key really was in play: every request to the Messages API carried it.
    assert len(seen) == 2 and all(api_key(r.headers) == KEY for r in seen)
    diagnosis = json.loads((home / "cycles" / v2["cycle"] / "diagnosis.json").read_text())
    assert diagnosis["provenance"]["critic"] == "claude" and diagnosis["provenance"]["fallback"] == ""
    assert diagnosis["extra"]["attempts"] == 2  # the invalid answer was sent back with its error, then fixed
    assert Path(v2["bundle_path"]).is_dir() and Path(v2["bundle_path"]).with_suffix(".tar").is_file()
    assert summary["decided"] is True and summary["refused"] is False
    assert any((home / "decisions").glob("*.dsse.json"))  # the decision was signed


def test_no_file_log_or_stream_of_the_loop_holds_a_secret(loop):
    home, summary, stdout, stderr, _ = loop
    needles = _needles(home)
    key_file = home / "keys" / PRIVATE_KEY
    # The scanner finds the signing key where it is (the one allowed place): its forms are right.
    assert {h.split(": ", 1)[1] for h in scan(key_file.parent, needles).hits} >= {"signing key (PEM)",
                                                                                  "signing key (PEM body)"}
    report = scan(home, needles, allowed={key_file})
    assert report.hits == [], "\n".join(report.hits[:40])
    assert scan_text(stdout, "stdout", needles) == [] and scan_text(stderr, "stderr", needles) == []
    # What was searched: the instance's databases (zlib snapshots inside), bundles and tars, Parquet.
    assert report.files > 100 and report.kinds.get("sqlite", 0) >= 2 and report.kinds.get("zlib", 0) >= 5
    assert report.kinds.get("tar", 0) >= 1 and report.kinds.get("parquet", 0) >= 10
    assert "DEBUG" in stderr and "POST" in stderr  # DEBUG logging was on, the SDK's requests included


def test_exception_messages_hold_no_secret(loop):
    home, summary, _, _, _ = loop
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    try:
        failures = [e for e in instance.all_logs(summary["refused_run"])
                    if e.dagster_event_type == dg.DagsterEventType.STEP_FAILURE]
        assert failures, "the refused decision should have failed its step"
        error = failures[0].dagster_event.step_failure_data.error
        text = error.to_string()
        assert "Failure: refused: bundle_digest: no bundle in" in text and "0" * 64 in text, text  # the gate's reason
        assert scan_text(text, "exception", _needles(home)) == []
    finally:
        instance.dispose()
    # Refusing an exposed key names the file and its mode, never its content.
    exposed = home.parent / "exposed"
    SignerSettings(key_dir=str(exposed)).signer()
    (exposed / PRIVATE_KEY).chmod(0o644)
    with pytest.raises(KeyPermissionError) as err:
        Ed25519Signer(exposed)
    assert scan_text(str(err.value), "exception", signing_key_forms((exposed / PRIVATE_KEY).read_bytes())) == []


def test_run_configs_and_job_snapshots_shown_in_the_ui_hold_no_key(loop):
    home, summary, _, _, _ = loop
    needles = _needles(home)
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    try:
        runs = instance.get_runs()
        jobs = {r.job_name for r in runs}
        assert {"materialize_scenarios_job", "build_base_model_job", "pin_model_version_job", "repair_cycle_job",
                "promotion_job"} <= jobs and len(runs) >= 9
        shown = []
        for run in runs:
            shown.append(json.dumps(run.run_config, default=str) + json.dumps(dict(run.tags)))
            shown.append(serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
        promotion = next(r for r in runs if r.run_id == summary["decided_run"])
        assert promotion.run_config["ops"]["promotion"]["config"]["approver"] == "drill"  # run config is there
        assert all(scan_text(text, "ui", needles) == [] for text in shown)
        # What the Launchpad shows for the critic's key: the variable's name, not its value.
        repair = next(s for r, s in zip(runs, shown[1::2], strict=True) if r.job_name == "repair_cycle_job")
        assert '\\"env\\": \\"ANTHROPIC_API_KEY\\"' in repair
    finally:
        instance.dispose()


def test_production_definitions_keep_the_key_out_of_every_job_snapshot(monkeypatch):
    """The bug this drill found: the key, bound as a value, was the default of the critic's config field,
    stored in every job snapshot of the instance and shown in the Launchpad."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    for name in ("MODELSMITH_POLICY", "MODELSMITH_BASE_MODEL"):
        monkeypatch.setenv(name, "")
    monkeypatch.delenv("MODELSMITH_CRITIC", raising=False)
    defs = build_definitions("production")
    needles = secret_forms("API key", KEY.encode())
    jobs = defs.get_repository_def().get_all_jobs()
    assert len(jobs) >= 5
    for job in jobs:
        assert scan_text(serialize_value(JobSnap.from_job_def(job)), job.name, needles) == []
    critic = defs.resources["critic"]
    assert critic.critic == "claude" and isinstance(critic.api_key, dg.EnvVar)
    assert critic.api_key.env_var_name == "ANTHROPIC_API_KEY"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    plain = build_definitions("production").resources["critic"]
    assert (plain.critic, plain.api_key) == ("statistical", "")


def test_the_loops_key_file_is_0600_in_a_0700_directory(loop):
    home = loop[0]
    assert stat.S_IMODE((home / "keys" / PRIVATE_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys").stat().st_mode) & 0o077 == 0


def test_a_new_key_is_created_0600(tmp_path):
    from modelsmith.engines.signer import verify

    signer = SignerSettings(key_dir=str(tmp_path / "keys")).signer()
    assert stat.S_IMODE((tmp_path / "keys" / PRIVATE_KEY).stat().st_mode) == 0o600
    assert verify(signer.public_key_pem(), b"x", signer.sign(b"x"))
    forms = signing_key_forms((tmp_path / "keys" / PRIVATE_KEY).read_bytes())
    assert signer.key_id() in repr(signer) and scan_text(repr(signer), "repr", forms) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o700, 0o610])
def test_a_key_file_open_to_group_or_others_is_refused_with_a_clear_error(tmp_path, mode):
    key_dir = tmp_path / "keys"
    first = SignerSettings(key_dir=str(key_dir)).signer().key_id()
    path = key_dir / PRIVATE_KEY
    path.chmod(mode)
    if mode & 0o077:
        with pytest.raises(KeyPermissionError) as err:
            SignerSettings(key_dir=str(key_dir)).signer()
        message = str(err.value)
        assert str(path) in message and f"{mode:04o}" in message and f"chmod 600 {path}" in message
        assert isinstance(err.value, PermissionError)
        path.chmod(0o600)
    assert SignerSettings(key_dir=str(key_dir)).signer().key_id() == first  # fixed (or owner-only): used again


def test_the_scanner_finds_a_planted_secret_wherever_it_hides(tmp_path):
    """The drill's own control: a secret in a log, a gzip stream, a tar member, a zlib blob in SQLite, a
    compressed Parquet column and Parquet metadata is found in each; a clean directory gives nothing."""
    import gzip
    import io
    import sqlite3
    import tarfile
    import zlib

    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    needles = {**secret_forms("API key", KEY.encode())}
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "log.txt").write_text("nothing to see\n")
    assert scan(clean, needles).hits == []

    root = tmp_path / "planted"
    root.mkdir()
    (root / "app.log").write_text(f"INFO calling with {KEY}\n")
    (root / "pack.jsonl.gz").write_bytes(gzip.compress(json.dumps({"k": KEY}).encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"key={KEY}".encode()
        info = tarfile.TarInfo("inner/config.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (root / "bundle.tar").write_bytes(buf.getvalue())
    conn = sqlite3.connect(root / "runs.db")
    conn.execute("CREATE TABLE snapshots (id TEXT, body BLOB)")
    conn.execute("INSERT INTO snapshots VALUES (?, ?)", ("s", zlib.compress(json.dumps({"api_key": KEY}).encode())))
    conn.commit()
    conn.close()
    pl.DataFrame({"a": ["x"] * 1000 + [KEY]}).write_parquet(root / "col.parquet", compression="zstd")
    pq.write_table(pa.table({"a": [1]}).replace_schema_metadata({"note": KEY}), root / "meta.parquet")
    (root / "seed.json").write_text(json.dumps({"b64": secret_forms("API key", KEY.encode())["API key (base64)"].decode()}))

    found = {h.split(": ", 1)[0].split("!", 1)[0] for h in scan(root, needles).hits}
    assert found == {"app.log", "pack.jsonl.gz", "bundle.tar", "runs.db", "col.parquet", "meta.parquet", "seed.json"}
    hits = scan(root, needles).hits
    assert any("runs.db!snapshots" in h and "!zlib" in h for h in hits)
    assert any("bundle.tar!inner/config.txt" in h for h in hits)
    assert any("col.parquet!column a" in h for h in hits) and any("meta.parquet!metadata" in h for h in hits)
