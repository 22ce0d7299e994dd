"""Per-decision latency as a bidder sees it: micro-batches of 1-64 decisions, base, adapter attached, adapter merged.

    .venv/bin/python benchmarks/latency/run.py [--model DIR] [--adapter DIR] [--rows 4000]

A decision's latency is the wall time of the micro-batch it was decided in (prompt encoding
included), as `InferenceSettings.batch_size` defines it for the pins. One run measures every
configuration on the same rows, interleaved, and reports p50/p99 against the pins' 10 ms budget
and the throughput ratio to batch 64 (the old default). Without `--adapter` a random LoRA (r 8,
all linear layers, the repair recipe's shape) stands in for a candidate.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import numpy as np

    from benchmarks.pins.run import make_adapter
    from modelsmith.base_model import PretrainConfig, build_default
    from modelsmith.home import modelsmith_home
    from modelsmith.engines.inference import TransformersEngine
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--adapter", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model_dir = args.model or build_default(modelsmith_home() / "models" / "base", PretrainConfig(), log=lambda m: None)[0]
    rows = label_requests(generate_requests(args.rows, 0), shipped_policy(1)).head(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or make_adapter(Path(model_dir), Path(tmp) / "lora", 1)
        base = TransformersEngine(model_dir)
        attached = TransformersEngine(model_dir)
        attached.attach_adapter("candidate", adapter)
        attached.use("candidate")
        merged = TransformersEngine.merged(model_dir, adapter)
        engines = {"base": base, "adapter attached": attached, "adapter merged": merged}
        results: dict = {}
        for _ in range(args.repeats):
            for bs in (1, 4, 8, 16, 64):
                for name, engine in engines.items():
                    engine.batch_size = bs
                    lat = engine.decide(rows).latency_ms
                    seconds = float(np.sum(lat[::bs])) / 1e3  # each micro-batch's wall time counted once
                    results.setdefault((name, bs), []).append((np.percentile(lat, 50), np.percentile(lat, 99),
                                                               rows.height / seconds))
    print(f"model {model_dir}; {rows.height} decisions; medians of {args.repeats} interleaved repeats")
    print("| engine | micro-batch | p50 ms | p99 ms | p99 <= 10 ms | decisions/s | throughput vs batch 64 |")
    print("|---|---|---|---|---|---|---|")
    for (name, bs), runs in results.items():
        p50, p99, rate = (float(np.median([r[i] for r in runs])) for i in range(3))
        ref = float(np.median([r[2] for r in results[(name, 64)]]))
        print(f"| {name} | {bs} | {p50:.2f} | {p99:.2f} | {'yes' if p99 <= 10 else 'NO'} | {rate:,.0f} | {rate / ref:.2f} |")


if __name__ == "__main__":
    main()
