"""Every plain config dataclass through one table: defaults, frozen, round trip, and bad values named."""

import dataclasses

import pytest

from modelsmith.adapter_training import AdapterRecipe, GrpoSettings, LoraSettings, SftSettings
from modelsmith.base_model import PretrainConfig, TinyLlamaConfig

CONFIGS = (LoraSettings, SftSettings, GrpoSettings, AdapterRecipe, TinyLlamaConfig, PretrainConfig)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid_frozen_and_round_trip(cls):
    config = cls()
    first = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first, getattr(config, first))
    assert cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}) == config


BAD = [
    (LoraSettings, {"r": 0}, "LoraSettings.r"),
    (LoraSettings, {"dropout": 1.0}, "LoraSettings.dropout"),
    (LoraSettings, {"target_modules": []}, "LoraSettings.target_modules"),
    (SftSettings, {"learning_rate": 0.0}, "SftSettings.learning_rate"),
    (SftSettings, {"learning_rate": float("nan")}, "SftSettings.learning_rate"),
    (SftSettings, {"epochs": 0}, "SftSettings.epochs"),
    (SftSettings, {"epochs": 2.5}, "SftSettings.epochs"),
    (SftSettings, {"batch_size": -1}, "SftSettings.batch_size"),
    (SftSettings, {"heldout_fraction": 1.0}, "SftSettings.heldout_fraction"),
    (SftSettings, {"patience": 0}, "SftSettings.patience"),
    (SftSettings, {"seed": -1}, "SftSettings.seed"),
    (GrpoSettings, {"num_generations": 1}, "GrpoSettings.num_generations"),
    (GrpoSettings, {"temperature": 0.0}, "GrpoSettings.temperature"),
    (GrpoSettings, {"batch_size": 12, "num_generations": 8}, "GrpoSettings.batch_size"),
    (AdapterRecipe, {"stages": ("grpo",)}, "AdapterRecipe.stages"),
    (AdapterRecipe, {"collateral_tolerance": -0.1}, "AdapterRecipe.collateral_tolerance"),
    (AdapterRecipe, {"validation_candidates": 0}, "AdapterRecipe.validation_candidates"),
    (AdapterRecipe, {"threads": 0}, "AdapterRecipe.threads"),
    (TinyLlamaConfig, {"hidden_size": 0}, "TinyLlamaConfig.hidden_size"),
    (TinyLlamaConfig, {"hidden_size": 66}, "num_attention_heads"),
    (PretrainConfig, {"learning_rate": 2.0}, "PretrainConfig.learning_rate"),
    (PretrainConfig, {"max_rounds": 0}, "PretrainConfig.max_rounds"),
    (PretrainConfig, {"validation_pack_seed": 1}, "must differ"),
]


@pytest.mark.parametrize("cls, changes, named", BAD, ids=[f"{c.__name__}-{n}" for c, _, n in BAD])
def test_a_bad_value_is_refused_where_the_config_is_made_and_named(cls, changes, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        cls(**changes)


def test_the_trainer_resource_defaults_are_the_recipe_defaults():
    """The Launchpad's knobs (TrainerSettings) and the plain recipe the CLI and tests use start at one place."""
    from resources.trainer import TrainerSettings

    assert TrainerSettings().recipe(("sft",)) == AdapterRecipe()
