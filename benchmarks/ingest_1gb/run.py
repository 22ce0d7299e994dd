"""Huge files: a ~1 GB JSONL streams through ingestion in bounded memory.

    .venv/bin/python benchmarks/ingest_1gb/run.py                      # 1024 MiB, baseline 100 MiB
    .venv/bin/python benchmarks/ingest_1gb/run.py --modes stream --chunk-lines 10000
    .venv/bin/python benchmarks/ingest_1gb/run.py --size-mb 200 --baseline-mb 50 --json

Writes two JSONL files of OpenRTB requests (the big one and a 100 MiB baseline) made of generator
requests (`scenario_data.generator`, seeded) and every real request in `../shared/realdata/openrtb`
when it is there, each line with a fresh request id, plus one real invalid request every 20,000 lines
so the quarantine path runs too. Then, each in a fresh subprocess, it ingests each file with

- `stream`: `scenario_data.ingest.ingest_to_files` (what `modelsmith scenarios ingest` runs): chunks of
  `--chunk-lines` requests appended to features.parquet / quarantine.parquet as they are made;
- `in_memory`: `ingest_paths` + `write_result` (the whole feature table in memory first; what the
  `replayed_auctions` asset does, since it labels and validates the whole table),

and records wall time, requests/s, rows/s, MiB/s and peak RSS twice: `ru_maxrss` at the end and the
maximum of a thread sampling /proc/self/statm every 20 ms. Peak memory of `stream` should be the same
for both sizes; that of `in_memory` grows with the file.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"
PLACEHOLDER = "__MODELSMITH_FRESH_ID__"
INVALID_EVERY = 20_000
CHUNK_LINES = 50_000  # scenario_data.chunks.CHUNK_LINES (read from it in main, so the default follows it)


def templates(seed: int, generated: int = 20_000) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """(prefix, suffix) around the request id of each template line, and the real invalid bodies (one line each)."""
    from scenario_data.generator import generate_requests

    requests = generate_requests(generated, seed)
    if (REALDATA / "openrtb").is_dir():
        requests += [json.loads(p.read_bytes()) for p in sorted((REALDATA / "openrtb").glob("*.json"))]
    out = []
    for r in requests:
        line = json.dumps({**r, "id": PLACEHOLDER}, separators=(",", ":")).encode()
        prefix, suffix = line.split(json.dumps(PLACEHOLDER).encode(), 1)
        out.append((prefix, suffix))
    invalid = []
    if (REALDATA / "openrtb_invalid").is_dir():
        for p in sorted((REALDATA / "openrtb_invalid").glob("*.json")):
            try:
                invalid.append(json.dumps(json.loads(p.read_bytes()), separators=(",", ":")).encode())
            except ValueError:
                invalid.append(p.read_bytes().replace(b"\n", b" ").strip())  # not JSON: kept as it is, on one line
    return out, invalid or [b'{"id": "broken", "imp": []}']


def write_jsonl(path: Path, size_bytes: int, lines: list[tuple[bytes, bytes]], invalid: list[bytes], seed: int) -> int:
    """Write lines (fresh ids) until the file holds `size_bytes`; returns the number of lines."""
    rng = random.Random(seed)
    n = 0
    written = 0
    with open(path, "wb", buffering=1 << 22) as f:
        while written < size_bytes:
            batch = []
            for _ in range(10_000):
                n += 1
                if n % INVALID_EVERY == 0:
                    batch.append(invalid[(n // INVALID_EVERY) % len(invalid)])
                else:
                    prefix, suffix = lines[rng.randrange(len(lines))]
                    batch.append(prefix + f'"big-{seed}-{n:09d}"'.encode() + suffix)
            data = b"\n".join(batch) + b"\n"
            f.write(data)
            written += len(data)
    return n


def _rss_sampler(peak: list[int], stop: threading.Event) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        while not stop.is_set():
            statm.seek(0)
            peak[0] = max(peak[0], int(statm.read().split()[1]) * page)
            stop.wait(0.02)


def child(mode: str, path: str, out_dir: str, chunk_lines: int) -> None:
    from scenario_data.ingest import ingest_paths, ingest_to_files, write_result

    peak = [0]
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(peak, stop), daemon=True)
    sampler.start()
    t = time.perf_counter()
    if mode == "stream":
        summary = ingest_to_files([path], Path(out_dir), chunk_lines=chunk_lines)
    else:
        result = ingest_paths([path])
        write_result(result, Path(out_dir))
        summary = result.summary()
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({**summary, "seconds": seconds, "peak_rss_mib": maxrss / 2**20,
                      "sampled_peak_mib": peak[0] / 2**20}))


def measure(mode: str, path: Path, tmp: Path, chunk_lines: int) -> dict:
    out = tmp / f"out-{mode}-{path.stem}"
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(out), str(chunk_lines)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {path.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = path.stat().st_size / 2**20
    r.update(mode=mode, chunk_lines=chunk_lines if mode == "stream" else CHUNK_LINES, file=path.name,
             file_mib=round(mib, 1), requests_per_s=r["requests_in"] / r["seconds"],
             rows_per_s=r["decisions"] / r["seconds"], mib_per_s=mib / r["seconds"])
    assert r["requests_in"] == r["accepted"] + r["quarantined"], r
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the big file (MiB)")
    ap.add_argument("--baseline-mb", type=int, default=100, help="size of the baseline file (MiB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="stream,in_memory", help="comma-separated: stream, in_memory")
    ap.add_argument("--chunk-lines", type=int, default=CHUNK_LINES,
                    help="requests per chunk of the streamed ingest (default: ingestion's own, %(default)s)")
    ap.add_argument("--dir", default=None, help="where the files go (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "OUT", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child[:3], int(args.child[3]))
    from scenario_data.chunks import CHUNK_LINES as ingest_chunk_lines

    assert ingest_chunk_lines == CHUNK_LINES, "update CHUNK_LINES here"
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        lines, invalid = templates(args.seed)
        files = {}
        for label, mb in (("baseline", args.baseline_mb), ("big", args.size_mb)):
            path = tmp / f"{label}-{mb}mib.jsonl"
            n = write_jsonl(path, mb * 2**20, lines, invalid, args.seed)
            files[label] = path
            if not args.json:
                print(f"wrote {path.name}: {n:,} lines, {path.stat().st_size / 2**20:,.0f} MiB "
                      f"({time.perf_counter() - t:.0f} s so far)", flush=True)
        results = []
        for mode in args.modes.split(","):
            for label in ("baseline", "big"):
                r = measure(mode, files[label], tmp, args.chunk_lines)
                results.append(r)
                if not args.json:
                    print(f"{mode:9s} chunk {r['chunk_lines']:>6,}  {r['file_mib']:>7,.0f} MiB  "
                          f"{r['requests_in']:>9,} requests  "
                          f"{r['decisions']:>9,} rows  {r['seconds']:6.1f} s  {r['rows_per_s']:>9,.0f} rows/s  "
                          f"{r['mib_per_s']:5.1f} MiB/s  peak RSS {r['peak_rss_mib']:,.0f} MiB "
                          f"(sampled {r['sampled_peak_mib']:,.0f})", flush=True)
        if args.json:
            print(json.dumps({"results": results, "cpus": os.cpu_count(), "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
