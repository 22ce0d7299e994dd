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

The default model's tokenizer makes each decision one added token. A user's LLM reads the same
features as readable text (`PromptFormat` "text": one `name: value` line per feature inside a
template, wrapped in the tokenizer's chat template when it has one), and its tokenizer splits a
decision into several tokens; `modelsmith.label_scoring` scores both the same way.
"""

import bisect
import math
import os
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


TEXT_TEMPLATE = (
    "Decide the bid for this programmatic ad request under the bidding policy.\n"
    "{features}\n"
    "Answer with exactly one of: {labels}."
)
MASKED_VALUE = "[masked]"  # a text prompt's stand-in for a hidden feature (traces' attributions)
TEMPLATE_ENV = "MODELSMITH_PROMPT_TEMPLATE"  # a file holding a template with {features} and {labels}


@dataclass(frozen=True)
class PromptFormat:
    """How a feature row becomes the text a model reads.

    `compact` (the default model): the `key=value` words joined by spaces, one token each.
    `text` (any other tokenizer): `template` with `{features}` (one `name: value` line per feature)
    and `{labels}`; with `chat` the result is the user turn of the tokenizer's chat template, ending
    with the generation prompt, so the decision is the assistant's answer.
    """

    kind: str = "compact"
    template: str = TEXT_TEMPLATE
    chat: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("compact", "text"):
            raise ValueError(f"prompt format kind must be 'compact' or 'text', not {self.kind!r}")
        if self.kind == "text" and "{features}" not in self.template:
            raise ValueError("a text prompt template must contain {features}")

    @property
    def add_special_tokens(self) -> bool:
        """A chat template writes its own special tokens; the other formats get the tokenizer's (BOS)."""
        return not self.chat

    def mask_word(self, word: str, unk_token: str) -> str:
        """A feature's word with its value hidden: the unknown token in a compact prompt, `[masked]` in text."""
        return unk_token if self.kind == "compact" else f"{word.split('=', 1)[0]}={MASKED_VALUE}"

    def user_text(self, words: list[str]) -> str:
        if self.kind == "compact":
            return " ".join(words)
        lines = []
        for feature, word in zip(PROMPT_FEATURES, words, strict=True):
            value = word.split("=", 1)[1]
            lines.append(f"{feature.column.replace('_', ' ')}: {value.replace('_', ' ')}")
        return self.template.replace("{features}", "\n".join(lines)).replace("{labels}", ", ".join(LABEL_TOKENS))


COMPACT = PromptFormat()


def format_for(tokenizer) -> PromptFormat:
    """The prompt format a tokenizer reads: compact when it knows the compact words and labels as tokens, else text.

    The text template is `MODELSMITH_PROMPT_TEMPLATE` (a file) when set, else `TEXT_TEMPLATE`; training and
    inference of one model must use the same one.
    """
    vocab = tokenizer.get_vocab()
    if all(w in vocab for w in (*LABEL_TOKENS, "inv=app", "vert=Unknown")):
        return COMPACT
    template = TEXT_TEMPLATE
    if os.environ.get(TEMPLATE_ENV):
        path = Path(os.environ[TEMPLATE_ENV]).expanduser()
        try:
            template = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{TEMPLATE_ENV}={path}: cannot read the prompt template ({e.strerror})") from e
    return PromptFormat("text", template, chat=bool(getattr(tokenizer, "chat_template", None)))


def render(tokenizer, fmt: PromptFormat, word_lists: list[list[str]]) -> list[str]:
    """Prompt texts for lists of prompt words; the chat template is rendered once and filled per row."""
    texts = [fmt.user_text(words) for words in word_lists]
    if not fmt.chat:
        return texts
    hole = "\x00FEATURES\x00"
    frame = tokenizer.apply_chat_template([{"role": "user", "content": hole}], tokenize=False,
                                          add_generation_prompt=True)
    before, after = frame.split(hole, 1)
    return [before + t + after for t in texts]


def model_prompts(tokenizer, features: pl.DataFrame, fmt: PromptFormat | None = None) -> list[str]:
    """Every row of a feature table as the prompt text this tokenizer's model reads."""
    fmt = fmt or format_for(tokenizer)
    if fmt.kind == "compact":
        return prompts(features)
    missing = [c for c in PROMPT_COLUMNS if c not in features.columns]
    if missing:
        raise ValueError(f"the feature table lacks prompt column(s) {missing}")
    return render(tokenizer, fmt, [prompt_words(r) for r in features.select(PROMPT_COLUMNS).iter_rows(named=True)])


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
    """The ids of the decision tokens, in DECISIONS order, for a tokenizer with one token per label (the default's)."""
    from modelsmith.label_scoring import label_sequences

    seqs = label_sequences(tokenizer)
    split = [(label, len(s)) for label, s in zip(LABEL_TOKENS, seqs, strict=True) if len(s) != 1]
    if split:
        raise ValueError(f"the tokenizer splits the label(s) {split} into several tokens; "
                         "score them with modelsmith.label_scoring.LabelScorer")
    return [s[0] for s in seqs]
