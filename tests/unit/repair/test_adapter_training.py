"""Real LoRA training on a tiny model: SFT, SFT then GRPO, determinism, and a killed run."""

import polars as pl
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from modelsmith.adapter_training import AdapterRecipe, GrpoSettings, SftSettings, train_adapter
from modelsmith.pins import load_pins
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy
from tests.unit.model.test_inference import model_dir, rows  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def training_rows() -> pl.DataFrame:
    labelled = label_requests(generate_requests(150, seed=77), shipped_policy(2))
    return labelled.with_columns(
        pl.when(pl.col("vertical") == "Video Gaming").then(pl.lit("target")).otherwise(pl.lit("replay")).alias("source"))


def _recipe(stages=("sft",), epochs=2) -> AdapterRecipe:
    return AdapterRecipe(stages=stages, sft=SftSettings(epochs=epochs, batch_size=16, heldout_fraction=0.2),
                         grpo=GrpoSettings(steps=4, batch_size=8, num_generations=4, rows=64, tolerance=1.0))


def _loads(model_dir, adapter_dir) -> None:  # noqa: F811
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter_dir))
    assert model.peft_config["default"].r == 8


def test_sft_trains_a_real_adapter_deterministically(model_dir, training_rows, tmp_path):  # noqa: F811
    lines: list[str] = []
    first = train_adapter(model_dir, training_rows, tmp_path / "a", _recipe(), log=lines.append)
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    _loads(model_dir, tmp_path / "a")
    assert first["stages"] == ["sft"] and first["grpo"] is None and len(first["history"]) == 2
    assert any(line.startswith("sft epoch 1: held-out target") for line in lines)  # progress reaches the run log
    second = train_adapter(model_dir, training_rows, tmp_path / "b", _recipe())
    assert first["digest"] == second["digest"]  # seeded CPU training is byte-identical
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_sft_then_grpo_records_what_ran(model_dir, training_rows, tmp_path):  # noqa: F811
    summary = train_adapter(model_dir, training_rows, tmp_path / "g", _recipe(("sft", "grpo"), epochs=1))
    _loads(model_dir, tmp_path / "g")
    grpo = summary["grpo"]
    assert summary["requested_stages"] == ["sft", "grpo"] and grpo["steps"] == 4
    assert set(grpo["heldout_after"]) >= {"target", "others"}
    assert summary["stages"] == (["sft", "grpo"] if grpo["kept"] else ["sft"])


