"""The inference engines on a real (tiny, untrained) Llama directory: batching, adapters, vLLM guard."""

import numpy as np
import pytest

from modelsmith.base_model import TinyLlamaConfig, build_model
from modelsmith.prompt import LABEL_TOKENS, prompts, train_tokenizer
from modelsmith.engines.inference import TransformersEngine, VllmEngine, vllm_unavailable_reason
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy


@pytest.fixture(scope="module")
def rows():
    return label_requests(generate_requests(40, seed=3), shipped_policy(1))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, rows):
    out = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(prompts(rows))
    build_model(tok, TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1), seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    lora.save_pretrained(out)
    return out


def test_decisions_are_labels_with_probabilities_and_batch_size_does_not_change_them(model_dir, rows):
    big = TransformersEngine(model_dir, batch_size=16).decide(rows)
    one = TransformersEngine(model_dir, batch_size=1).decide(rows)
    assert set(big.decision) <= set(LABEL_TOKENS) and len(big.decision) == rows.height
    np.testing.assert_allclose(big.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(big.probabilities, one.probabilities, atol=1e-5)
    assert (big.latency_ms > 0).all()
    frame = big.to_frame()
    assert frame.columns[:1] == ["predicted"] and frame.height == rows.height


def test_adapters_hot_swap_on_one_loaded_base(model_dir, adapter_dir, rows):
    engine = TransformersEngine(model_dir, batch_size=8)
    base_probs = engine.decide(rows).probabilities
    base_object = engine.base
    engine.attach_adapter("abc123", adapter_dir)
    assert engine.active is None
    np.testing.assert_allclose(engine.decide(rows).probabilities, base_probs, atol=1e-6)  # attached, not active
    engine.use("abc123")
    with_adapter = engine.decide(rows).probabilities
    assert not np.allclose(with_adapter, base_probs, atol=1e-4)
    engine.use(None)
    np.testing.assert_allclose(engine.decide(rows).probabilities, base_probs, atol=1e-6)
    engine.use("abc123")
    np.testing.assert_allclose(engine.decide(rows).probabilities, with_adapter, atol=1e-6)
    assert engine.model.base_model.model is base_object  # the base was never reloaded
    with pytest.raises(KeyError, match="not attached"):
        engine.use("nope")


def test_vllm_is_refused_with_a_reason_without_cuda(model_dir):
    reason = vllm_unavailable_reason()
    if reason is None:
        pytest.skip("CUDA and vLLM are present: the gpu test covers the engine")
    with pytest.raises(RuntimeError) as e:
        VllmEngine(model_dir)
    assert str(e.value) == reason


@pytest.mark.gpu
def test_vllm_engine_agrees_with_transformers(model_dir, adapter_dir, rows):
    reason = vllm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    ref = TransformersEngine(model_dir, device="cuda").decide(rows)
    engine = VllmEngine(model_dir)
    got = engine.decide(rows)
    assert np.mean(np.array(got.decision) == np.array(ref.decision)) > 0.95


def test_a_merged_adapter_decides_as_the_attached_one(model_dir, adapter_dir, rows):
    attached = TransformersEngine(model_dir, batch_size=16)
    attached.attach_adapter("a", adapter_dir)
    attached.use("a")
    merged = TransformersEngine.merged(model_dir, adapter_dir, batch_size=16)
    base = TransformersEngine(model_dir, batch_size=16).decide(rows).probabilities
    np.testing.assert_allclose(merged.decide(rows).probabilities, attached.decide(rows).probabilities, atol=1e-5)
    assert not np.allclose(merged.decide(rows).probabilities, base, atol=1e-4)  # the adapter does change decisions


def test_an_adapter_version_is_pinned_merged_as_it_is_served(tmp_path, model_dir, adapter_dir, rows):
    """A candidate's pins judge the weights a promoted adapter is served with (merged: the base's cost per
    decision), not the slower attached form; attached stays one setting away and decides the same."""
    from modelsmith.model_dir import Registry
    from resources.inference import InferenceSettings

    registry = Registry(tmp_path)
    base = registry.register(model_dir, "base")
    version = registry.register(adapter_dir, "adapter", base=base.digest)
    merged = InferenceSettings(device="cpu").load_version(version, registry)
    attached = InferenceSettings(device="cpu", merge_adapters=False).load_version(version, registry)
    assert not any("lora" in name for name, _ in merged.model.named_modules())
    assert attached.active == version.digest and any("lora" in name for name, _ in attached.model.named_modules())
    np.testing.assert_allclose(merged.decide(rows).probabilities, attached.decide(rows).probabilities, atol=1e-5)


def test_pins_run_with_an_adapter_decides_as_the_merged_version(tmp_path, model_dir, adapter_dir, rows):
    """`modelsmith pins run --adapter` (outside Dagster) pins the adapter as it is served: the run is named by
    the adapter's digest and scores exactly what the base with the adapter merged into it scores."""
    import json

    from click.testing import CliRunner

    from modelsmith.model_dir import directory_digest
    from modelsmith_cli.cli import main
    from scenario_data.generator import write_pack
    from scenario_data.policy import POLICIES_DIR

    merged = TransformersEngine.merged(model_dir, adapter_dir, "cpu", 4, 1)
    assert not np.allclose(merged.decide(rows).probabilities, TransformersEngine(model_dir, device="cpu").decide(rows)
                           .probabilities, atol=1e-3)  # the adapter matters
    merged_dir = tmp_path / "merged"
    merged.model.save_pretrained(merged_dir)
    merged.tokenizer.save_pretrained(merged_dir)
    pack = write_pack(tmp_path / "pack.jsonl", 40, 3, shipped_policy(1))
    pins = tmp_path / "pins.yaml"
    pins.write_text("defaults: {accuracy_floor: 0.0, latency_p99_ms: 100000}\npins:\n  - {name: all}\n")
    args = ["pins", "run", "--policy", str(POLICIES_DIR / "v1.yaml"), "--scenarios", str(pack), "--pins", str(pins),
            "--against", str(model_dir), "--json"]
    runs = [CliRunner().invoke(main, [*args, "--model", str(model_dir), "--adapter", str(adapter_dir)]),
            CliRunner().invoke(main, [*args, "--model", str(merged_dir)])]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    with_adapter, as_merged = (json.loads(r.stdout) for r in runs)
    assert with_adapter["model"] == directory_digest(adapter_dir)
    keys = ("accuracy", "ci_low", "ci_high", "p_value", "drop")
    assert [{k: p[k] for k in keys} for p in with_adapter["pins"]] == [{k: p[k] for k in keys} for p in as_merged["pins"]]
    assert with_adapter["pins"][0]["p_value"] < 1.0  # against the base: some decisions moved (the base alone: 1.0)
