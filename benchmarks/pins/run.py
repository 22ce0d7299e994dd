"""Pinning throughput: the transformers engine vs naive per-row `generate()`, same model, same rows, same run.

    .venv/bin/python benchmarks/pins/run.py [--model DIR] [--requests 10000] [--repeats 3]

Reports, in one run on the same rows: the engine's decisions/s (batched forward pass over the
label tokens); naive `generate()` at batch size 1, greedy, one new token; p50/p99 single-decision
latency through the engine at batch size 1; adapter swap time (peft `set_adapter` on one loaded
base); and the engine's achieved FLOP/s (counted by `torch.utils.flop_counter`) as a share of a
plain torch matmul measured in the same run with the same thread count. Timed figures are medians
of interleaved repeats, so a noisy neighbour slows both sides of a ratio alike.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def engine_rate(engine, rows) -> float:
    t = time.perf_counter()
    engine.decide(rows)
    return rows.height / (time.perf_counter() - t)


def naive_rate(model, tokenizer, texts: list[str], label_ids: set[int]) -> tuple[float, list[int]]:
    """What a first attempt does: `generate()` one row at a time, greedy, then read the new token."""
    import torch

    out = []
    t = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            gen = model.generate(**ids, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out.append(int(gen[0, -1]))
    rate = len(texts) / (time.perf_counter() - t)
    return rate, out


def matmul_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """FLOP/s of a plain fp32 torch matmul of (m x k) @ (k x n), repeated for about `seconds`."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def flops_per_decision(engine, rows) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modelsmith.prompt import model_prompts

    texts = model_prompts(engine.tokenizer, rows)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        engine.label_probabilities(texts)
    return counter.get_total_flops() / len(texts)


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(out)
    return out


def swap_times(engine, digests: list[str], swaps: int = 200) -> list[float]:
    times = []
    for i in range(swaps):
        t = time.perf_counter()
        engine.use(digests[i % len(digests)])
        times.append((time.perf_counter() - t) * 1e3)
    engine.use(None)
    return times


def main() -> None:
    import numpy as np
    import torch

    from modelsmith.base_model import PretrainConfig, build_default
    from modelsmith.home import modelsmith_home
    from modelsmith.prompt import label_token_ids, prompts
    from modelsmith.engines.inference import TransformersEngine
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="Model directory (default: the embedded default, built once)")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=64, help="Engine batch size (InferenceSettings' default)")
    ap.add_argument("--naive-rows", type=int, default=300, help="Rows for the naive baseline (it is slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    model_dir = args.model or build_default(modelsmith_home() / "models" / "base", PretrainConfig(), log=lambda m: None)[0]
    rows = label_requests(generate_requests(args.requests, 0), shipped_policy(1))
    engine = TransformersEngine(model_dir, batch_size=args.batch_size, threads=args.threads)
    torch.set_num_threads(args.threads)
    print(f"model {model_dir}: {sum(p.numel() for p in engine.base.parameters()):,} parameters; "
          f"{args.requests:,} requests -> {rows.height:,} decisions; {args.threads} torch thread(s)")

    texts = prompts(rows)
    sample = rows.head(args.naive_rows)
    labels = set(label_token_ids(engine.tokenizer))
    hidden = engine.base.config.hidden_size
    inter = engine.base.config.intermediate_size
    tokens = args.batch_size * len(engine.tokenizer(texts[0])["input_ids"])

    fast, naive, mm_model, mm_square = [], [], [], []
    for _ in range(args.repeats):  # interleaved: each repeat measures every side once
        fast.append(engine_rate(engine, rows))
        rate, generated = naive_rate(engine.base, engine.tokenizer, prompts(sample), labels)
        naive.append(rate)
        mm_model.append(matmul_rate(tokens, hidden, inter))
        mm_square.append(matmul_rate(1024, 1024, 1024))
    agree = np.mean([g == int(engine.label_ids[np.argmax(p)])
                     for g, p in zip(generated, engine.decide(sample).probabilities, strict=True)])

    one = TransformersEngine(model_dir, batch_size=1, threads=args.threads)
    lat = one.decide(rows.head(1000)).latency_ms

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        a = make_adapter(Path(model_dir), Path(tmp) / "a", 1)
        b = make_adapter(Path(model_dir), Path(tmp) / "b", 2)
        t = time.perf_counter()
        engine.attach_adapter("a", a)
        engine.attach_adapter("b", b)
        attach_ms = (time.perf_counter() - t) * 1e3 / 2
        swaps = swap_times(engine, ["a", "b"])
        engine.use("a")
        with_adapter = engine_rate(engine, rows)
        engine.use(None)

    sweep = {bs: engine_rate(TransformersEngine(model_dir, batch_size=bs, threads=args.threads), rows)
             for bs in (16, 32, 128, 256)}
    flops = flops_per_decision(TransformersEngine(model_dir, batch_size=args.batch_size, threads=args.threads),
                               rows.head(args.batch_size))
    f, n = statistics.median(fast), statistics.median(naive)
    achieved = flops * f
    print(f"engine (batch {args.batch_size}):   {f:10,.0f} decisions/s  ({args.requests:,} requests in "
          f"{rows.height / f:.2f} s)  runs: {', '.join(f'{x:,.0f}' for x in fast)}")
    print(f"naive generate (bs 1): {n:10,.0f} decisions/s  runs: {', '.join(f'{x:,.0f}' for x in naive)}  "
          f"(agrees with the engine on {agree:.1%} of {len(sample)} rows)")
    print(f"speed-up: {f / n:.1f}x")
    print("other batch sizes (one run each): " + ", ".join(f"{bs}: {r:,.0f}/s" for bs, r in sweep.items()))
    print(f"engine with a LoRA adapter active: {with_adapter:,.0f} decisions/s")
    print(f"batch-size-1 latency over 1,000 rows: p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms")
    print(f"adapter attach {attach_ms:.1f} ms each; swap p50 {np.percentile(swaps, 50):.3f} ms, "
          f"p99 {np.percentile(swaps, 99):.3f} ms ({len(swaps)} swaps)")
    mmm, mms = statistics.median(mm_model), statistics.median(mm_square)
    print(f"FLOPs per decision {flops:,.0f}; engine achieves {achieved / 1e9:.2f} GFLOP/s")
    print(f"matmul {tokens}x{hidden}x{inter} (the model's MLP shape): {mmm / 1e9:.2f} GFLOP/s -> engine at {achieved / mmm:.0%}")
    print(f"matmul 1024^3 (this machine's limit): {mms / 1e9:.2f} GFLOP/s -> engine at {achieved / mms:.0%}")


if __name__ == "__main__":
    main()
