"""The prompt format: compact, fixed length, and sufficient for both shipped policies."""

import polars as pl
import pytest

from modelsmith.prompt import LABEL_TOKENS, PROMPT_FEATURES, PROMPT_LENGTH, label_token_ids, prompts, train_tokenizer
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy


@pytest.fixture(scope="module")
def labelled() -> pl.DataFrame:
    return label_requests(generate_requests(3000, seed=11), shipped_policy(1))


def test_one_prompt_never_gets_two_labels_under_either_policy(labelled):
    """The prompt keeps everything either shipped policy decides on: a model can be exactly right."""
    texts = pl.Series("prompt", prompts(labelled))
    for version in (1, 2):
        policy = shipped_policy(version)
        decided = policy.label(labelled.drop("expected", "rule", "policy_digest", strict=False))
        clash = (pl.DataFrame({"prompt": texts, "expected": decided["expected"]})
                 .group_by("prompt").agg(pl.col("expected").n_unique().alias("labels")).filter(pl.col("labels") > 1))
        assert clash.height == 0, f"policy v{version}: {clash.height} prompts map to two labels"


def test_every_prompt_is_one_token_per_feature_and_labels_are_single_tokens(labelled):
    tok = train_tokenizer(prompts(labelled.head(200)))
    enc = tok(prompts(labelled), add_special_tokens=True)["input_ids"]
    assert {len(ids) for ids in enc} == {PROMPT_LENGTH}
    assert all(ids[0] == tok.bos_token_id for ids in enc)
    assert tok.unk_token_id not in {i for ids in enc for i in ids}, "known vocabulary covers the rows"
    ids = label_token_ids(tok)
    assert len(set(ids)) == len(LABEL_TOKENS)
    assert PROMPT_LENGTH == len(PROMPT_FEATURES) + 1


def test_bucket_edges_keep_policy_thresholds_exact():
    by_key = {f.column: f for f in PROMPT_FEATURES}
    assert by_key["ad_density"].word(0.3) != by_key["ad_density"].word(0.29)
    assert by_key["refresh_s"].word(30) != by_key["refresh_s"].word(31)
    assert by_key["floor"].word(2.0) != by_key["floor"].word(1.99)
    assert by_key["slots"].word(5) != by_key["slots"].word(4)
    assert by_key["floor"].word(None) == "floor=none"


def test_label_token_ids_is_only_for_one_token_labels_and_says_what_scores_the_others():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "no_bid": 1, ":": 2, "mfa": 3, "unsafe": 4, "bid": 5, "shade_high": 6, "shade_mid": 7,
             "shade_low": 8}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(":", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    with pytest.raises(ValueError, match="no_bid:mfa.*LabelScorer"):
        label_token_ids(tok)


def test_prompts_name_a_missing_column(labelled):
    with pytest.raises(ValueError, match="rewarded"):
        prompts(labelled.drop("rewarded"))
