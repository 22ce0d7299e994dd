"""The inference resource: which engine (`modelsmith.engines.inference`) decides, on which device."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from modelsmith.engines.inference import InferenceEngine, load_engine, load_with_adapter
from modelsmith.model_dir import ModelVersion, Registry


class InferenceSettings(dg.ConfigurableResource):
    """Which engine decides, on which device, in what batch size."""

    engine: str = Field("transformers", description="'transformers' (CPU or CUDA) or 'vllm' (CUDA, the gpu extra)")
    device: str = Field("auto", description="transformers device: auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(4, ge=1, le=65_536,
                            description="Decisions per micro-batch (forward pass); a decision's latency is its "
                                        "micro-batch's wall time")
    threads: int = Field(1, ge=1, le=1_024, description="torch CPU threads for inference (1 measured fastest on 2 cores "
                                                          "for the default model; see benchmarks/threads)")
    merge_adapters: bool = Field(
        True, description="Pin and serve an adapter version merged into its base's weights (transformers engine), "
        "as a promoted adapter is served: per decision it costs what the base costs. False: attached to the "
        "loaded base and switched on (hot-swappable; measured about twice the base's p99 on 2 CPU cores)")

    def load(self, model_dir: str | Path) -> InferenceEngine:
        return load_engine(model_dir, self.engine, self.device, self.batch_size, self.threads)

    def load_version(self, version: ModelVersion, registry: Registry) -> InferenceEngine:
        """The engine that decides for one registered version, as it would be served.

        An adapter version is merged into its base (`merge_adapters`, the default with the transformers
        engine), so its pins judge the latency a bidder would see once it is promoted; otherwise it is
        attached to its loaded base by digest and switched on. The candidate's accuracy is the merged
        model's: the weights it would serve.
        """
        if version.kind == "base":
            return self.load(version.path)
        return load_with_adapter(registry.get(version.base).path, version.path, version.digest, self.engine,
                                 self.device, self.batch_size, self.threads, merge=self.merge_adapters)
