"""Shared parts of the load and secrets drills: the drill's code location, PostgreSQL, the daemon, a
secret scanner, and the secrets drill's loop driver.

- `drill_defs`: the code location `dagster-daemon` and the run workers load for the twenty-regressions
  drill: the real repair assets and resources, and `drill_training_job` (the `adapter` asset alone,
  pool "training", in-process executor) with a one-epoch trainer. See tests/README.md for why.
- `fresh_postgres`: a fresh database on 127.0.0.1:5432, skipped without a server unless
  MODELSMITH_REQUIRE_POSTGRES=1 (the rule of tests/integration/test_postgres_instance.py).
- `Daemon`: `dagster-daemon run` in its own process group, stopped by its pid.
- `scan`: every file under a directory (and every tar member, gzip stream, SQLite cell, zlib blob
  in a cell, and Parquet value and metadata) searched for secret byte strings.
- `python -m tests.drills.load_support secrets-loop`: the default story (v1, then v2, a repair cycle,
  the gate) with the production resources (a two-epoch trainer), in a process of its own; see
  tests/drills/test_secrets.py.
"""

import base64
import contextlib
import gzip
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from tests.support.postgres import connect, fresh_database

REPO = Path(__file__).resolve().parents[2]
DRILL_LOCATION = "modelsmith_drill"
DRILL_JOB = "drill_training_job"


# -- the drill's code location ------------------------------------------------------------------


def build_drill_defs() -> dg.Definitions:
    """The real repair assets and resources (home: MODELSMITH_HOME); one job that runs the training link alone.

    `adapter` keeps its pool ("training"); its inputs (the cycle record, the diagnosis and the training
    rows) are written by the drill beforehand. The trainer does one epoch: the drill tests the queue,
    not the recipe.
    """
    from modelsmith.home import modelsmith_home
    from modelsmith_assets.repair import repair_assets
    from resources import TrainerSettings, resources_for

    job = dg.define_asset_job(DRILL_JOB, selection=["adapter"],
                              executor_def=dg.in_process_executor,
                              description="The training link of a repair cycle (the load drill)")
    resources = resources_for("embedded", modelsmith_home()) | {
        "trainer": TrainerSettings(epochs=1, batch_size=16, heldout_fraction=0.2)}
    return dg.Definitions(assets=repair_assets, jobs=[job], resources=resources)


drill_defs = dg.definitions(build_drill_defs)  # what the workspace names (loaded lazily, in each process)


def write_workspace(path: Path) -> Path:
    path.write_text(json.dumps({"load_from": [{"python_module": {
        "module_name": "tests.drills.load_support", "attribute": "drill_defs", "working_directory": str(REPO),
        "location_name": DRILL_LOCATION}}]}))  # JSON is YAML
    return path


def write_instance_yaml(dagster_home: Path, dequeue_interval_s: int = 1) -> Path:
    """`dagster.yaml.example` verbatim (PostgreSQL, the run queue, pools default_limit 1 per run), plus a
    1-second dequeue interval (the default, 5 s, would add up to 5 s per queued run) and no telemetry."""
    import yaml

    config = yaml.safe_load((REPO / "dagster.yaml.example").read_text())
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": dequeue_interval_s}
    config["telemetry"] = {"enabled": False}
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- PostgreSQL -----------------------------------------------------------------------------------


def pg_connect(dbname: str):
    return connect(dbname)


@contextlib.contextmanager
def fresh_postgres() -> Iterator[dict[str, str]]:
    """A fresh database; yields the DAGSTER_PG_* variables `dagster.yaml.example` reads. Dropped afterwards."""
    with fresh_database("modelsmith_drill") as (_, env):
        yield env


# -- the daemon -----------------------------------------------------------------------------------


