"""Load: N scenarios (default 1,000,000) through generation, ingestion, labelling and pinning, with a baseline size.

    .venv/bin/python benchmarks/load_1m/run.py                       # 100,000 then 1,000,000
    .venv/bin/python benchmarks/load_1m/run.py --sizes 100000 200000 --model DIR --workdir /tmp/load

Every stage runs in its own fresh process, so each figure is that stage's wall time and that
process's peak resident memory (ru_maxrss from `os.wait4`), nothing inherited from an earlier one:

- `model build`: `modelsmith model build` (the embedded default base model; once, independent of N;
  skipped with `--model DIR`);
- `generate`: `modelsmith scenarios generate --n N --seed 0` (JSONL, labelled by policy v1);
- `ingest`: `modelsmith scenarios ingest PACK --output DIR --json` (validation, quarantine,
  the feature table, written as Parquet);
- `label`: the active policy (v1) over the feature table, written as `replayed_auctions.parquet`
  (what `build_replay_set` does after ingestion, and what the `replayed_auctions` asset stores);
- `pin`: what the `pin_results` asset does for the champion (`modelsmith.pin_runs.pin_version`):
  read the labelled Parquet, decide every row with the transformers engine (batch 64, one torch
  thread: `InferenceSettings`' defaults), score the shipped pins (`modelsmith.pin_runs.pin`) and
  store the run (`modelsmith.pin_runs.store`: predictions, metrics and decisions as Parquet).

The sizes run smallest first; the smallest is the baseline that the larger ones' scaling is read
against (time per 1,000 requests, memory per request). `--pin-limit ROWS` pins only the first ROWS
decision rows of a size (for when the full pin does not fit the time at hand); the report says so.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CLI = [str(Path(sys.executable).with_name("modelsmith"))]  # the console script, as a user runs it


def run_stage(name: str, argv: list[str], log) -> dict:
    """Run one stage in a fresh process: its wall time, peak RSS (MiB, from wait4) and its last stdout line."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it ourselves: the rusage is this child's alone
        seconds = time.perf_counter() - t
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    try:
        payload = json.loads(last)
    except ValueError:
        payload = {"stdout": last}
    result = {"stage": name, "seconds": round(seconds, 2), "peak_mib": round(usage.ru_maxrss / 1024),
              "exit": code, "result": payload,
              # the machine's 1-minute load average before and after: other work on the box slows a stage
              "load": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    log(f"  {name:12s} {seconds:8.1f} s  peak {result['peak_mib']:>7,} MiB  exit {code}  load {result['load']}")
    if code != 0:
        raise RuntimeError(f"stage {name} failed ({code}):\n{stderr[-4000:]}")
    return result


# -- children: stages that are library calls, each run as `run.py --child STAGE ...` in its own process


def child_label(features: str, out: str) -> dict:
    import polars as pl

    from scenario_data.policy import shipped_policy

    t = time.perf_counter()
    labelled = shipped_policy(1).label(pl.read_parquet(features))
    labelled.write_parquet(out)
    return {"rows": labelled.height, "seconds_in": round(time.perf_counter() - t, 2)}


def child_pin(labelled_path: str, model_dir: str, home: str, limit: int) -> dict:
    import polars as pl

    from modelsmith.model_dir import directory_digest, file_sha256
    from modelsmith.pin_runs import pin, store
    from modelsmith.pins import load_pins
    from resources.inference import InferenceSettings

    t0 = time.perf_counter()
    labelled = pl.read_parquet(labelled_path)
    if limit:
        labelled = labelled.head(limit)
    settings = InferenceSettings()
    engine = settings.load(model_dir)
    t1 = time.perf_counter()
    run = pin(engine, labelled, load_pins(), directory_digest(Path(model_dir)), file_sha256(Path(labelled_path)))
    t2 = time.perf_counter()
    run_dir = store(Path(home), run)
    t3 = time.perf_counter()
    size = sum(p.stat().st_size for p in run_dir.iterdir())
    return {"rows": run.predictions.height, "decisions_per_s": round(run.predictions.height / (t2 - t1)),
            "load_s": round(t1 - t0, 2), "decide_and_score_s": round(t2 - t1, 2), "store_s": round(t3 - t2, 2),
            "passed": run.passed, "failed": run.summary()["failed"], "composite": round(run.composite, 4),
            "pins": len(run.results), "run_mib": round(size / 2**20, 1), "batch_size": settings.batch_size}


def child(argv: list[str]) -> None:
    stage, *rest = argv
    fn = {"label": child_label, "pin": child_pin}[stage]
    if stage == "pin":
        rest[-1] = int(rest[-1])
    out = fn(*rest)
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_size(n: int, work: Path, model_dir: Path, pin_limit: int, log) -> dict:
    d = work / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    pack, ingested = d / "pack.jsonl", d / "ingested"
    log(f"N = {n:,} requests")
    stages = [
        run_stage("generate", [*CLI, "scenarios", "generate", "--n", str(n), "--seed", "0", "--output", str(pack)], log),
        run_stage("ingest", [*CLI, "scenarios", "ingest", str(pack), "--output", str(ingested), "--json"], log),
        run_stage("label", [sys.executable, __file__, "--child", "label", str(ingested / "features.parquet"),
                            str(d / "replayed_auctions.parquet")], log),
        run_stage("pin", [sys.executable, __file__, "--child", "pin", str(d / "replayed_auctions.parquet"),
                          str(model_dir), str(d / "home"), str(pin_limit)], log),
    ]
    ingest = stages[1]["result"]
    return {"n": n, "pack_mib": round(pack.stat().st_size / 2**20), "decisions": ingest["decisions"],
            "requests_in": ingest["requests_in"], "quarantined": ingest["quarantined"], "pin_limit": pin_limit,
            "stages": stages}


def report(sizes: list[dict], build: dict | None) -> str:
    lines = []
    if build:
        lines.append(f"model build (once): {build['seconds']:.1f} s, peak {build['peak_mib']:,} MiB")
    lines.append("| N requests | decision rows | stage | wall time | peak RSS | per 1,000 requests | note |")
    lines.append("|---|---|---|---|---|---|---|")
    for s in sizes:
        for st in s["stages"]:
            note = ""
            r = st.get("result", {})
            if st["stage"] == "pin":
                note = (f"{r['rows']:,} rows pinned, {r['decisions_per_s']:,} decisions/s (decide+score "
                        f"{r['decide_and_score_s']} s, load {r['load_s']} s, store {r['store_s']} s), "
                        f"pins passed: {r['passed']}{'' if r['passed'] else ' (failed: ' + ', '.join(r['failed']) + ')'}")
                if s["pin_limit"]:
                    note += f"; LIMITED to the first {s['pin_limit']:,} rows"
            if st["stage"] == "ingest":
                note = f"{r['accepted']:,} accepted, {r['quarantined']:,} quarantined; pack {s['pack_mib']:,} MiB"
            lines.append(f"| {s['n']:,} | {s['decisions']:,} | {st['stage']} | {st['seconds']:.1f} s | "
                         f"{st['peak_mib']:,} MiB | {st['seconds'] / s['n'] * 1000:.3f} s | {note} "
                         f"(load {st['load'][0]} -> {st['load'][1]}) |")
        total = sum(st["seconds"] for st in s["stages"])
        lines.append(f"| {s['n']:,} | {s['decisions']:,} | **all four** | **{total:.1f} s** | "
                     f"{max(st['peak_mib'] for st in s['stages']):,} MiB (max) | {total / s['n'] * 1000:.3f} s | |")
    if len(sizes) > 1:
        base = sizes[0]
        for s in sizes[1:]:
            k = s["n"] / base["n"]
            for a, b in zip(base["stages"], s["stages"], strict=True):
                lines.append(f"scaling {base['n']:,} -> {s['n']:,} ({k:.0f}x requests), {a['stage']}: time "
                             f"{b['seconds'] / a['seconds']:.1f}x, peak RSS {b['peak_mib'] / a['peak_mib']:.1f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                    help="Request counts, smallest first (the first is the baseline)")
    ap.add_argument("--model", type=Path, default=None, help="A base model directory (default: build the embedded default)")
    ap.add_argument("--workdir", type=Path, default=None, help="Where packs and outputs go (default: a temporary directory, removed)")
    ap.add_argument("--pin-limit", type=int, default=0, help="Pin only the first ROWS decision rows of each size (0: all)")
    ap.add_argument("--json-out", type=Path, default=None, help="Also write every figure as JSON here")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child:
        return child(args.child)

    def log(m: str) -> None:
        print(m, flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelsmith-load-"))
    work.mkdir(parents=True, exist_ok=True)
    env_home = work / "home"
    os.environ["MODELSMITH_HOME"] = str(env_home)  # keeps `model build` and pin runs out of the user's home
    log(f"workdir {work}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    build = None
    try:
        model_dir = args.model
        if model_dir is None:
            model_dir = work / "base"
            if model_dir.exists():
                shutil.rmtree(model_dir)
            log("model build")
            build = run_stage("model build", [*CLI, "model", "build", "--output", str(model_dir), "--json"], log)
        sizes = [run_size(n, work, model_dir, args.pin_limit, log) for n in sorted(args.sizes)]
        text = report(sizes, build)
        log("\n" + text)
        if args.json_out:
            args.json_out.write_text(json.dumps({"build": build, "sizes": sizes}, indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