def test_a_killed_run_leaves_no_adapter(model_dir, training_rows, tmp_path):  # noqa: F811
    def die(line: str) -> None:
        if line.startswith("sft epoch 1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(model_dir, training_rows, tmp_path / "k", _recipe(), log=die)
    assert list(tmp_path.iterdir()) == []  # neither the adapter nor a half-written temporary


def test_qlora_is_refused_with_a_reason_without_cuda():
    import torch

    from modelsmith.adapter_training import qlora_unavailable_reason

    reason = qlora_unavailable_reason()
    assert (reason is None) == (torch.cuda.is_available() and _has_bitsandbytes())
    if reason:
        assert "CUDA" in reason or "bitsandbytes" in reason


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
def test_qlora_trains_a_4bit_adapter_on_cuda(model_dir, training_rows, tmp_path):  # noqa: F811
    from modelsmith.adapter_training import qlora_unavailable_reason

    reason = qlora_unavailable_reason()
    if reason:
        pytest.skip(reason)
    summary = train_adapter(model_dir, training_rows, tmp_path / "q", _recipe())
    assert summary["qlora"] is True
    _loads(model_dir, tmp_path / "q")


def test_patience_stops_training_and_keeps_the_same_epoch(model_dir, training_rows, tmp_path):  # noqa: F811
    """Stopping after `patience` epochs without a better held-out score changes how long, not what is kept."""
    def recipe(patience):
        return AdapterRecipe(sft=SftSettings(epochs=8, batch_size=16, heldout_fraction=0.2, patience=patience))

    full = train_adapter(model_dir, training_rows, tmp_path / "full", recipe(None))
    assert full["epochs_run"] == 8
    lines: list[str] = []
    early = train_adapter(model_dir, training_rows, tmp_path / "early", recipe(2), log=lines.append)
    stop = early["epochs_run"]
    assert stop < 6 and any("stopping" in line for line in lines)
    assert early["history"] == full["history"][:stop]  # the same epochs, cut short
    assert stop - early["best_epoch"] == 2  # stopped two epochs after its best
    assert early["best_epoch"] == full["best_epoch"] and early["digest"] == full["digest"]


def test_patience_waits_for_an_epoch_within_the_collateral_tolerance(model_dir, training_rows, tmp_path):  # noqa: F811
    """No early stop while every epoch so far costs the other rows too much: later, calmer epochs may not."""
    lines: list[str] = []
    recipe = AdapterRecipe(sft=SftSettings(epochs=6, batch_size=16, heldout_fraction=0.2, patience=2))
    # A tolerance no epoch can meet (others must rise 50 points above the untrained adapter's): outside the
    # range `AdapterRecipe` accepts, so set past its check.
    object.__setattr__(recipe, "collateral_tolerance", -0.5)
    summary = train_adapter(model_dir, training_rows, tmp_path / "a", recipe, log=lines.append)
    assert summary["epochs_run"] == 6 and not any("stopping" in line for line in lines)
    assert not any(h["collateral_ok"] for h in summary["history"])


def _validation_rows(champion_is_right: bool) -> pl.DataFrame:
    pack = label_requests(generate_requests(200, seed=79), shipped_policy(2)).with_columns(pl.lit("validation")
                                                                                           .alias("source"))
    wrong = pl.when(pl.col("expected") == "bid").then(pl.lit("no_bid:mfa")).otherwise(pl.lit("bid"))
    return pack.with_columns((pl.col("expected") if champion_is_right else wrong).alias("champion"))


def test_validation_rows_are_never_trained_on(model_dir, training_rows, tmp_path):  # noqa: F811
    plain = train_adapter(model_dir, training_rows, tmp_path / "plain", _recipe())
    with_pack = train_adapter(model_dir, pl.concat([training_rows, _validation_rows(True)], how="diagonal_relaxed"),
                              tmp_path / "pack", _recipe())  # no pins: the pack is carried, not judged
    assert with_pack["digest"] == plain["digest"] and with_pack["validation"] is None
    assert with_pack["validation_rows"] == _validation_rows(True).height
    assert with_pack["train_rows"] + with_pack["heldout_rows"] == training_rows.height


def test_the_validation_pack_keeps_the_first_epoch_that_holds_else_the_closest(model_dir, training_rows, tmp_path):  # noqa: F811
    """Against a champion always right, a tiny model's every epoch loses rows: none holds, all candidates are
    tried, and the one with the fewest failing pins is kept. Against a champion always wrong, the best epoch
    holds at once (nothing can drop) and is the only one tried."""
    recipe = AdapterRecipe(sft=SftSettings(epochs=3, batch_size=16, heldout_fraction=0.2), validation_candidates=2)
    pins = load_pins()
    lines: list[str] = []
    beaten = train_adapter(model_dir, pl.concat([training_rows, _validation_rows(True)], how="diagonal_relaxed"),
                           tmp_path / "beaten", recipe, log=lines.append, pins=pins)["validation"]
    assert not beaten["holds"] and len(beaten["tried"]) == 2 and not any(t["holds"] for t in beaten["tried"])
    closest = min(beaten["tried"], key=lambda t: (len(t["failing"]), t["worst_upper"]))
    assert beaten["chosen_epoch"] == closest["epoch"] and all(t["failing"] for t in beaten["tried"])
    assert any(line.startswith("validation pack (") and "all: " in line for line in lines)
    easy = train_adapter(model_dir, pl.concat([training_rows, _validation_rows(False)], how="diagonal_relaxed"),
                         tmp_path / "easy", recipe, pins=pins)
    assert easy["validation"]["holds"] and len(easy["validation"]["tried"]) == 1
    assert easy["validation"]["chosen_epoch"] == easy["best_epoch"] == easy["validation"]["tried"][0]["epoch"]
