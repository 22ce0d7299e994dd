"""The embedded default base model: a tiny Llama that Modelsmith builds because nothing can be downloaded.

It is one more Hugging Face directory: a WordLevel tokenizer trained over the prompt format, and a
`LlamaForCausalLM` of ~0.1M parameters pre-trained (prompt -> one decision token, next-token loss on
the decision) on a policy v1 scenario pack. Training, stopping and reporting use three packs that
are disjoint from each other and from the pinned scenarios (the scenarios resource's seed, 0): it
trains on seed 1, stops at the first round whose *validation* pack (seed 2) meets every v1 pin
floor, and reports its accuracy on a *holdout* pack (seed 3) it never saw in any way. The pins then
measure what the model generalises, not what it memorised. Saved with `save_pretrained`
(safetensors) and named by the digest of its files, exactly as a user's Llama or Qwen directory is.
"""

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from modelsmith.atomic import work_dir
from modelsmith.config_checks import check_int, check_range
from modelsmith.model_dir import directory_digest
from modelsmith.prompt import PROMPT_LENGTH, prompts, train_tokenizer


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Architecture of the default model: sized to the policy, not to a benchmark."""

    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 4

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads"):
            check_int(self, name, 1, 1_000_000)
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"TinyLlamaConfig: hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads}), and that of num_key_value_heads "
                             f"({self.num_key_value_heads})")


@dataclass(frozen=True)
class PretrainConfig:
    """How the default model is pre-trained (full fine-tuning from random weights, CPU settings)."""

    seed: int = 0  # weights and batch order
    train_pack_seed: int = 1  # the packs: never the pinned scenarios' seed (0 by default)
    validation_pack_seed: int = 2
    holdout_pack_seed: int = 3
    epochs_per_round: int = 2
    # The learning rate decays linearly over `schedule_rounds` (to a 5 % floor); training stops at the first
    # round that passes, at most `max_rounds`. Kept apart so the cap can rise without changing the schedule:
    # the rounds needed vary with the CPU's kernels (3 on one machine, 8 on another, same seed and code).
    schedule_rounds: int = 8
    max_rounds: int = 16
    batch_size: int = 64
    learning_rate: float = 5e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    architecture: TinyLlamaConfig = field(default_factory=TinyLlamaConfig)

    def __post_init__(self) -> None:
        for name in ("seed", "train_pack_seed", "validation_pack_seed", "holdout_pack_seed"):
            check_int(self, name, 0, 2**32 - 1)
        for name in ("epochs_per_round", "schedule_rounds", "max_rounds"):
            check_int(self, name, 1, 10_000)
        check_int(self, "batch_size", 1, 65_536)
        check_range(self, "learning_rate", 0.0, 1.0, lo_open=True)
        check_range(self, "warmup_ratio", 0.0, 1.0, hi_open=True)
        check_range(self, "weight_decay", 0.0, 1.0)
        if len({self.train_pack_seed, self.validation_pack_seed, self.holdout_pack_seed}) < 3:
            raise ValueError("PretrainConfig: train_pack_seed, validation_pack_seed and holdout_pack_seed must differ "
                             "(the validation and holdout packs measure data the base never trained on)")


def _cpu_threads() -> None:
    # Small matmuls on a shared CPU: a second thread mostly waits on the first (measured here).
    import torch

    torch.set_num_threads(1)


def build_model(tokenizer, arch: TinyLlamaConfig, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=PROMPT_LENGTH + 8,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def encode(tokenizer, labelled: pl.DataFrame) -> dict:
    """Tensors for the pretraining loop (`LabelScorer.pretraining_tensors`): one prompt and decision per row."""
    from modelsmith.label_scoring import LabelScorer
    from modelsmith.prompt import model_prompts

    scorer = LabelScorer.for_tokenizer(tokenizer)
    return scorer.pretraining_tensors(model_prompts(tokenizer, labelled, scorer.format), labelled["expected"].to_list())


def label_loss(model, batch: dict, idx):
    """Next-token cross-entropy on the decision's tokens of rows `idx` (the last positions' logits only)."""
    import torch

    targets = batch["targets"][idx]
    extra = {k: batch[k][idx] for k in ("attention_mask", "position_ids") if k in batch}
    logits = model(input_ids=batch["input_ids"][idx], use_cache=False, logits_to_keep=targets.shape[1], **extra).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def pretrain(
    labelled: pl.DataFrame,
    out_dir: Path,
    cfg: PretrainConfig | None = None,
    passes: Callable[[object, object], bool] | None = None,
    log: Callable[[str], None] = print,
    model=None,
    tokenizer=None,
) -> dict:
    """Train the default model on `labelled` rows, in rounds of epochs, until `passes(model, tokenizer)`.

    `model` and `tokenizer` given (any causal LM and its tokenizer), they are trained instead of the
    default architecture: how tests pre-train small Qwen2 and Llama directories with real tokenizers.

    A plain causal-LM loop (next-token cross-entropy on the decision token after the prompt), not
    trl: pre-training from random weights on a one-token completion needs none of SFTTrainer's
    dataset machinery, and its per-round preprocessing cost more than the training on this CPU.
    Adapters are trained with trl (the trainer resource). Writes a complete `save_pretrained`
    directory to `out_dir` atomically (a temporary sibling, renamed).
    """
    import torch

    cfg = cfg or PretrainConfig()
    _cpu_threads()
    out_dir = Path(out_dir)
    work, lock = work_dir(out_dir)  # held while training: `modelsmith home sweep` leaves it alone
    try:
        if model is None:
            tokenizer = train_tokenizer(prompts(labelled))
            model = build_model(tokenizer, cfg.architecture, cfg.seed)
        batch = encode(tokenizer, labelled)
        targets = batch["targets"]
        gen = torch.Generator().manual_seed(cfg.seed)
        steps_per_epoch = -(-len(targets) // cfg.batch_size)
        total = steps_per_epoch * cfg.epochs_per_round * cfg.schedule_rounds
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warmup = max(1, int(cfg.warmup_ratio * steps_per_epoch * cfg.epochs_per_round))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / total))
        rounds, loss, passed = 0, float("nan"), False
        while rounds < cfg.max_rounds and not passed:
            rounds += 1
            model.train()
            losses = []
            for _ in range(cfg.epochs_per_round):
                order = torch.randperm(len(targets), generator=gen)
                for start in range(0, len(order), cfg.batch_size):
                    idx = order[start:start + cfg.batch_size]
                    step_loss = label_loss(model, batch, idx)
                    step_loss.backward()
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(step_loss.item())
            loss = sum(losses[-steps_per_epoch:]) / max(1, min(len(losses), steps_per_epoch))
            model.eval()
            passed = passes(model, tokenizer) if passes else True
            log(f"pretrain round {rounds}: mean loss (last epoch) {loss:.4f}, passes: {passed}")
        model.config.use_cache = True
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        summary = {"rounds": rounds, "training_loss": loss, "passed": passed, "rows": labelled.height,
                   "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)}
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
        return {**summary, "digest": directory_digest(out_dir)}
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def pins_hold_on(validation: pl.DataFrame, pins) -> Callable[[object, object], bool]:
    """The pretraining stop condition: every pin's accuracy floor holds on `validation`, a pack it does not train on.

    Point estimates, not the gate's evidence rule: a build stops when the model looks good enough on
    unseen rows, which is stricter than "not shown to be bad".
    """
    def passes(model, tokenizer) -> bool:
        return all(r["accuracy"] >= r["accuracy_floor"] for r in unseen_accuracy(model, tokenizer, validation, pins)["pins"])

    return passes


def unseen_accuracy(model, tokenizer, labelled: pl.DataFrame, pins) -> dict:
    """Accuracy of `model` on `labelled` overall and per pin, with the pins under their floor."""
    from modelsmith.evaluate import predictions_frame, score_pins
    from modelsmith.engines.inference import TransformersEngine

    engine = TransformersEngine.from_loaded(model, tokenizer, batch_size=64)
    preds = predictions_frame(labelled, engine.decide(labelled).to_frame())
    results = [r for r in score_pins(pins, preds) if r.rows]
    return {"rows": labelled.height, "accuracy": float(preds["correct"].mean()),
            "min_pin_accuracy": min(r.accuracy for r in results),
            "pins_under_floor": [r.pin for r in results if r.accuracy < r.accuracy_floor],
            "pins": [{"pin": r.pin, "rows": r.rows, "accuracy": r.accuracy, "accuracy_floor": r.accuracy_floor}
                     for r in results]}


def v1_packs(cfg: "PretrainConfig", pack_size: int, validation_size: int = 10_000):
    """(train, validation, holdout) policy v1 packs from the config's three seeds (distinct: `PretrainConfig`)."""
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    v1 = shipped_policy(1)
    return (label_requests(generate_requests(pack_size, cfg.train_pack_seed), v1),
            label_requests(generate_requests(validation_size, cfg.validation_pack_seed), v1),
            label_requests(generate_requests(validation_size, cfg.holdout_pack_seed), v1))


