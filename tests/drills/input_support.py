"""Shared helpers of the bad-input drills (tests/drills/test_fuzz_*.py, test_paths.py, test_prompt_injection.py).

Everything here builds real inputs (real requests from ../shared/realdata, real files on disk, real
subprocesses); nothing is mocked. The realdata path comes from the `realdata` fixture of
tests/conftest.py, so a clone without the shared data skips these drills (and CI, which has it, runs them).
"""

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from scenario_data.features import FEATURE_SCHEMA
from scenario_data.ingest import QUARANTINE_SCHEMA, IngestResult

REPO = Path(__file__).resolve().parents[2]
DEEP = 10_000  # nesting depth of the "deep" inputs: ten times Python's recursion limit


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def real_requests(realdata: Path) -> list[tuple[str, bytes]]:
    """(file name, compact JSON body) of every real valid request, sorted by name."""
    return [(p.name, compact(json.loads(p.read_bytes()))) for p in sorted((realdata / "openrtb").glob("*.json"))]


def real_invalid_bodies(realdata: Path) -> list[tuple[str, bytes]]:
    """(file name, raw bytes) of every real invalid request body (some are not JSON at all)."""
    return [(p.name, p.read_bytes()) for p in sorted((realdata / "openrtb_invalid").glob("*.json"))
            if p.name != "EXPECTED.json"]



def assert_accounted(result: IngestResult, bodies_in: int) -> None:
    """Nothing lost: every body read is accepted or quarantined with a reason and its raw bytes."""
    assert result.requests_in == bodies_in, (result.requests_in, bodies_in)
    assert result.requests_in == result.accepted + result.quarantined
    assert result.features.schema == FEATURE_SCHEMA
    assert result.quarantine.schema == QUARANTINE_SCHEMA
    assert all(r for r in result.quarantine["reason"].to_list()), "a quarantined request without a reason"
    assert all(isinstance(b, bytes) for b in result.quarantine["raw"].to_list())
    assert set(result.quarantine["source_file"].to_list()) <= set(result.files)
    if result.features.height:
        assert result.features["row_id"].n_unique() == result.features.height, "row ids must name one decision"


def write_jsonl(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(b"".join(b + b"\n" for b in bodies))
    return path


def write_jsonl_gz(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"".join(b + b"\n" for b in bodies), mtime=0))
    return path


def write_parquet(path: Path, bodies: list[bytes | None], column: str = "request", binary: bool = False,
                  compression: str = "zstd") -> Path:
    """One JSON column: text when every body is UTF-8 (and `binary` is not asked), else binary."""
    if not binary:
        try:
            values: list[Any] = [None if b is None else b.decode("utf-8") for b in bodies]
            kind = pa.string()
        except UnicodeDecodeError:
            binary = True
    if binary:
        values, kind = bodies, pa.binary()
    pq.write_table(pa.table({column: pa.array(values, kind)}), path, compression=compression)
    return path


def fresh_id_lines(realdata: Path | None, seed: int = 0, generated: int = 2_000) -> list[tuple[bytes, bytes]]:
    """(prefix, suffix) around the request id of generator requests and real requests: a line with a
    fresh id is prefix + b'"<id>"' + suffix (ids must differ, or row ids would be disambiguated)."""
    from scenario_data.generator import generate_requests

    requests = generate_requests(generated, seed)
    if realdata is not None:
        requests += [json.loads(b) for _, b in real_requests(realdata)]
    marker = "__fresh_id__"
    out = []
    for r in requests:
        prefix, suffix = compact({**r, "id": marker}).split(json.dumps(marker).encode(), 1)
        out.append((prefix, suffix))
    return out


def write_big_jsonl(path: Path, size_bytes: int, lines: list[tuple[bytes, bytes]], invalid: list[bytes],
                    invalid_every: int = 5_000, seed: int = 0) -> int:
    """Write fresh-id lines (one invalid body every `invalid_every`) until `size_bytes`; returns the line count."""
    rng = random.Random(seed)
    n = written = 0
    with open(path, "wb", buffering=1 << 22) as f:
        while written < size_bytes:
            batch = []
            for _ in range(1_000):
                n += 1
                if n % invalid_every == 0:
                    batch.append(invalid[(n // invalid_every) % len(invalid)])
                else:
                    prefix, suffix = lines[rng.randrange(len(lines))]
                    batch.append(prefix + f'"fresh-{seed}-{n:09d}"'.encode() + suffix)
            data = b"\n".join(batch) + b"\n"
            f.write(data)
            written += len(data)
    return n


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (repository on sys.path), e.g. to measure its own peak RSS."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def quarantine_at(result: IngestResult, location: str) -> dict | None:
    """The quarantine row of one location ('line 2', 'row 0', 'byte 0'), or None when it was accepted."""
    rows = result.quarantine.filter(pl.col("location") == location).to_dicts()
    assert len(rows) <= 1
    return rows[0] if rows else None
