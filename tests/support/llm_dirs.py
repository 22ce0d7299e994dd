"""Small open-weights-style model directories built here (nothing can be downloaded).

`qwen2_dir`: a `Qwen2ForCausalLM` with a byte-level BPE tokenizer (no BOS, a ChatML chat template,
`<|endoftext|>` padding on the right), as Qwen ships. `llama_dir`: a `LlamaForCausalLM` with a
SentencePiece-style BPE tokenizer (`▁` word boundaries, `<s>` prepended, no pad token, no chat
template), as Llama 2 ships. Both tokenizers are trained with `tokenizers` on the text prompts of a
scenario pack, so every decision label is several tokens. Random weights, hidden size 64; `pretrain`
gives them a short run on a pack so that their pins mean something.
"""

from pathlib import Path

import polars as pl

from modelsmith.prompt import TEXT_TEMPLATE, PromptFormat, render
from modelsmith.prompt import prompt_words as _words

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(rows: pl.DataFrame) -> list[str]:
    fmt = PromptFormat("text", TEXT_TEMPLATE.split("\nAnswer")[0])  # never the labels: no real tokenizer saw them
    return render(None, fmt, [_words(r) for r in rows.iter_rows(named=True)])


def qwen2_tokenizer(rows: pl.DataFrame, vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(rows), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="right", model_max_length=4096)
    fast.chat_template = CHATML
    return fast


def llama_tokenizer(rows: pl.DataFrame, vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(_corpus(rows), trainers.BpeTrainer(vocab_size=vocab_size,
                                                               special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="left", model_max_length=4096)


def _model(kind: str, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, pad_token_id=tokenizer.pad_token_id))
    return LlamaForCausalLM(LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id))


def build_llm_dir(kind: str, out_dir: Path, rows: pl.DataFrame, rounds: int = 0, seed: int = 0,
                  learning_rate: float = 3e-3) -> Path:
    """A `kind` ('qwen2' or 'llama') directory at `out_dir`, pre-trained for `rounds` rounds on `rows` (labelled)."""
    from modelsmith.base_model import PretrainConfig, pretrain

    tokenizer = (qwen2_tokenizer if kind == "qwen2" else llama_tokenizer)(rows)
    model = _model(kind, tokenizer, seed)
    if rounds == 0:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        return Path(out_dir)
    cfg = PretrainConfig(seed=seed, epochs_per_round=1, schedule_rounds=rounds, max_rounds=rounds,
                         batch_size=32, learning_rate=learning_rate)
    pretrain(rows, Path(out_dir), cfg, passes=lambda *_: False, log=lambda _: None, model=model, tokenizer=tokenizer)
    return Path(out_dir)
