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

Both engines share one interface: `decide(features)` for pins and `label_probabilities(texts)` for
traces (prompt texts in, one probability per label out). A label's score is its log-likelihood
after the prompt (`modelsmith.label_scoring`), so any tokenizer works; no free generation.

- `TransformersEngine` (default; CPU or CUDA): one batched forward pass per micro-batch, every
  label's tokens scored together after the shared prompt.
- `VllmEngine` (CUDA, the `gpu` extra): each prompt + label scored with `prompt_logprobs`, LoRA
  adapters as `LoRARequest`s. Without CUDA or vLLM it is unavailable with a reason
  (`vllm_unavailable_reason`).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from modelsmith.label_scoring import LabelError, LabelScorer
from modelsmith.model_dir import ModelDirError, check_model_dir
from modelsmith.prompt import LABEL_TOKENS, model_prompts


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


def load_tokenizer(model_dir: str) -> tuple[object, LabelScorer]:
    """The directory's tokenizer and its label scorer; a tokenizer that cannot score the decisions is refused by name."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{model_dir}: the tokenizer does not load ({str(e).splitlines()[0]}); "
                            "save it with tokenizer.save_pretrained(DIR)") from None
    try:
        return tokenizer, LabelScorer.for_tokenizer(tokenizer)
    except LabelError as e:
        raise ModelDirError(f"{model_dir}: {e}") from None


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
        from transformers import AutoModelForCausalLM

        # Small matmuls on a shared CPU: one thread unless told otherwise (a second mostly waits, measured here).
        torch.set_num_threads(threads or 1)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model_dir = str(check_model_dir(model_dir))
        self.tokenizer, self.scorer = load_tokenizer(self.model_dir)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelDirError(f"{self.model_dir}: the weights do not load ({str(e).splitlines()[0][:200]}); "
                                "write them with model.save_pretrained(DIR)") from None
        self.model = self.base
        self.batch_size = batch_size
        self.adapters: dict[str, str] = {}
        self.active: str | None = None

    @classmethod
    def from_loaded(cls, model, tokenizer, batch_size: int = 64) -> "TransformersEngine":
        """An engine over a model already in memory (the pretraining loop checks pins with it)."""
        self = cls.__new__(cls)
        self.device = next(model.parameters()).device
        self.model_dir = ""
        self.tokenizer = tokenizer
        self.scorer = LabelScorer.for_tokenizer(tokenizer)
        self.dtype = next(model.parameters()).dtype
        self.base = self.model = model.eval()
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

    def label_probabilities(self, texts: list[str]):
        """(rows, labels) probabilities of each decision after each prompt text: one forward pass (a torch tensor)."""
        import contextlib

        import torch

        inputs = self.scorer.model_inputs(texts, device=self.device, dtype=self.dtype)
        off = self.model.disable_adapter() if (self.adapters and self.active is None) else contextlib.nullcontext()
        with off:
            out = self.model(**inputs, use_cache=False, logits_to_keep=self.scorer.keep)
        return torch.softmax(self.scorer.log_likelihoods(out.logits[:, -self.scorer.keep:, :]), dim=-1)

    def decide(self, features: pl.DataFrame) -> Decisions:
        import torch

        texts = model_prompts(self.tokenizer, features, self.scorer.format)
        probs = np.zeros((len(texts), len(LABEL_TOKENS)), dtype=np.float64)
        latency = np.zeros(len(texts), dtype=np.float64)
        wall = np.zeros(len(texts), dtype=np.float64)
        on_thread = self.device.type == "cpu"
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                stop = min(start + self.batch_size, len(texts))
                t0, c0 = time.perf_counter(), time.thread_time()
                p = self.label_probabilities(texts[start:stop]).cpu().numpy()
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
    """vLLM on CUDA: each label scored after the prompt with `prompt_logprobs`, adapters as `LoRARequest`s.

    Every row becomes one sequence per label (prompt + label tokens); prefix caching computes the shared
    prompt once. The label's log-likelihood is the sum of its tokens' prompt log-probabilities, the
    same quantity the transformers engine reads, so both engines decide alike (`scripts/gpu_check.sh`
    measures the agreement).
    """

    name = "vllm"

    def __init__(self, model_dir: str | Path, batch_size: int = 256, max_loras: int = 4, gpu_memory_utilization: float = 0.5):
        reason = vllm_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        from vllm import LLM

        self.model_dir = str(check_model_dir(model_dir))
        self.tokenizer, self.scorer = load_tokenizer(self.model_dir)
        self.llm = LLM(model=self.model_dir, enable_lora=True, max_loras=max_loras, max_lora_rank=64,
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)
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

    def label_probabilities(self, texts: list[str]) -> np.ndarray:
        """(rows, labels) probabilities of each decision after each prompt text."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.lora.request import LoRARequest

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        lora = None
        if self.active is not None:
            lora_id, path = self.adapters[self.active]
            lora = LoRARequest(self.active[:16], lora_id, path)
        labels = self.scorer.labels
        requests = [TokensPrompt(prompt_token_ids=list(p) + seq)
                    for p in self.scorer.prompt_ids(texts) for seq in labels]
        outputs = self.llm.generate(requests, params, lora_request=lora, use_tqdm=False)
        loglik = np.zeros((len(texts), len(labels)))
        for n, out in enumerate(outputs):
            i, j = divmod(n, len(labels))
            seq = labels[j]
            tail = out.prompt_logprobs[-len(seq):]
            loglik[i, j] = sum(step[t].logprob for step, t in zip(tail, seq, strict=True))
        loglik -= loglik.max(axis=1, keepdims=True)
        p = np.exp(loglik)
        return p / p.sum(axis=1, keepdims=True)

    def decide(self, features: pl.DataFrame) -> Decisions:
        texts = model_prompts(self.tokenizer, features, self.scorer.format)
        probs = np.zeros((len(texts), len(LABEL_TOKENS)))
        latency = np.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            stop = min(start + self.batch_size, len(texts))
            t0 = time.perf_counter()
            probs[start:stop] = self.label_probabilities(texts[start:stop])
            latency[start:stop] = (time.perf_counter() - t0) * 1e3
        return Decisions([LABEL_TOKENS[i] for i in probs.argmax(axis=1)], probs, latency)


def load_engine(model_dir: str | Path, engine: str = "transformers", device: str = "auto", batch_size: int = 4,
                threads: int = 1) -> InferenceEngine:
    if engine == "transformers":
        return TransformersEngine(model_dir, device=device, batch_size=batch_size, threads=threads)
    if engine == "vllm":
        return VllmEngine(model_dir, batch_size=batch_size)
    raise ValueError(f"unknown inference engine {engine!r}; expected 'transformers' or 'vllm'")


def load_with_adapter(model_dir: str | Path, adapter_dir: str | Path, digest: str, engine: str = "transformers",
                      device: str = "auto", batch_size: int = 4, threads: int = 1, merge: bool = True) -> InferenceEngine:
    """A base with one adapter, as it is served: merged into the weights (`merge`, transformers engine), so a
    decision costs what the base's costs; otherwise attached under `digest` and switched on (hot-swappable)."""
    if merge and engine == "transformers":
        return TransformersEngine.merged(model_dir, adapter_dir, device, batch_size, threads)
    loaded = load_engine(model_dir, engine, device, batch_size, threads)
    loaded.attach_adapter(digest, adapter_dir)
    loaded.use(digest)
    return loaded
