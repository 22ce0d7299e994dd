"""Which base model the loop pins: a user's Hugging Face directory, or the embedded default it builds."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from modelsmith.base_model import PretrainConfig
from modelsmith.model_dir import check_model_dir


class ModelSettings(dg.ConfigurableResource):
    """`base_model_dir` set: that directory is the base model (loaded with `from_pretrained`, as is).

    Empty (the default): Modelsmith builds its tiny default model on a policy v1 pack of
    `build_pack_size` requests (seed 1), until a validation pack (seed 2) meets every v1 pin floor; its
    accuracy on a holdout pack (seed 3) is in the asset's metadata. The pinned scenarios use seed 0.
    """

    base_model_dir: str = Field("", description="A Hugging Face causal-LM directory; empty builds the embedded default")
    build_pack_size: int = Field(10_000, ge=1, le=100_000_000,
                                 description="Requests in the v1 pack the default model is trained on")
    build_seed: int = Field(0, ge=0, lt=2**32,
                            description="Seed of the training run: initial weights and batch order (the build is deterministic)")
    max_rounds: int = Field(16, ge=1, le=1_000,
                            description="Most rounds of pre-training epochs before the build gives up on the pins")

    def user_model(self) -> Path | None:
        if not self.base_model_dir:
            return None
        return check_model_dir(self.base_model_dir)

    def pretrain_config(self) -> PretrainConfig:
        return PretrainConfig(seed=self.build_seed, max_rounds=self.max_rounds)
