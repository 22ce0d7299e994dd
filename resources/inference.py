"""Inference engines behind one interface: decide a batch of feature rows.

`decide(features)` returns, per row, the decision, the probability of each label (in DECISIONS
order) and the latency a bidder sees for that decision: the time the micro-batch that decided it
took (at most `batch_size` requests gathered together, prompt encoding included; a bidder's bounded
wait for the batch to fill comes on top and is its own setting). On the CPU it is the deciding
thread's CPU time (`time.thread_time`; torch runs one thread), which is the wall time on a serving
core of its own: the pins judge the model, not whatever else shares the machine (a busy CI box
doubled wall-time p99s). The wall time is kept beside it (`latency_wall_ms`). On CUDA and in vLLM,
where the work leaves the thread, it is the wall time. The default micro-batch
of 4 keeps the default model and its adapters well inside the pins' 10 ms p99 budget on two CPU
cores (`benchmarks/latency/`). Adapters are attached once by digest and hot-swapped on one loaded
base model (`use(digest)`); the base is never reloaded.

- `TransformersEngine` (default; CPU or CUDA): one batched forward pass, and the next-token logits
  restricted to the label tokens (constrained decoding): no free generation on the hot path.
- `VllmEngine` (CUDA, the `gpu` extra): LoRA requests and `allowed_token_ids` restricted to the
  labels. Without CUDA or vLLM it is unavailable with a reason (`vllm_unavailable_reason`).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelsmith.prompt import LABEL_TOKENS, label_token_ids, prompts


@dataclass
class Decisions:
    decision: list[str]
    probabilities: np.ndarray  # (rows, len(LABEL_TOKENS)), rows sum to 1
    latency_ms: np.ndarray  # (rows,) time of the micro-batch each row was decided in (see the module docs)
    latency_wall_ms: np.ndarray | None = None  # (rows,) its wall time, when latency_ms is not

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "predicted": self.decision,
                **{f"p_{label}": self.probabilities[:, i] for i, label in enumerate(LABEL_TOKENS)},
                "confidence": self.probabilities.max(axis=1) if len(self.decision) else np.zeros(0),
                "latency_ms": self.latency_ms,
                "latency_wall_ms": self.latency_ms if self.latency_wall_ms is None else self.latency_wall_ms,
            },
            schema_overrides={f"p_{label}": pl.Float64 for label in LABEL_TOKENS},
        )


class InferenceEngine(Protocol):
    name: str

    def attach_adapter(self, digest: str, path: str | Path) -> None: ...

    def use(self, digest: str | None) -> None: ...

    def decide(self, features: pl.DataFrame) -> Decisions: ...


class TransformersEngine:
    """The default engine: transformers `from_pretrained` on a directory, peft for adapters."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, device: str = "auto", batch_size: int = 4, threads: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Small matmuls on a shared CPU: one thread unless told otherwise (a second mostly waits, measured here).
        torch.set_num_threads(threads or 1)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device).eval()
        self.model = self.base
        self.label_ids = torch.tensor(label_token_ids(self.tokenizer), device=self.device)
        self.batch_size = batch_size
        self.adapters: dict[str, str] = {}
        self.active: str | None = None

    @classmethod
    def from_loaded(cls, model, tokenizer, batch_size: int = 64) -> "TransformersEngine":
        """An engine over a model already in memory (the pretraining loop checks pins with it)."""
        import torch

        self = cls.__new__(cls)
        self.device = next(model.parameters()).device
        self.model_dir = ""
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.base = self.model = model.eval()
        self.label_ids = torch.tensor(label_token_ids(tokenizer), device=self.device)
        self.batch_size, self.adapters, self.active = batch_size, {}, None
        return self

    @classmethod
    def merged(cls, model_dir: str | Path, adapter_dir: str | Path, device: str = "auto", batch_size: int = 4,
               threads: int = 0) -> "TransformersEngine":
        """The base with one adapter merged into its weights (`merge_and_unload`): how a promoted champion is served.

        A merged adapter costs nothing per decision; it cannot be swapped, which serving does not need.
        """
        from peft import PeftModel

        engine = cls(model_dir, device=device, batch_size=batch_size, threads=threads)
        engine.base = engine.model = PeftModel.from_pretrained(engine.base, str(adapter_dir)).merge_and_unload().eval()
        return engine

    def attach_adapter(self, digest: str, path: str | Path) -> None:
        """Load a LoRA adapter once under its digest; `use(digest)` then switches to it."""
        from peft import PeftModel

        if digest in self.adapters:
            return
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=digest).eval()
        else:
            self.model.load_adapter(str(path), adapter_name=digest)
        self.adapters[digest] = str(path)
        self.use(self.active)

    def use(self, digest: str | None) -> None:
        """Switch to an attached adapter (None: the base model alone) without reloading anything."""
        if digest is not None and digest not in self.adapters:
            raise KeyError(f"adapter {digest} is not attached; attach_adapter() it first")
        if digest is not None:
            self.model.set_adapter(digest)
        self.active = digest

    def _forward(self, texts: list[str]):
        import contextlib

        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        input_ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        kwargs = {}
        if not bool(mask.all()):  # prompts of unequal length (a user's tokenizer): left padding
            kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        off = self.model.disable_adapter() if (self.adapters and self.active is None) else contextlib.nullcontext()
        with off:
            out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1, **kwargs)
        logits = out.logits[:, -1, :].index_select(-1, self.label_ids).float()
        return torch.softmax(logits, dim=-1)

    def decide(self, features: pl.DataFrame) -> Decisions:
        import torch

        texts = prompts(features)
        probs = np.zeros((len(texts), len(LABEL_TOKENS)), dtype=np.float64)
        latency = np.zeros(len(texts), dtype=np.float64)
        wall = np.zeros(len(texts), dtype=np.float64)
        on_thread = self.device.type == "cpu"
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                stop = min(start + self.batch_size, len(texts))
                t0, c0 = time.perf_counter(), time.thread_time()
                p = self._forward(texts[start:stop]).cpu().numpy()
                wall[start:stop] = (time.perf_counter() - t0) * 1e3
                latency[start:stop] = (time.thread_time() - c0) * 1e3 if on_thread else wall[start:stop]
                probs[start:stop] = p
        return Decisions([LABEL_TOKENS[i] for i in probs.argmax(axis=1)], probs, latency, wall)


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM engine cannot run here, or None when it can."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "the vLLM engine needs a CUDA GPU and none is visible (torch.cuda.is_available() is False)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed; install the gpu extra: pip install 'modelsmith[gpu]'"
    return None


