"""The GPU path in one run (called by scripts/gpu_check.sh): vLLM and transformers agree, QLoRA trains.

1. builds (or reuses) the default model under --home, and a small Qwen2-style directory with a real
   BPE tokenizer (multi-token decisions, a chat template) pre-trained briefly on a pack;
2. trains a LoRA adapter on each with QLoRA (4-bit NF4 base; bitsandbytes) and records the precision;
3. pins a pack with the vLLM engine, base and adapter hot-swapped (`LoRARequest`), and with the
   transformers engine on CUDA, and reports the share of identical decisions (aim >= 99.5 %);
4. reports p99 latency per decision for both engines.
Writes one JSON object to stdout and to --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import polars as pl
    import torch

    from modelsmith.adapter_training import AdapterRecipe, SftSettings, train_adapter
    from modelsmith.base_model import PretrainConfig, build_default
    from modelsmith.engines.inference import TransformersEngine, VllmEngine
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy
    from tests.support.llm_dirs import build_llm_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path("/tmp/modelsmith-gpu"))
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = ap.parse_args()
    report: dict = {"cuda": torch.cuda.is_available(),
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    v1 = shipped_policy(1)
    pack = label_requests(generate_requests(2000, 31), v1)
    rows = label_requests(generate_requests(args.rows, 0), v1).head(args.rows)
    models = {"default": build_default(args.home / "models" / "base", PretrainConfig(), log=lambda _: None)[0]}
    qwen = args.home / "qwen2"
    models["qwen2"] = qwen if (qwen / "config.json").is_file() else build_llm_dir("qwen2", qwen, pack, rounds=4)
    for name, model_dir in models.items():
        started = time.perf_counter()
        train = pack.head(1500).with_columns(
            pl.when(pl.col("position") == "btf").then(pl.lit("target")).otherwise(pl.lit("replay")).alias("source"))
        adapter = train_adapter(model_dir, train, args.home / f"adapter-{name}", AdapterRecipe(
            sft=SftSettings(epochs=2, batch_size=32)), log=lambda _: None)
        entry = {"qlora": adapter["qlora"], "precision": adapter["precision"],
                 "train_s": round(time.perf_counter() - started, 1)}
        hf = TransformersEngine(model_dir, device="cuda", batch_size=4)
        hf.attach_adapter(adapter["digest"], args.home / f"adapter-{name}")
        vl = VllmEngine(model_dir, batch_size=256)
        vl.attach_adapter(adapter["digest"], args.home / f"adapter-{name}")
        for version in (None, adapter["digest"]):
            hf.use(version)
            vl.use(version)
            a, b = hf.decide(rows), vl.decide(rows)
            key = "adapter" if version else "base"
            entry[key] = {"agreement": float(np.mean(np.array(a.decision) == np.array(b.decision))),
                          "transformers_p99_ms": float(np.percentile(a.latency_ms, 99)),
                          "vllm_p99_ms_batch_256": float(np.percentile(b.latency_ms, 99)),
                          "accuracy_transformers": float(np.mean(np.array(a.decision) == rows["expected"].to_numpy())),
                          "accuracy_vllm": float(np.mean(np.array(b.decision) == rows["expected"].to_numpy()))}
        del vl
        torch.cuda.empty_cache()
        report[name] = entry
    report["passed"] = all(report[n][k]["agreement"] >= 0.995 and report[n]["qlora"]
                           for n in models for k in ("base", "adapter"))
    text = json.dumps(report, indent=2)
    args.out.write_text(text)
    print(text)
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
