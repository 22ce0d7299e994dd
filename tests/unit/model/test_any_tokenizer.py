"""A user's own LLM: real tokenizers split every decision into several tokens, pad on either side, and
wrap prompts in a chat template. Decisions are scored by log-likelihood, pinned, and repaired with LoRA.
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from modelsmith.label_scoring import LabelScorer
from modelsmith.prompt import LABEL_TOKENS, model_prompts
from modelsmith.engines.inference import TransformersEngine
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy
from tests.support.llm_dirs import build_llm_dir


@pytest.fixture(scope="module")
def pack() -> pl.DataFrame:
    return label_requests(generate_requests(1500, seed=21), shipped_policy(1))


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, pack) -> Path:
    return build_llm_dir("qwen2", tmp_path_factory.mktemp("qwen2") / "model", pack, rounds=3)


@pytest.fixture(scope="module")
def llama(tmp_path_factory, pack) -> Path:
    return build_llm_dir("llama", tmp_path_factory.mktemp("llama") / "model", pack)


def _one_label_at_a_time(engine: TransformersEngine, texts: list[str]) -> np.ndarray:
    """The reference: each prompt followed by each label alone, no padding, one forward pass each."""
    import torch

    out = np.zeros((len(texts), len(LABEL_TOKENS)))
    with torch.inference_mode():
        for i, prompt in enumerate(engine.scorer.prompt_ids(texts)):
            ll = []
            for seq in engine.scorer.labels:
                logp = torch.log_softmax(engine.model(input_ids=torch.tensor([list(prompt) + seq])).logits[0].float(), -1)
                ll.append(sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(seq)))
            p = np.exp(np.array(ll) - max(ll))
            out[i] = p / p.sum()
    return out


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_labels_of_several_tokens_are_scored_by_log_likelihood_in_one_batched_pass(kind, request, pack):
    engine = TransformersEngine(request.getfixturevalue(kind), batch_size=8)
    assert all(len(seq) > 1 for seq in engine.scorer.labels), "a real tokenizer splits every decision"
    texts = model_prompts(engine.tokenizer, pack.head(12))
    lengths = {len(p) for p in engine.scorer.prompt_ids(texts)}
    assert len(lengths) > 1, "prompts of unequal length: padding is exercised"
    import torch

    with torch.inference_mode():
        batched = engine.label_probabilities(texts).numpy()
    np.testing.assert_allclose(batched, _one_label_at_a_time(engine, texts), atol=1e-5)


def test_prompts_for_an_llm_are_readable_text_in_its_chat_template(qwen2, llama, pack):
    qwen = TransformersEngine(qwen2).tokenizer
    text = model_prompts(qwen, pack.head(1))[0]
    assert text.startswith("<|im_start|>user\nDecide the bid") and text.endswith("<|im_start|>assistant\n")
    assert "\nvertical: " in text and "no_bid:mfa" in text
    plain = model_prompts(TransformersEngine(llama).tokenizer, pack.head(1))[0]
    assert plain.startswith("Decide the bid") and "<|im_start|>" not in plain


def test_a_prompt_template_file_is_used_for_training_and_inference(llama, pack, tmp_path, monkeypatch):
    template = tmp_path / "prompt.txt"
    template.write_text("Request:\n{features}\nDecision ({labels}):")
    monkeypatch.setenv("MODELSMITH_PROMPT_TEMPLATE", str(template))
    tok = TransformersEngine(llama).tokenizer
    assert model_prompts(tok, pack.head(1))[0].startswith("Request:\ninventory type: ")
    monkeypatch.setenv("MODELSMITH_PROMPT_TEMPLATE", str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="MODELSMITH_PROMPT_TEMPLATE=.*missing.txt"):
        model_prompts(tok, pack.head(1))


def test_the_default_models_one_token_labels_are_the_special_case(default_base_models, pack):
    import torch

    model_dir = next(p for p in default_base_models.iterdir() if p.is_dir())
    engine = TransformersEngine(model_dir)
    assert engine.scorer.keep == 1 and engine.scorer.format.kind == "compact"
    texts = model_prompts(engine.tokenizer, pack.head(32))
    ids = [seq[0] for seq in engine.scorer.labels]
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor(engine.scorer.prompt_ids(texts))).logits[:, -1, ids]
        np.testing.assert_allclose(engine.label_probabilities(texts).numpy(), torch.softmax(logits, -1).numpy(),
                                   atol=1e-6)


def test_a_short_pretraining_makes_the_pins_mean_something(qwen2, pack):
    decided = TransformersEngine(qwen2, batch_size=64).decide(pack.tail(600))
    accuracy = float(np.mean(np.array(decided.decision) == pack.tail(600)["expected"].to_numpy()))
    majority = pack.tail(600)["expected"].value_counts()["count"].max() / 600
    assert accuracy > majority + 0.05, f"accuracy {accuracy:.3f} vs the majority decision's {majority:.3f}"


def test_a_lora_adapter_trains_on_an_llm_with_multi_token_labels(qwen2, pack, tmp_path):
    from modelsmith.adapter_training import AdapterRecipe, SftSettings, train_adapter

    rows = pack.head(400).with_columns(
        pl.when(pl.col("vertical") == "Sports").then(pl.lit("target")).otherwise(pl.lit("replay")).alias("source"))
    recipe = AdapterRecipe(sft=SftSettings(epochs=2, batch_size=16))
    summary = train_adapter(qwen2, rows, tmp_path / "adapter", recipe, log=lambda _: None)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["train_rows"] + summary["heldout_rows"] == rows.height
    engine = TransformersEngine(qwen2)
    engine.attach_adapter(summary["digest"], tmp_path / "adapter")
    engine.use(summary["digest"])
    assert len(engine.decide(pack.tail(8)).decision) == 8


def _pins_run(model_dir: Path, tmp_path: Path):
    from click.testing import CliRunner

    from modelsmith_cli.cli import main
    from scenario_data.generator import write_pack

    pack = tmp_path / "pack.jsonl"
    if not pack.exists():
        write_pack(pack, 20, 3, shipped_policy(1))
    return CliRunner().invoke(main, ["pins", "run", "--model", str(model_dir), "--policy",
                                     "scenario_data/policies/v1.yaml", "--scenarios", str(pack)])


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{not json"), r"config.json is not valid JSON"),
    (lambda d: (d / "config.json").unlink(), r"config.json not found: not a Hugging Face model directory"),
    (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
     r"no tokenizer \(tokenizer.json or tokenizer.model\).*tokenizer.save_pretrained"),
    (lambda d: (d / "model.safetensors").unlink(), r"no weights"),
])
def test_an_unusable_model_directory_is_one_line_and_exit_status_2(llama, tmp_path, damage, message):
    broken = _copy(llama, tmp_path / "broken")
    damage(broken)
    result = _pins_run(broken, tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(broken) in lines[0], result.output
    import re

    assert re.search(message, lines[0]), lines[0]


def test_a_tokenizer_that_cannot_write_a_decision_is_refused_by_name(llama, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    odd = _copy(llama, tmp_path / "odd")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (odd / f).unlink()
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(odd)
    result = _pins_run(odd, tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write the decision label 'no_bid:mfa' (only its unknown token)" in result.output


def test_pins_run_on_an_llm_directory(qwen2, tmp_path):
    result = _pins_run(qwen2, tmp_path)
    assert result.exit_code in (0, 1), result.output  # 1: a pin failed, which this small model may well do
    assert "Traceback" not in result.output and "all" in result.output


def test_an_adapters_digest_does_not_depend_on_where_its_base_lives(qwen2, pack, tmp_path):
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modelsmith.adapter_training import AdapterRecipe, SftSettings, train_adapter
    from modelsmith.model_dir import directory_digest

    elsewhere = _copy(qwen2, tmp_path / "another" / "place" / "base")
    rows = pack.head(200).with_columns(
        pl.when(pl.col("inventory_type") == "app").then(pl.lit("target")).otherwise(pl.lit("replay")).alias("source"))
    recipe = AdapterRecipe(sft=SftSettings(epochs=1, batch_size=16))
    about = {"cycle": "c-test", "dataset_digest": "merkle:abc", "policy_digest": "p" * 64, "hypothesis": "apps"}
    here = train_adapter(qwen2, rows, tmp_path / "a1", recipe, log=lambda _: None, about=about)
    there = train_adapter(elsewhere, rows, tmp_path / "a2", recipe, log=lambda _: None, about=about)
    assert here["digest"] == there["digest"]
    assert here["base_digest"] == directory_digest(qwen2)
    config = json.loads((tmp_path / "a1" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == f"sha256:{here['base_digest']}"
    for f in (tmp_path / "a1").iterdir():
        assert str(qwen2) not in f.read_text(errors="ignore"), f"{f.name} names the base's path"
    card = (tmp_path / "a1" / "README.md").read_text()
    for needed in ("license: apache-2.0", "merkle:abc", "c-test", "held-out accuracy", '"r": 8', "## Pins before and after"):
        assert needed in card, needed
    # plain peft on "another machine": the base from its own directory, the adapter from the bundle's copy
    engine = TransformersEngine(qwen2)
    engine.attach_adapter(here["digest"], tmp_path / "a1")
    engine.use(here["digest"])
    texts = model_prompts(engine.tokenizer, pack.tail(16))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(elsewhere), str(tmp_path / "a2")).eval()
    with torch.inference_mode():
        ours = engine.label_probabilities(texts).numpy()
        engine.model = plain
        engine.adapters = {}
        theirs = engine.label_probabilities(texts).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