class VllmEngine:
    """vLLM on CUDA: LoRA adapters as per-request `LoRARequest`s, decoding restricted to the label tokens."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, batch_size: int = 1024, max_loras: int = 4, gpu_memory_utilization: float = 0.5):
        reason = vllm_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.label_ids = label_token_ids(self.tokenizer)
        self.llm = LLM(model=self.model_dir, enable_lora=True, max_loras=max_loras, max_lora_rank=64,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=True)
        self.batch_size = batch_size
        self.adapters: dict[str, tuple[int, str]] = {}
        self.active: str | None = None

    def attach_adapter(self, digest: str, path: str | Path) -> None:
        if digest not in self.adapters:
            self.adapters[digest] = (len(self.adapters) + 1, str(path))

    def use(self, digest: str | None) -> None:
        if digest is not None and digest not in self.adapters:
            raise KeyError(f"adapter {digest} is not attached; attach_adapter() it first")
        self.active = digest

    def decide(self, features: pl.DataFrame) -> Decisions:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=self.label_ids,
                                logprobs=len(self.label_ids))
        lora = None
        if self.active is not None:
            lora_id, path = self.adapters[self.active]
            lora = LoRARequest(self.active[:16], lora_id, path)
        texts = prompts(features)
        probs = np.zeros((len(texts), len(LABEL_TOKENS)))
        latency = np.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            stop = min(start + self.batch_size, len(texts))
            t0 = time.perf_counter()
            outputs = self.llm.generate(texts[start:stop], params, lora_request=lora, use_tqdm=False)
            latency[start:stop] = (time.perf_counter() - t0) * 1e3
            for i, out in enumerate(outputs):
                lp = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
                row = np.array([np.exp(lp[t].logprob) if t in lp else 0.0 for t in self.label_ids])
                if row.sum() == 0:  # only the sampled token came back
                    row[self.label_ids.index(out.outputs[0].token_ids[0])] = 1.0
                probs[start + i] = row / row.sum()
        return Decisions([LABEL_TOKENS[i] for i in probs.argmax(axis=1)], probs, latency)


class InferenceSettings(dg.ConfigurableResource):
    """Which engine decides, on which device, in what batch size."""

    engine: str = Field("transformers", description="'transformers' (CPU or CUDA) or 'vllm' (CUDA, the gpu extra)")
    device: str = Field("auto", description="transformers device: auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(4, ge=1, le=65_536,
                            description="Decisions per micro-batch (forward pass); a decision's latency is its "
                                        "micro-batch's wall time")
    merge_champion: bool = Field(False, description="Serve a champion adapter merged into the base weights "
                                                    "(transformers engine); other versions are attached and swapped")

    def load(self, model_dir: str | Path) -> InferenceEngine:
        return load_engine(model_dir, self.engine, self.device, self.batch_size)


def load_engine(model_dir: str | Path, engine: str = "transformers", device: str = "auto", batch_size: int = 4) -> InferenceEngine:
    if engine == "transformers":
        return TransformersEngine(model_dir, device=device, batch_size=batch_size)
    if engine == "vllm":
        return VllmEngine(model_dir, batch_size=batch_size)
    raise ValueError(f"unknown inference engine {engine!r}; expected 'transformers' or 'vllm'")
