"""The inference resource: which engine (`modelsmith.engines.inference`) decides, on which device."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from modelsmith.engines.inference import InferenceEngine, load_engine


class InferenceSettings(dg.ConfigurableResource):
    """Which engine decides, on which device, in what batch size."""

    engine: str = Field("transformers", description="'transformers' (CPU or CUDA) or 'vllm' (CUDA, the gpu extra)")
    device: str = Field("auto", description="transformers device: auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(4, ge=1, le=65_536,
                            description="Decisions per micro-batch (forward pass); a decision's latency is its "
                                        "micro-batch's wall time")
    threads: int = Field(1, ge=1, le=1_024, description="torch CPU threads for inference (1 measured fastest on 2 cores "
                                                          "for the default model; see benchmarks/threads)")
    merge_champion: bool = Field(False, description="Serve a champion adapter merged into the base weights "
                                                    "(transformers engine); other versions are attached and swapped")

    def load(self, model_dir: str | Path) -> InferenceEngine:
        return load_engine(model_dir, self.engine, self.device, self.batch_size, self.threads)