class Daemon:
    """`dagster-daemon run -w WORKSPACE` in a process group of its own; `stop()` ends that group by the daemon's pid."""

    def __init__(self, workspace: Path, env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
                                     cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        pgid = self.proc.pid  # start_new_session: the daemon leads its own group (code server, run workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent, same group
            os.killpg(pgid, signal.SIGKILL)
        self._out.close()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


# -- the secret scanner ---------------------------------------------------------------------------


@dataclass
class ScanReport:
    hits: list[str] = field(default_factory=list)  # "<where>: <secret name>"
    files: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # what was opened: sqlite, tar, gzip, parquet, zlib

    def saw(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def secret_forms(name: str, value: bytes) -> dict[str, bytes]:
    """The ways a secret shows up in text or binary: raw, hex (both cases), base64 (standard, URL-safe, unpadded)."""
    b64 = base64.b64encode(value)
    forms = {name: value, f"{name} (hex)": value.hex().encode(), f"{name} (HEX)": value.hex().upper().encode(),
             f"{name} (base64)": b64.rstrip(b"="), f"{name} (base64url)": base64.urlsafe_b64encode(value).rstrip(b"=")}
    return {k: v for k, v in forms.items() if len(v) >= 12}


def signing_key_forms(pem: bytes) -> dict[str, bytes]:
    """The Ed25519 private key as PEM, its base64 body, the PKCS#8 DER, and the raw 32-byte seed in every form."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    body = b"".join(line for line in pem.strip().splitlines() if not line.startswith(b"-----"))
    return {"signing key (PEM)": pem.strip(), "signing key (PEM body)": body, **secret_forms("signing key (DER)", der),
            **secret_forms("signing key (raw seed)", raw)}


def _check(data: bytes, where: str, needles: dict[str, bytes], report: ScanReport) -> None:
    for name, needle in needles.items():
        if needle in data:
            report.hits.append(f"{where}: {name}")


def _scan_bytes(data: bytes, where: str, needles: dict[str, bytes], report: ScanReport, depth: int = 0) -> None:
    _check(data, where, needles, report)
    if depth > 3:
        return
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError, zlib.error):
            report.saw("gzip")
            _scan_bytes(gzip.decompress(data), f"{where}!gunzip", needles, report, depth + 1)
    elif data[:1] == b"x":  # a zlib stream (Dagster stores snapshots zlib-compressed)
        with contextlib.suppress(zlib.error):
            inflated = zlib.decompress(data)
            report.saw("zlib")
            _scan_bytes(inflated, f"{where}!zlib", needles, report, depth + 1)
    if len(data) > 512 and data[257:262] == b"ustar":
        with contextlib.suppress(tarfile.TarError):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                report.saw("tar")
                for member in tar.getmembers():
                    if member.isfile():
                        _scan_bytes(tar.extractfile(member).read(), f"{where}!{member.name}", needles, report, depth + 1)
    if data[:4] == b"PAR1":
        _scan_parquet(data, where, needles, report)
    if data[:16] == b"SQLite format 3\x00":
        _scan_sqlite(data, where, needles, report, depth)


def _scan_parquet(data: bytes, where: str, needles: dict[str, bytes], report: ScanReport) -> None:
    """Parquet pages are compressed (zstd, snappy): read every value back and the file's key-value metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    report.saw("parquet")
    meta = table.schema.metadata or {}
    _check(b"\n".join(k + b"=" + v for k, v in meta.items()), f"{where}!metadata", needles, report)
    for name in table.column_names:
        text = "\n".join(str(v) for v in table.column(name).to_pylist()).encode("utf-8", "replace")
        _check(text, f"{where}!column {name}", needles, report)


def _scan_sqlite(data: bytes, where: str, needles: dict[str, bytes], report: ScanReport, depth: int) -> None:
    """Every cell of every table, blobs inflated (zlib) when they are compressed."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "db.sqlite"
        copy.write_bytes(data)
        conn = sqlite3.connect(copy)
        try:
            report.saw("sqlite")
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for i, row in enumerate(conn.execute(f'SELECT * FROM "{table}"')):
                    for cell in row:
                        if isinstance(cell, str):
                            cell = cell.encode("utf-8", "replace")
                        if isinstance(cell, bytes):
                            _scan_bytes(cell, f"{where}!{table}[{i}]", needles, report, depth + 1)
        finally:
            conn.close()


def scan(root: Path, needles: dict[str, bytes], allowed: set[Path] = frozenset()) -> ScanReport:
    """Search every file under `root` (except `allowed`) for every needle; where each one was found."""
    report = ScanReport()
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.is_symlink() or path.resolve() in {p.resolve() for p in allowed}:
            continue
        report.files += 1
        # SQLite keeps recent writes in -wal files; reading the file as it is covers them too.
        _scan_bytes(path.read_bytes(), str(path.relative_to(root)), needles, report)
    return report


def scan_text(text: str, where: str, needles: dict[str, bytes]) -> list[str]:
    report = ScanReport()
    _check(text.encode("utf-8", "replace"), where, needles, report)
    return report.hits


# -- the secrets drill's loop ---------------------------------------------------------------------


def secrets_loop() -> None:
    """`modelsmith loop`'s two passes (v1, then v2 and its repair cycle) with the production resources,
    then the gate: a decision on the bundle, and a decision the gate refuses (a failed run).

    Production resources read MODELSMITH_HOME, MODELSMITH_POLICY and MODELSMITH_BASE_MODEL, and choose
    the Claude critic because ANTHROPIC_API_KEY is set; the SDK reads ANTHROPIC_BASE_URL (the stand-in).
    Logging is at DEBUG on stderr, as a user chasing a problem would run it.
    """
    import logging

    from modelsmith_cli.cli import _activate, _instance
    from modelsmith_cli.headless import run_pass
    from modelsmith.home import modelsmith_home
    from modelsmith_assets.definitions import build_definitions
    from scenario_data.policy import POLICIES_DIR

    from resources import TrainerSettings

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    home = modelsmith_home()
    # The drill is about where secrets go, not the recipe: two epochs train the adapter the same code path trains.
    quick = {"trainer": TrainerSettings(epochs=2)}
    results = []
    with _instance(home) as instance:
        for path in (POLICIES_DIR / "v1.yaml", POLICIES_DIR / "v2.yaml"):
            _activate(path, home)
            defs = build_definitions("production", resources=quick)
            results.append(run_pass(defs, instance, home, None, lambda m: print(m, file=sys.stderr, flush=True)))
        last = results[-1]
        defs = build_definitions("production", resources=quick)  # as the UI reloads the code location: the Launchpad pre-fill
        decision = "approve" if last.get("verdict") == "ready for approval" else "reject"
        job = defs.resolve_job_def("promotion_job")
        decided = job.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {"promotion": {
            "config": {"approver": "drill", "decision": decision, "bundle_digest": last.get("bundle_digest", ""),
                       "note": "secrets drill", "rollback_to": ""}}}})
        refused = job.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {"promotion": {
            "config": {"approver": "drill", "decision": "approve", "bundle_digest": "0" * 64, "note": "", "rollback_to": ""}}}})
    print(json.dumps({"passes": results, "decision": decision, "decided": decided.success, "decided_run": decided.run_id,
                      "refused": refused.success, "refused_run": refused.run_id}, default=str))


def main(argv: list[str]) -> int:
    if argv[:1] == ["secrets-loop"]:
        secrets_loop()
        return 0
    print("usage: python -m tests.drills.load_support secrets-loop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    started = time.monotonic()
    code = main(sys.argv[1:])
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    sys.exit(code)
