"""Ingestion throughput: Modelsmith's ingest vs a plain `json.loads` + per-row Python baseline, same file, same run.

    .venv/bin/python benchmarks/ingest/run.py --n 1000000

Generates N requests (JSONL, seeded), then times (1) `scenario_data.ingest.ingest_paths` and (2) a
baseline that parses each line with `json.loads` and builds each impression's row in Python, into a
polars frame. Peak memory of each is measured in a fresh subprocess (ru_maxrss).
"""

import argparse
import json
import resource
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
            req = json.loads(line)
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
    t = time.perf_counter()
    rows = fn(Path(path))
    elapsed = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_mib": peak_mib}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return _child(*args.child)
    from scenario_data.generator import write_pack
    from scenario_data.policy import shipped_policy

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pack.jsonl"
        t = time.perf_counter()
        write_pack(path, args.n, args.seed, shipped_policy(1))
        print(f"generated {args.n} requests ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
        out = {}
        for which in ("modelsmith", "baseline"):
            proc = subprocess.run([sys.executable, __file__, "--child", which, str(path)], capture_output=True,
                                  text=True, check=True)
            out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
        for which, r in out.items():
            print(f"{which:10s} {r['rows']:>9} rows  {r['seconds']:7.2f} s  {r['rows'] / r['seconds']:>10,.0f} rows/s  "
                  f"peak {r['peak_mib']:,.0f} MiB")
        ratio = out["baseline"]["seconds"] / out["modelsmith"]["seconds"]
        print(f"speed-up: {ratio:.1f}x (requests: {args.n})")


if __name__ == "__main__":
    main()