def build_key(cfg: PretrainConfig, pack_size: int, policy_digest: str, pins_digest: str) -> str:
    """What determines the default model's bytes: the training config, the pack, the pins and this code."""
    import hashlib
    import json

    code = b"".join(Path(m.__file__).read_bytes() for m in (_this_module(), _prompt_module()))
    record = json.dumps({"config": asdict(cfg), "pack_size": pack_size, "policy": policy_digest,
                         "pins": pins_digest, "code": hashlib.sha256(code).hexdigest()}, sort_keys=True)
    return hashlib.sha256(record.encode()).hexdigest()


def _this_module():
    import sys

    return sys.modules[__name__]


def _prompt_module():
    import modelsmith.prompt

    return modelsmith.prompt


def build_default(models_dir: Path, cfg: PretrainConfig, pack_size: int = 10_000,
                  log: Callable[[str], None] = print,
                  sign: Callable[[Path], object] | None = None) -> tuple[Path, dict]:
    """Build (or find already built) the embedded default model under `models_dir/<build key>/`.

    The build is deterministic for its key, so a finished build with the same key is reused, not
    retrained: the record beside it (`<key>.json`, written after the directory) marks it complete.
    Refuses to hand back a model that did not meet the v1 floors on its validation pack within
    `cfg.max_rounds`; the record keeps its accuracy on the validation and holdout packs. `sign` (e.g.
    `ModelSigningKey.ensure_signed`) signs the directory after its last write (the card), before the
    record marks it complete, and a reused build that lacks a signature (built before signing) gets one.
    """
    import json

    from modelsmith.atomic import write_text
    from modelsmith.pins import load_pins
    from scenario_data.policy import shipped_policy

    v1 = shipped_policy(1)
    pins = load_pins()
    key = build_key(cfg, pack_size, v1.digest, pins.digest)
    out_dir, record_path = Path(models_dir) / key[:16], Path(models_dir) / f"{key[:16]}.json"
    if record_path.is_file() and out_dir.is_dir():
        record = json.loads(record_path.read_text())
        if directory_digest(out_dir) == record["digest"]:
            if sign is not None:
                sign(out_dir)
            return out_dir, {**record, "reused": True}
        log(f"{out_dir} does not match its build record; rebuilding")
    train, validation, holdout = v1_packs(cfg, pack_size)
    summary = pretrain(train, out_dir, cfg, passes=pins_hold_on(validation, pins), log=log)
    if not summary["passed"]:
        raise RuntimeError(f"the default model did not meet the v1 pin floors on its validation pack in "
                           f"{cfg.max_rounds} rounds (loss {summary['training_loss']:.4f}); raise max_rounds or the model size")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    built = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    unseen = {"validation": unseen_accuracy(built, tokenizer, validation, pins),
              "holdout": unseen_accuracy(built, tokenizer, holdout, pins)}
    for name, u in unseen.items():
        log(f"{name} pack ({u['rows']} rows, never trained on): accuracy {u['accuracy']:.4f}, "
            f"lowest pin {u['min_pin_accuracy']:.4f}, under a floor: {', '.join(u['pins_under_floor']) or 'none'}")
    record = {**summary, "build_key": key, "policy_digest": v1.digest, "pins_digest": pins.digest,
              "pack_size": pack_size, "unseen": unseen}
    from modelsmith.model_card import base_card, write_card

    write_card(out_dir, base_card(record))  # documentation: not part of the directory's digest
    if sign is not None:
        sign(out_dir)
    write_text(record_path, json.dumps(record, indent=2))
    return out_dir, {**record, "reused": False}
