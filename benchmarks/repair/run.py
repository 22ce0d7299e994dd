"""The drift suite: every policy change in `scenario_data/drifts/` through the real loop, from the v1 champion.

    .venv/bin/python benchmarks/repair/run.py [--home DIR] [--drifts DIR] [--out results.md]

One home: `modelsmith loop --policy v1.yaml` makes the default base the champion with a passing v1
pin run; then, for each drift file, `modelsmith loop --policy FILE --json` re-pins that champion
under the drift and, when a pin regressed, runs one repair cycle to its verdict. Nothing is ever
approved here, so every drift starts from the same v1 champion. Writes one table (markdown and
JSON): regressed pins, the critic's hypothesis and implicated features, repaired, flagged,
inconclusive, detect time, cycle time and verdict; autonomy = drifts ending `ready for approval` /
drifts that regressed. Point `--drifts` at a folder of your own policy files to run a suite this
project was not tuned on.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "modelsmith"


def loop(home: Path, policy: Path) -> dict:
    env = {**os.environ, "MODELSMITH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    started = time.monotonic()
    done = subprocess.run([str(CLI), "loop", "--json", "--policy", str(policy)], env=env, capture_output=True,
                          text=True, check=False)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    (home / "logs" / f"{policy.stem}.log").write_text(done.stderr)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
                "wall_s": round(time.monotonic() - started, 1)}
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"wall_s": round(time.monotonic() - started, 1)}


def row(name: str, s: dict) -> dict:
    if "error" in s:
        return {"drift": name, "verdict": f"error: {s['error']}"[:200], "regressed": [], "wall_s": s["wall_s"]}
    home = Path(s["home"])
    features = []
    if s.get("cycle") and (home / "cycles" / s["cycle"] / "diagnosis.json").is_file():
        d = json.loads((home / "cycles" / s["cycle"] / "diagnosis.json").read_text())
        features = [f"{f['feature']}={'/'.join(f['values'])}" if f["values"] else f["feature"] for f in d["features"]]
    return {"drift": name, "regressed": s.get("regressed", []), "hypothesis": s.get("hypothesis", ""),
            "implicated": features, "repaired": s.get("repaired", []), "not_repaired": s.get("not_repaired", []),
            "flagged": s.get("flagged", []), "inconclusive": s.get("inconclusive", []),
            "detect_s": s.get("time_to_detect_s"), "cycle_s": s.get("cycle_time_s"), "wall_s": s["wall_s"],
            "verdict": s.get("verdict", "")}


def markdown(rows: list[dict], autonomy: str) -> str:
    lines = ["| drift | regressed | implicated | repaired | not repaired | flagged | inconclusive | detect s | cycle s "
             "| verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def n(key):
            return len(r.get(key) or [])
        lines.append(f"| {r['drift']} | {n('regressed')} | {', '.join(r.get('implicated') or []) or '–'} | "
                     f"{n('repaired')} | {n('not_repaired')} | {', '.join(r.get('flagged') or []) or 0} | "
                     f"{n('inconclusive')} | {r.get('detect_s') or '–'} | {r.get('cycle_s') or '–'} | {r['verdict']} |")
    return "\n".join(lines) + f"\n\n{autonomy}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, default=Path("/tmp/modelsmith-drift-suite"))
    ap.add_argument("--drifts", type=Path, default=ROOT / "scenario_data" / "drifts")
    ap.add_argument("--out", type=Path, default=None, help="Markdown table (default: HOME/results.md)")
    args = ap.parse_args()
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    v1 = loop(home, ROOT / "scenario_data" / "policies" / "v1.yaml")
    if "error" in v1 or v1.get("regressed"):
        print(f"the v1 pass did not leave a clean champion: {v1.get('error') or v1.get('regressed')}", file=sys.stderr)
        return 1
    print(f"v1 champion {v1['champion'][:16]} in {v1['wall_s']} s", file=sys.stderr)
    rows = []
    for policy in sorted(args.drifts.glob("*.yaml")):
        rows.append(row(policy.stem, loop(home, policy)))
        print(json.dumps(rows[-1]), file=sys.stderr)
    regressed = [r for r in rows if r["regressed"]]
    ready = [r for r in regressed if r["verdict"] == "ready for approval"]
    opened_wrongly = [r["drift"] for r in rows if not r["regressed"] and r["verdict"].startswith("error")]
    autonomy = (f"autonomy: {len(ready)}/{len(regressed)} drifts that regressed ended `ready for approval`"
                + (f" ({len(ready) / len(regressed):.0%})" if regressed else "")
                + f"; {len(rows) - len(regressed)} drift(s) opened no cycle" + (
                    f"; errors: {opened_wrongly}" if opened_wrongly else ""))
    out = args.out or home / "results.md"
    out.write_text(markdown(rows, autonomy))
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=2))
    print(markdown(rows, autonomy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
