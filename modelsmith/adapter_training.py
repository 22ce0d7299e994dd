"""LoRA adapters for a repair cycle: trl's SFT trainer on the synthetic rows (early stopping), then GRPO if asked.

Each training row is the prompt's token ids plus the decision's tokens, with the loss on the
decision only (labels -100 elsewhere); no EOS is appended, because a decision is scored by its
log-likelihood among the five (`modelsmith.label_scoring`), never generated. After every epoch the adapter is scored on a held-out slice of the
synthetic rows (target and replay apart, never the pins); the kept epoch is the best on target
among those whose non-target rows (which carry the champion's decisions) stay within
`collateral_tolerance` of the untrained adapter's, so a recipe that starts changing the other
segments stops there; only when no epoch stays within it does the target-plus-replay score decide.

Configuration is dataclasses with CPU-friendly defaults (trl's defaults suit 7B models on GPUs:
bf16 and gradient checkpointing made CPU steps 10-25x slower here). The adapter directory is
written atomically (a temporary sibling, renamed): a killed run leaves no half-written adapter.
"""

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from modelsmith.atomic import replace_dir, work_dir
from modelsmith.config_checks import check_choice, check_int, check_range
from modelsmith.model_card import adapter_card, make_portable, write_card
from modelsmith.model_dir import directory_digest
from modelsmith.pins import PinSet
from modelsmith.validation import judge_on_validation


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        check_int(self, "r", 1, 1024)
        check_int(self, "alpha", 1, 65_536)
        check_range(self, "dropout", 0.0, 1.0, hi_open=True)
        if not self.target_modules or (not isinstance(self.target_modules, str)
                                       and not all(isinstance(m, str) and m for m in self.target_modules)):
            raise ValueError(f"LoraSettings.target_modules must be 'all-linear' or module names, "
                             f"got {self.target_modules!r}")


