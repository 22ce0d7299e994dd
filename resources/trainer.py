"""How repair cycles train adapters: the LoRA and SFT knobs, as Dagster configuration."""

import dagster as dg
from pydantic import Field

from modelsmith.adapter_training import AdapterRecipe, GrpoSettings, LoraSettings, SftSettings


class TrainerSettings(dg.ConfigurableResource):
    """Defaults measured on the default story (see the README's repair section); change them in the Launchpad."""

    # Bounds: bad run config fails when the run starts, naming the field (a Dagster resource error),
    # not as a KeyError, a hang or NaN weights in the trainer.
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, le=65_536, description="LoRA alpha")
    target_modules: str = Field("all-linear",
                                description="peft target modules ('all-linear' or comma-separated names)")
    learning_rate: float = Field(3e-3, gt=0, le=1, allow_inf_nan=False,
                                 description="SFT learning rate (cosine schedule)")
    epochs: int = Field(10, ge=1, le=1_000, description="SFT epochs; the best epoch on the held-out slice is kept")
    batch_size: int = Field(32, ge=1, le=65_536, description="SFT batch size")
    seed: int = Field(0, ge=0, lt=2**32, description="Training seed")
    patience: int = Field(3, ge=0, le=1_000, description="Stop after this many epochs without a better held-out "
                                                        "score (0: train every epoch)")
    heldout_fraction: float = Field(0.1, gt=0, lt=1,
                                    description="Share of the synthetic rows held out for early stopping")
    replay_weight: float = Field(1.0, ge=0, le=1_000, allow_inf_nan=False,
                                 description="Weight of held-out replay accuracy against target accuracy")
    collateral_tolerance: float = Field(0.01, ge=0, le=1, allow_inf_nan=False,
                                        description="How far held-out non-target rows may fall below the untrained "
                                                    "adapter's for an epoch to be kept (early stopping on collateral)")
    validation_candidates: int = Field(4, ge=1, le=1_000,
                                       description="Epochs tried best first on the validation pack (the first that "
                                                   "holds every pin is kept); each costs one pass over the pack")
    stages: str = Field("", pattern=r"^\s*(sft\s*(,\s*grpo\s*)?)?$",
                        description="'' follows the diagnosis's recipe; 'sft' or 'sft,grpo' overrides it")
    grpo_learning_rate: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False, description="GRPO learning rate")
    grpo_steps: int = Field(60, ge=1, le=1_000_000, description="GRPO steps")
    grpo_num_generations: int = Field(8, ge=2, le=1_024, description="Completions sampled per prompt (the group)")
    grpo_temperature: float = Field(1.5, gt=0, le=10, allow_inf_nan=False,
                                    description="Sampling temperature (1.0 gives a confident model no advantage)")
    grpo_tolerance: float = Field(0.005, ge=0, le=1,
                                  description="Held-out accuracy on other rows GRPO may cost and still be kept")

    threads: int = Field(1, ge=1, le=1_024, description="torch CPU threads for training (1 measured fastest on 2 cores "
                                                          "for the default model; see benchmarks/threads)")

    def recipe(self, stages: tuple[str, ...]) -> AdapterRecipe:
        if self.stages:
            stages = tuple(s.strip() for s in self.stages.split(",") if s.strip())
        if stages not in (("sft",), ("sft", "grpo")):
            raise ValueError(f"TrainerSettings.stages must be 'sft' or 'sft,grpo', got {self.stages!r}")
        modules = self.target_modules if self.target_modules == "all-linear" else [
            m.strip() for m in self.target_modules.split(",") if m.strip()]
        return AdapterRecipe(
            stages=stages, lora=LoraSettings(r=self.lora_r, alpha=self.lora_alpha, target_modules=modules),
            sft=SftSettings(learning_rate=self.learning_rate, epochs=self.epochs, batch_size=self.batch_size,
                            seed=self.seed, heldout_fraction=self.heldout_fraction,
                            patience=self.patience or None),
            grpo=GrpoSettings(learning_rate=self.grpo_learning_rate, steps=self.grpo_steps,
                              num_generations=self.grpo_num_generations, temperature=self.grpo_temperature,
                              tolerance=self.grpo_tolerance),
            replay_weight=self.replay_weight, collateral_tolerance=self.collateral_tolerance, threads=self.threads,
            validation_candidates=self.validation_candidates)
