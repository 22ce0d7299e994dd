"""Ingestion throughput: Modelsmith's ingest vs a plain `json.loads` + per-row Python baseline, same file, same run.

    .venv/bin/python benchmarks/ingest/run.py --n 1000000 [--repeat 3] [--input pack.jsonl]

Generates N requests (JSONL, seeded; or reads --input), then times (1) `scenario_data.ingest.ingest_paths`
and (2) a baseline that parses each line with `json.loads` and builds each impression's row in Python,
into a polars frame. Each run is a fresh subprocess (imports excluded from the time; peak memory is
its ru_maxrss); the two alternate --repeat times and the medians are compared.
"""

import argparse
import importlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def baseline(path: Path) -> int:
    """The naive reader: json.loads per line, dict walking per impression, one frame at the end."""
    import polars as pl

    rows = []
    with open(path, "rb") as f:
        for line in f:
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if not isinstance(req.get("imp"), list) or not isinstance(req.get("tmax", 0), int):
                continue
            side = req.get("site") or req.get("app") or {}
            ext = (side.get("ext") or {}).get("modelsmith") or {}
            for imp in req["imp"]:
                banner, video = imp.get("banner") or {}, imp.get("video") or {}
                fmt = (banner.get("format") or [{}])[0]
                rows.append({
                    "row_id": f"{req['id']}/{imp['id']}",
                    "inventory_type": "site" if "site" in req else "app",
                    "cat": (side.get("cat") or [None])[0],
                    "domain": side.get("domain") or side.get("bundle"),
                    "media": "video" if video else "banner" if banner else "native",
                    "width": video.get("w") or banner.get("w") or fmt.get("w"),
                    "height": video.get("h") or banner.get("h") or fmt.get("h"),
                    "pos": video.get("pos") or banner.get("pos"),
                    "slots": len(req["imp"]),
                    "rewarded": imp.get("rwdd") == 1,
                    "floor": imp.get("bidfloor", 0.0),
                    "ad_density": ext.get("ad_density"),
                })
    return pl.DataFrame(rows).height


def modelsmith(path: Path) -> int:
    from scenario_data.ingest import ingest_paths

    return ingest_paths([path]).decisions


def _child(which: str, path: str) -> None:
    fn = baseline if which == "baseline" else modelsmith
    # Imports are not what is measured.
    importlib.import_module("polars")
    importlib.import_module("scenario_data.ingest")

    t = time.perf_counter()
    rows = fn(Path(path))
    elapsed = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_mib": peak_mib}))


BAD_LINES = (b"malformed bid request", b'{"id": "bad", "tmax": "soon", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}]}')


def _with_bad_lines(src: Path, dst: Path, every: int) -> Path:
    """A copy of `src` with every `every`-th line bad; the baseline skips what json.loads refuses."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        for i, line in enumerate(f, start=1):
            out.write(BAD_LINES[(i // every) % 2] + b"\n" if i % every == 0 else line)
    return dst


def _measure(which: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", which, str(path)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the median is reported")
    ap.add_argument("--input", type=Path, help="an existing JSONL pack instead of generating one")
    ap.add_argument("--bad-every", type=int, default=0, metavar="K",
                    help="replace every K-th line by a bad one (alternately not JSON and a wrong type), as a real "
                         "feed has: measures what quarantining costs")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return _child(*args.child)
    from scenario_data.generator import write_pack
    from scenario_data.policy import shipped_policy

    with tempfile.TemporaryDirectory() as tmp:
        path = args.input or Path(tmp) / "pack.jsonl"
        if args.input is None:
            t = time.perf_counter()
            write_pack(path, args.n, args.seed, shipped_policy(1))
            print(f"generated {args.n} requests in {time.perf_counter() - t:.1f} s")
        if args.bad_every:
            path = _with_bad_lines(path, Path(tmp) / "with-bad-lines.jsonl", args.bad_every)
        print(f"input: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
        runs: dict[str, list[dict]] = {"modelsmith": [], "baseline": []}
        for _ in range(args.repeat):  # interleaved, so drift in the machine's speed hits both alike
            for which in runs:
                runs[which].append(_measure(which, path))
        for which, rs in runs.items():
            seconds = statistics.median(r["seconds"] for r in rs)
            rows, peak = rs[0]["rows"], max(r["peak_mib"] for r in rs)
            spread = ", ".join(f"{r['seconds']:.2f}" for r in rs)
            print(f"{which:10s} {rows:>9} rows  median {seconds:7.2f} s ({spread})  {rows / seconds:>10,.0f} rows/s  "
                  f"peak {peak:,.0f} MiB")
        ratio = statistics.median(r["seconds"] for r in runs["baseline"]) / statistics.median(
            r["seconds"] for r in runs["modelsmith"])
        print(f"speed-up: {ratio:.2f}x (median of {args.repeat} runs each)")


if __name__ == "__main__":
    main()