@dataclass(frozen=True)
class SftSettings:
    learning_rate: float = 3e-3
    epochs: int = 10
    batch_size: int = 32
    scheduler: str = "cosine"
    warmup_steps: int = 5
    seed: int = 0
    heldout_fraction: float = 0.1
    # Stop after this many epochs in a row without a better held-out score (None: train every epoch),
    # once an epoch has kept the other rows within `collateral_tolerance`: until then every epoch
    # runs, since the lower learning rates of later epochs are what bring the collateral back.
    # The kept epoch's weights do not depend on it (the schedule is fixed by `epochs`); only a better
    # epoch later than that would be missed.
    patience: int | None = 3

    def __post_init__(self) -> None:
        check_range(self, "learning_rate", 0.0, 1.0, lo_open=True)
        check_int(self, "epochs", 1, 1_000)
        check_int(self, "batch_size", 1, 65_536)
        if not isinstance(self.scheduler, str) or not self.scheduler:
            raise ValueError(f"SftSettings.scheduler must name a transformers scheduler, got {self.scheduler!r}")
        check_int(self, "warmup_steps", 0)
        check_int(self, "seed", 0, 2**32 - 1)
        check_range(self, "heldout_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.patience is not None:
            check_int(self, "patience", 1, 1_000)


@dataclass(frozen=True)
class GrpoSettings:
    """GRPO after SFT: the reward is agreement with the policy's decision plus a format term.

    A confident model samples identical completions at temperature 1.0 (zero advantage, zero
    gradient), hence the higher default temperature.
    """

    learning_rate: float = 1e-3
    steps: int = 60
    batch_size: int = 16
    num_generations: int = 8
    temperature: float = 1.5
    rows: int = 1_000  # prompts drawn from the training split (target and replay alike)
    tolerance: float = 0.005  # how much held-out accuracy on the other rows GRPO may cost and still be kept

    def __post_init__(self) -> None:
        check_range(self, "learning_rate", 0.0, 1.0, lo_open=True)
        check_int(self, "steps", 1, 1_000_000)
        check_int(self, "batch_size", 1, 65_536)
        check_int(self, "num_generations", 2, 1_024)
        check_range(self, "temperature", 0.0, 10.0, lo_open=True)
        check_int(self, "rows", 1)
        check_range(self, "tolerance", 0.0, 1.0)
        if self.batch_size % self.num_generations:  # trl groups each prompt's completions inside one batch
            raise ValueError(f"GrpoSettings.batch_size ({self.batch_size}) must be a multiple of "
                             f"GrpoSettings.num_generations ({self.num_generations})")


def qlora_unavailable_reason() -> str | None:
    """Why 4-bit QLoRA cannot be used here (it needs CUDA and bitsandbytes), or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "QLoRA needs a CUDA GPU and none is visible; training the LoRA in full precision on the CPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "QLoRA needs bitsandbytes (the gpu extra); training the LoRA in full precision"
    return None


@dataclass(frozen=True)
class AdapterRecipe:
    stages: tuple[str, ...] = ("sft",)
    qlora: bool = True  # 4-bit base weights when CUDA and bitsandbytes are present (see qlora_unavailable_reason)
    lora: LoraSettings = field(default_factory=LoraSettings)
    sft: SftSettings = field(default_factory=SftSettings)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    replay_weight: float = 1.0  # how much a replay-accuracy point counts against a target point when picking the epoch
    # Early stopping on collateral: an epoch whose held-out non-target rows (anchored to the champion)
    # fall more than this below the untrained adapter's is not kept while another epoch stays within it.
    collateral_tolerance: float = 0.01
    # With a validation pack and the pins, epochs are tried best first on it (modelsmith.validation) and the
    # first that holds every pin is kept; at most this many are tried (each costs one pass over the pack).
    validation_candidates: int = 4
    threads: int = 1  # torch CPU threads; 1 was the fastest for the default model on 2 cores (benchmarks/threads)

    def __post_init__(self) -> None:
        check_choice(self, "stages", (("sft",), ("sft", "grpo")))
        check_range(self, "replay_weight", 0.0, 1_000.0)
        check_range(self, "collateral_tolerance", 0.0, 1.0)
        check_int(self, "validation_candidates", 1, 1_000)
        check_int(self, "threads", 1, 1_024)


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
    """Prompt then decision tokens per row, the loss on the decision only (trl's collator pads the batch)."""
    from datasets import Dataset

    from modelsmith.label_scoring import LabelScorer
    from modelsmith.prompt import model_prompts

    scorer = LabelScorer.for_tokenizer(tokenizer)
    ids, labels = scorer.training_rows(model_prompts(tokenizer, rows, scorer.format), rows["expected"].to_list())
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def heldout_accuracy(model, tokenizer, rows: pl.DataFrame) -> dict[str, float]:
    """Accuracy per `source` (target, replay, contrast) and over every non-target row (`others`)."""
    from modelsmith.engines.inference import TransformersEngine

    engine = TransformersEngine.from_loaded(model, tokenizer, batch_size=64)
    predicted = engine.decide(rows).decision
    scored = rows.with_columns(pl.Series("predicted", predicted)).with_columns(
        (pl.col("predicted") == pl.col("expected")).alias("correct"))
    out = {src[0]: float(part["correct"].mean()) for src, part in scored.group_by("source")}
    others = scored.filter(pl.col("source") != "target")
    return {**out, "others": float(others["correct"].mean()) if others.height else 1.0}


def agreement_reward(prompts, completions, expected, **_) -> list[float]:
    """1 when the completion is the policy's decision for the row, else 0."""
    return [1.0 if c.strip() == e else 0.0 for c, e in zip(completions, expected, strict=True)]


def format_reward(prompts, completions, **_) -> list[float]:
    """A small bonus for answering with exactly one decision label, a penalty for anything else."""
    from modelsmith.prompt import LABEL_TOKENS

    return [0.1 if c.strip() in LABEL_TOKENS else -0.5 for c in completions]


def _log_callback(log: Callable[[str], None], stage: str):
    from transformers import TrainerCallback

    class LogToRun(TrainerCallback):
        """Forward the trainer's log lines (loss, reward, learning rate) to the Dagster run log."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            keep = {k: logs[k] for k in ("loss", "reward", "learning_rate", "grad_norm") if logs and k in logs}
            if keep:
                log(f"{stage} step {state.global_step}: " + ", ".join(f"{k} {float(v):.4g}" for k, v in keep.items()))

    return LogToRun()


def _quiet(trainer) -> None:
    """The log callback forwards progress; transformers' printer would repeat every dict on stdout."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _grpo(model, tokenizer, train_rows: pl.DataFrame, settings: GrpoSettings, seed: int, work: Path,
          log: Callable[[str], None]):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from modelsmith.label_scoring import label_sequences
    from modelsmith.prompt import model_prompts

    sample = train_rows.sample(min(settings.rows, train_rows.height), seed=seed)
    dataset = Dataset.from_dict({"prompt": model_prompts(tokenizer, sample), "expected": sample["expected"].to_list()})
    on_gpu = torch.cuda.is_available()
    config = GRPOConfig(
        output_dir=str(work / "grpo"), bf16=on_gpu, use_cpu=not on_gpu, report_to="none", gradient_checkpointing=False,
        learning_rate=settings.learning_rate, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
        num_generations=settings.num_generations, max_completion_length=max(len(s) for s in label_sequences(tokenizer)),
        temperature=settings.temperature,
        beta=0.0, logging_steps=10, save_strategy="no", seed=seed, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[agreement_reward, format_reward], args=config,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[_log_callback(log, "grpo")])
    _quiet(trainer)
    trainer.train()
    return trainer.model


def train_adapter(base_dir: Path, rows: pl.DataFrame, out_dir: Path, recipe: AdapterRecipe | None = None,
                  log: Callable[[str], None] = print, about: dict | None = None,
                  sign: Callable[[Path], object] | None = None, pins: PinSet | None = None) -> dict:
    """Train a LoRA adapter on `rows` (labelled synthetic rows with `source`) and save it to `out_dir`.

    Rows with source `validation` (and their `champion` decisions) are never trained on: with `pins`,
    the epochs are tried on them best first and the first that holds every pin is kept
    (`modelsmith.validation`); with none holding, the one closest to holding.
    SFT always; GRPO after it when the recipe asks, kept only when it does not lower held-out target
    accuracy and costs the other rows at most `grpo.tolerance` (else the SFT weights are saved).
    The adapter names its base by digest (`model_card.make_portable`) and carries a model card;
    `about` (cycle, dataset digest, policy, hypothesis, base digest) fills the card. `sign` (e.g.
    `ModelSigningKey.sign`) signs the finished directory before it is published, so `out_dir` never
    holds an adapter without its `model.sig`; the signature is outside the digest, which it leaves as is.
    """
    import torch
    from peft import LoraConfig, set_peft_model_state_dict
    from trl import SFTConfig, SFTTrainer

    recipe = recipe or AdapterRecipe()
    sft = recipe.sft
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(sft.seed)
    is_validation = pl.col("source") == "validation"
    validation, rows = rows.filter(is_validation), rows.filter(~is_validation)
    train_rows, held = split_heldout(rows, sft.heldout_fraction, sft.seed)
    model, tokenizer, why_not = _base_for_training(base_dir, recipe, log)
    on_gpu = why_not is None
    out_dir = Path(out_dir)
    work, lock = work_dir(out_dir)  # held while training: `modelsmith home sweep` leaves it alone
    model.eval()
    baseline = heldout_accuracy(model, tokenizer, held)["others"]  # the base alone: the champion's collateral
    log(f"held-out other rows before training: {baseline:.4f}")
    epochs = _EpochSelection(tokenizer, held, baseline, recipe, log)
    config = SFTConfig(
        output_dir=str(work / "trainer"), bf16=on_gpu, use_cpu=not on_gpu, report_to="none", gradient_checkpointing=False,
        learning_rate=sft.learning_rate, lr_scheduler_type=sft.scheduler, num_train_epochs=sft.epochs,
        per_device_train_batch_size=sft.batch_size, warmup_steps=sft.warmup_steps, max_length=None,
        save_strategy="no", logging_steps=20, seed=sft.seed, data_seed=sft.seed, dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True,
    )
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
    try:
        trainer = SFTTrainer(model=model, args=config, train_dataset=_dataset(tokenizer, train_rows),
                             processing_class=tokenizer, peft_config=lora,
                             callbacks=[epochs.callback(), _log_callback(log, "sft")])
        _quiet(trainer)
        trainer.train()
        tuned = trainer.model
        validated = epochs.choose_on_validation(tuned, validation, pins) if pins and validation.height else None
        set_peft_model_state_dict(tuned, epochs.best["weights"])
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        tuned, stages_run, grpo_summary = _maybe_grpo(tuned, tokenizer, train_rows, held, epochs.best, recipe, work, log)
        summary = {"stages": stages_run, "requested_stages": list(recipe.stages), "grpo": grpo_summary,
                   "qlora": on_gpu, "precision": "4-bit NF4 base (QLoRA)" if on_gpu else f"fp32 ({why_not})",
                   "best_epoch": epochs.best["epoch"], "epochs_run": len(epochs.history),
                   "heldout": epochs.best["accuracy"], "history": epochs.history,
                   "heldout_others_before": baseline, "train_rows": train_rows.height, "heldout_rows": held.height,
                   "validation_rows": validation.height, "validation": validated,
                   "final_loss": losses[-1] if losses else None, "recipe": asdict(recipe)}
        about = {"base_digest": directory_digest(Path(base_dir)), **(about or {})}
        _publish(tuned, work / "adapter", out_dir, summary, about, sign)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(lock)
    return {**summary, "base_digest": about["base_digest"], "digest": directory_digest(out_dir)}


def _base_for_training(base_dir: Path, recipe: AdapterRecipe, log: Callable[[str], None]):
    """(model, tokenizer, why QLoRA is off or None): 4-bit NF4 on CUDA with bitsandbytes, else fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    why_not = qlora_unavailable_reason() if recipe.qlora else "QLoRA off in the recipe"
    if why_not is None:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = prepare_model_for_kbit_training(
            AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quant, device_map={"": 0}))
        log("QLoRA: 4-bit NF4 base weights on CUDA")
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        log(why_not)
    return model, tokenizer, why_not


class _EpochSelection:
    """Held-out accuracy after every SFT epoch; keeps every epoch's adapter weights and stops on patience.

    The best epoch has the highest held-out target accuracy among those that keep the other rows within
    `collateral_tolerance` of the untrained adapter's (`baseline`); ties, and epochs outside it, go by
    target + `replay_weight` x others. `choose_on_validation` then tries them in that order on the
    validation pack.
    """

    def __init__(self, tokenizer, held: pl.DataFrame, baseline: float, recipe: AdapterRecipe,
                 log: Callable[[str], None]) -> None:
        self.tokenizer, self.held, self.baseline, self.recipe, self.log = tokenizer, held, baseline, recipe, log
        self.history: list[dict] = []
        self.epochs: list[dict] = []  # per epoch: score, epoch, accuracy, weights
        self.best: dict = {"score": (False, float("-inf"), float("-inf"))}

    def epoch_end(self, model, epoch: int) -> bool:
        """Score the epoch, keep its weights when best; True when patience says stop."""
        from peft import get_peft_model_state_dict

        model.eval()
        acc = heldout_accuracy(model, self.tokenizer, self.held)
        model.train()
        within = acc["others"] >= self.baseline - self.recipe.collateral_tolerance
        score = (within, acc.get("target", 0.0) if within else float("-inf"),
                 acc.get("target", 0.0) + self.recipe.replay_weight * acc["others"])
        self.history.append({"epoch": epoch, **acc, "collateral_ok": within})
        self.log(f"sft epoch {epoch}: held-out target {acc.get('target', 0):.4f}, "
                 f"others {acc['others']:.4f} (contrast {acc.get('contrast', float('nan')):.4f})")
        patience = self.recipe.sft.patience
        self.epochs.append({"score": score, "epoch": epoch, "accuracy": acc,
                            "weights": {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}})
        if score > self.best["score"]:
            self.best = self.epochs[-1]
        elif patience is not None and self.best["score"][0] and epoch - self.best["epoch"] >= patience:
            self.log(f"sft: no better held-out score for {patience} epochs after epoch {self.best['epoch']}; stopping")
            return True
        return False

    def choose_on_validation(self, model, rows: pl.DataFrame, pins: PinSet) -> dict:
        """Try the epochs best first on the validation pack; keep the first that holds, else the closest.

        Sets `best`; returns what was tried, for the summary and the card.
        """
        from peft import set_peft_model_state_dict

        from modelsmith.engines.inference import TransformersEngine

        ranked = sorted(self.epochs, key=lambda e: e["score"], reverse=True)[:self.recipe.validation_candidates]
        tried = []
        for entry in ranked:
            set_peft_model_state_dict(model, entry["weights"])
            model.eval()
            verdict = judge_on_validation(pins, rows, TransformersEngine.from_loaded(model, self.tokenizer)
                                          .decide(rows).decision)
            tried.append((entry, verdict))
            self.log(f"validation pack ({rows.height} rows), epoch {entry['epoch']}: " + (
                "every pin holds" if verdict.holds else "; ".join(verdict.failing)))
            if verdict.holds:
                break
        held = [t for t in tried if t[1].holds]
        entry, verdict = held[0] if held else min(tried, key=lambda t: (len(t[1].failing), t[1].worst_upper))
        if entry is not self.best:
            self.log(f"sft: epoch {entry['epoch']} kept over epoch {self.best['epoch']} on the validation pack")
        self.best = entry
        model.train()
        return {"rows": rows.height, "chosen_epoch": entry["epoch"], "holds": verdict.holds,
                "tried": [{"epoch": e["epoch"], **v.as_dict()} for e, v in tried]}

    def callback(self):
        from transformers import TrainerCallback

        selection = self

        class EpochEval(TrainerCallback):
            def on_epoch_end(self, args, state, control, model=None, **kwargs):
                if selection.epoch_end(model, round(state.epoch or 0)):
                    control.should_training_stop = True

        return EpochEval()


def _maybe_grpo(tuned, tokenizer, train_rows: pl.DataFrame, held: pl.DataFrame, best: dict, recipe: AdapterRecipe,
                work: Path, log: Callable[[str], None]):
    """GRPO after SFT when the recipe asks, kept only if it does not cost held-out accuracy: (model, stages, summary)."""
    if "grpo" not in recipe.stages:
        return tuned, ["sft"], None
    from peft import set_peft_model_state_dict

    before = best["accuracy"]
    tuned = _grpo(tuned, tokenizer, train_rows, recipe.grpo, recipe.sft.seed, work, log)
    tuned.eval()
    after = heldout_accuracy(tuned, tokenizer, held)
    kept = (after.get("target", 0.0) >= before.get("target", 0.0)
            and after["others"] >= before["others"] - recipe.grpo.tolerance)
    summary = {"kept": kept, "heldout_before": before, "heldout_after": after, "steps": recipe.grpo.steps}
    log(f"grpo: held-out target {before.get('target', 0):.4f} -> {after.get('target', 0):.4f}, others "
        f"{before['others']:.4f} -> {after['others']:.4f}: {'kept' if kept else 'dropped, SFT weights kept'}")
    if kept:
        best["accuracy"] = after
        return tuned, ["sft", "grpo"], summary
    set_peft_model_state_dict(tuned, best["weights"])
    return tuned, ["sft"], summary


def _publish(tuned, adapter_dir: Path, out_dir: Path, summary: dict, about: dict,
             sign: Callable[[Path], object] | None) -> None:
    """Save, make portable, card, sign, then replace `out_dir` in one rename."""
    for cfg in tuned.peft_config.values():
        # "all-linear" resolves to a set of module names, saved in the order of this process's string
        # hashes: sorted, adapter_config.json (and so the adapter's digest) is the same in every process.
        if isinstance(cfg.target_modules, set):
            cfg.target_modules = sorted(cfg.target_modules)
    tuned.save_pretrained(adapter_dir, safe_serialization=True)
    make_portable(adapter_dir, about["base_digest"])
    write_card(adapter_dir, adapter_card(summary, about))
    if sign is not None:
        sign(adapter_dir)
    replace_dir(adapter_dir, out_dir)  # never a half-deleted old adapter or a half-written new one at out_dir
