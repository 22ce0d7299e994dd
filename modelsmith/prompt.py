"""The prompt format: a feature row as a short, fixed-length sequence of `key=value` words.

A decision costs the model's FLOPs times the prompt's tokens, so the prompt is co-designed with
the tokenizer: every feature below becomes exactly one word, and the tokenizer (WordLevel) sees
each word as one token. Every prompt is therefore `BOS` + len(PROMPT_FEATURES) tokens long, so a
batch needs no padding and the decision is read from the logits at the last position.

    inv=app vert=Video_Gaming sens=0 list=none dev=phone media=video size=1280x720 pos=atf
    slots=2 refresh=none inter=0 rew=1 floor=1.0-1.5 hops=1 gdpr=0 ad=none paid=none tmpl=0

Numbers are bucketed. A bucket `lo-hi` holds lo <= v < hi (`lo+` has no upper edge); edges are
fixed here, not learnt, and chosen on round values an operator would write in a policy (a policy
threshold on an edge is learnable exactly: see `tests/unit/model/test_prompt.py`, which checks
that two rows with one prompt never get two labels under either shipped policy). Text fields
(domain, keywords, title) are left out: the policy decides on the domain list, not the domain.

Each decision is one added token, so scoring the label set is one forward pass.
"""

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from scenario_data.policy import DECISIONS
from scenario_data.taxonomy import UNKNOWN, verticals

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
LABEL_TOKENS = DECISIONS  # each decision is one token: scoring reads 5 logits at the last position


@dataclass(frozen=True)
class Bucketed:
    """A numeric feature cut at fixed edges (v < edges[0] is the first bucket)."""

    column: str
    key: str
    edges: tuple[float, ...]

    def labels(self) -> list[str]:
        e = [_num(x) for x in self.edges]
        return [f"<{e[0]}"] + [f"{a}-{b}" for a, b in zip(e, e[1:])] + [f"{e[-1]}+"]

    def word(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{self.key}=none"
        return f"{self.key}={self.labels()[bisect.bisect_right(self.edges, value)]}"

    def vocabulary(self) -> list[str]:
        return [f"{self.key}=none"] + [f"{self.key}={b}" for b in self.labels()]


@dataclass(frozen=True)
class Categorical:
    column: str
    key: str
    values: tuple[str, ...] = ()  # known values (the vocabulary); others are learnt from the corpus

    def word(self, value: object) -> str:
        if value is None:
            return f"{self.key}=none"
        if isinstance(value, bool):
            return f"{self.key}={int(value)}"
        return f"{self.key}={str(value).replace(' ', '_')}"

    def vocabulary(self) -> list[str]:
        return [self.word(v) for v in (None, *self.values)]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_DECILES = tuple(round(0.1 * i, 1) for i in range(1, 10))
PROMPT_FEATURES: tuple[Bucketed | Categorical, ...] = (
    Categorical("inventory_type", "inv", ("site", "app", "dooh")),
    Categorical("vertical", "vert", (*verticals(), UNKNOWN)),
    Categorical("sensitive", "sens", (False, True)),  # type: ignore[arg-type]
    Categorical("domain_list", "list", ("none",)),
    Categorical("device_type", "dev", ("mobile", "pc", "ctv", "phone", "tablet", "connected", "stb", "dooh")),
    Categorical("media", "media", ("banner", "video", "native", "audio")),
    Categorical("size", "size", ("none",)),
    Categorical("position", "pos", ("atf", "btf", "unknown")),
    Bucketed("slots", "slots", (2, 3, 4, 5, 6, 8, 12)),
    Bucketed("refresh_s", "refresh", (10, 16, 31, 61, 121, 301)),  # integers: 31 means "30 s or faster" below it
    Categorical("interstitial", "inter", (False, True)),  # type: ignore[arg-type]
    Categorical("rewarded", "rew", (False, True)),  # type: ignore[arg-type]
    Bucketed("floor", "floor", (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)),
    Bucketed("schain_hops", "hops", (1, 2, 3, 4, 6)),
    Categorical("gdpr", "gdpr", (0, 1)),  # type: ignore[arg-type]
    Bucketed("ad_density", "ad", _DECILES),
    Bucketed("paid_traffic", "paid", _DECILES),
    Categorical("templated", "tmpl", (False, True)),  # type: ignore[arg-type]
)
PROMPT_COLUMNS = tuple(f.column for f in PROMPT_FEATURES)
PROMPT_LENGTH = 1 + len(PROMPT_FEATURES)  # BOS + one token per feature


def prompt_words(row: dict) -> list[str]:
    """One feature row (a dict of feature columns) as its prompt words."""
    return [f.word(row.get(f.column)) for f in PROMPT_FEATURES]


def prompts(features: pl.DataFrame) -> list[str]:
    """Every row of a feature table as its prompt text (BOS is added by the tokenizer)."""
    missing = [c for c in PROMPT_COLUMNS if c not in features.columns]
    if missing:
        raise ValueError(f"the feature table lacks prompt column(s) {missing}")
    return [" ".join(prompt_words(row)) for row in features.select(PROMPT_COLUMNS).iter_rows(named=True)]


def known_vocabulary() -> list[str]:
    """Every word the prompt format can produce for known values (the rest is learnt from a corpus)."""
    return [w for f in PROMPT_FEATURES for w in f.vocabulary()]


def train_tokenizer(corpus: Iterable[str], out_dir: Path | None = None):
    """A WordLevel tokenizer trained with `tokenizers` over prompts plus the known vocabulary.

    Returns a `PreTrainedTokenizerFast` (what `AutoTokenizer.from_pretrained` gives back), with
    BOS prepended by its post-processor and each decision an added token.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator(_with_known(corpus), trainer=trainer)
    tok.add_tokens(list(LABEL_TOKENS))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=PROMPT_LENGTH + 2, padding_side="left",
    )
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def _with_known(corpus: Iterable[str]) -> Iterable[str]:
    yield " ".join(known_vocabulary())
    yield from corpus


def label_token_ids(tokenizer) -> list[int]:
    """The ids of the decision tokens, in DECISIONS order; refuses a tokenizer that splits a label."""
    ids = []
    for label in LABEL_TOKENS:
        pieces = tokenizer.encode(label, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"the tokenizer splits the label {label!r} into {len(pieces)} tokens; each label must be one")
        ids.append(pieces[0])
    return ids
