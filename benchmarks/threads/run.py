"""Threads: decisions per second and SFT steps per second with 1 and with N torch threads, side by side.

    .venv/bin/python benchmarks/threads/run.py [--model DIR] [--threads 1 2] [--rows 2000]

The baseline is one thread in the same run; the ratio is what a setting changes. The default model
is built (or reused) under `--home`. Inference is the serving micro-batch (4); training is trl's
SFT on the repair recipe's batch (32) for a fixed number of steps.
"""

import argparse
import json
import time
from pathlib import Path


def decide_rate(model_dir: Path, rows, threads: int) -> float:
    from modelsmith.engines.inference import TransformersEngine

    engine = TransformersEngine(model_dir, batch_size=4, threads=threads)
    engine.decide(rows.head(64))  # warm up
    started = time.perf_counter()
    engine.decide(rows)
    return rows.height / (time.perf_counter() - started)


def train_rate(model_dir: Path, rows, threads: int, out: Path) -> float:
    import polars as pl

    from modelsmith.adapter_training import AdapterRecipe, SftSettings, train_adapter

    rows = rows.head(640).with_columns(pl.lit("target").alias("source"))
    recipe = AdapterRecipe(sft=SftSettings(epochs=1, batch_size=32, heldout_fraction=0.1), threads=threads)
    started = time.perf_counter()
    train_adapter(model_dir, rows, out, recipe, log=lambda _: None)
    return (rows.height * 0.9 / 32) / (time.perf_counter() - started)


def main() -> None:
    from modelsmith.base_model import PretrainConfig, build_default
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--home", type=Path, default=Path("/tmp/modelsmith-threads"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    model = args.model or build_default(args.home / "models" / "base", PretrainConfig(), log=lambda _: None)[0]
    rows = label_requests(generate_requests(args.rows, 7), shipped_policy(1)).head(args.rows)
    out = {}
    for t in args.threads:
        out[t] = {"decisions_per_s": round(decide_rate(model, rows, t), 1),
                  "sft_steps_per_s": round(train_rate(model, rows, t, args.home / f"adapter-{t}"), 2)}
    base = out[args.threads[0]]
    for t, r in out.items():
        r["decide_ratio"] = round(r["decisions_per_s"] / base["decisions_per_s"], 2)
        r["train_ratio"] = round(r["sft_steps_per_s"] / base["sft_steps_per_s"], 2)
    print(json.dumps({"model": str(model), "rows": rows.height, "threads": out}, indent=2))


if __name__ == "__main__":
    main()
