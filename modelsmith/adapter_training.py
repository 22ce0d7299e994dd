"""LoRA adapters for a repair cycle: trl's SFT trainer on the synthetic rows, with early stopping.

Each training row is the prompt's token ids plus the decision token, with the loss on the
decision token only (labels -100 elsewhere): the decision is one token, so no EOS is appended and
scoring stays one forward pass. After every epoch the adapter is scored on a held-out slice of the
synthetic rows (target and replay apart); the best epoch's weights are kept (early stopping), so
a recipe that starts forgetting the other segments stops there.

Configuration is dataclasses with CPU-friendly defaults (trl's defaults suit 7B models on GPUs:
bf16 and gradient checkpointing made CPU steps 10-25x slower here). The adapter directory is
written atomically (a temporary sibling, renamed): a killed run leaves no half-written adapter.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from modelsmith.model_dir import directory_digest


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class SftSettings:
    learning_rate: float = 3e-3
    epochs: int = 6
    batch_size: int = 32
    scheduler: str = "cosine"
    warmup_steps: int = 5
    seed: int = 0
    heldout_fraction: float = 0.1


@dataclass
class AdapterRecipe:
    stages: tuple[str, ...] = ("sft",)
    lora: LoraSettings = field(default_factory=LoraSettings)
    sft: SftSettings = field(default_factory=SftSettings)
    replay_weight: float = 1.0  # how much a replay-accuracy point counts against a target point when picking the epoch


def split_heldout(rows: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, held-out), stratified by `source` so both slices hold target and replay rows."""
    parts_train, parts_held = [], []
    for _, part in rows.group_by("source", maintain_order=True):
        shuffled = part.sample(fraction=1.0, shuffle=True, seed=seed)
        k = max(1, int(round(fraction * part.height)))
        parts_held.append(shuffled.head(k))
        parts_train.append(shuffled.slice(k))
    return pl.concat(parts_train), pl.concat(parts_held)


def _dataset(tokenizer, rows: pl.DataFrame):
    import torch
    from datasets import Dataset

    from modelsmith.base_model import encode

    x, y = encode(tokenizer, rows)
    ids = torch.cat([x, y[:, None]], dim=1).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": [[-100] * x.shape[1] + [t] for t in y.tolist()]})


def heldout_accuracy(model, tokenizer, rows: pl.DataFrame) -> dict[str, float]:
    """Accuracy per `source` (target, replay, contrast) and over every non-target row (`others`)."""
    from resources.inference import TransformersEngine

    engine = TransformersEngine.from_loaded(model, tokenizer, batch_size=64)
    predicted = engine.decide(rows).decision
    scored = rows.with_columns(pl.Series("predicted", predicted)).with_columns(
        (pl.col("predicted") == pl.col("expected")).alias("correct"))
    out = {src[0]: float(part["correct"].mean()) for src, part in scored.group_by("source")}
    others = scored.filter(pl.col("source") != "target")
    return {**out, "others": float(others["correct"].mean()) if others.height else 1.0}


def train_sft_adapter(base_dir: Path, rows: pl.DataFrame, out_dir: Path, recipe: AdapterRecipe | None = None,
                      log: Callable[[str], None] = print) -> dict:
    """Train a LoRA adapter on `rows` (labelled synthetic rows with `source`) and save it to `out_dir`."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    recipe = recipe or AdapterRecipe()
    sft = recipe.sft
    torch.set_num_threads(1)
    torch.manual_seed(sft.seed)
    train_rows, held = split_heldout(rows, sft.heldout_fraction, sft.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    history: list[dict] = []
    best: dict = {"score": float("-inf")}

    class EpochEval(TrainerCallback):
        """Held-out accuracy after every epoch; keep the best epoch's adapter weights."""

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            from peft import get_peft_model_state_dict

            model.eval()
            acc = heldout_accuracy(model, tokenizer, held)
            model.train()
            score = acc.get("target", 0.0) + recipe.replay_weight * acc["others"]
            history.append({"epoch": round(state.epoch or 0), **acc})
            log(f"sft epoch {round(state.epoch or 0)}: held-out target {acc.get('target', 0):.4f}, "
                f"others {acc['others']:.4f} (contrast {acc.get('contrast', float('nan')):.4f})")
            if score > best["score"]:
                best.update(score=score, epoch=round(state.epoch or 0), accuracy=acc,
                            weights={k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()})

    config = SFTConfig(
        output_dir=str(work / "trainer"), bf16=False, use_cpu=True, report_to="none", gradient_checkpointing=False,
        learning_rate=sft.learning_rate, lr_scheduler_type=sft.scheduler, num_train_epochs=sft.epochs,
        per_device_train_batch_size=sft.batch_size, warmup_steps=sft.warmup_steps, max_length=64,
        save_strategy="no", logging_steps=20, seed=sft.seed, data_seed=sft.seed, dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True,
    )
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
    try:
        trainer = SFTTrainer(model=model, args=config, train_dataset=_dataset(tokenizer, train_rows),
                             processing_class=tokenizer, peft_config=lora, callbacks=[EpochEval()])
        trainer.train()
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainer.model, best["weights"])
        adapter_dir = work / "adapter"
        trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(adapter_dir, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"stages": ["sft"], "best_epoch": best["epoch"], "heldout": best["accuracy"], "history": history,
            "train_rows": train_rows.height, "heldout_rows": held.height, "final_loss": losses[-1] if losses else None,
            "recipe": asdict(recipe), "digest": directory_digest(out_dir)}
