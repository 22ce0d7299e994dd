"""Scoring the decision labels after a prompt by their log-likelihood, for any tokenizer.

A real tokenizer splits `no_bid:mfa` into several tokens, so a decision's score is the sum of its
tokens' log-probabilities given the prompt. All labels are scored in one forward pass per batch: each
row is its prompt followed by every label's tokens but the last (the last token is only ever
predicted), and a 4D attention mask lets each label's tokens see the prompt and the earlier tokens of
the same label, never another label's; their positions restart after the prompt, as if each label
followed the prompt alone. The prompt is computed once. The logits kept are the last prompt position
and the continuation tokens, the same positions in every row because rows are left-padded by hand.

A tokenizer with one token per label (the default model's) appends nothing: the pass is the plain
prompt batch read at its last position, the special case of the same code. Training rows use the same
encoding (`training_rows`), with the loss on the label's tokens.
"""

from dataclasses import dataclass

from modelsmith.prompt import LABEL_TOKENS, PromptFormat, format_for


_LABEL_INDEX = {label: j for j, label in enumerate(LABEL_TOKENS)}


def _left_padding(lengths, longest: int) -> dict:
    """A 2D attention mask for left-padded rows of `lengths`, and positions that start at each row's first token."""
    import torch

    mask = (torch.arange(longest, device=lengths.device)[None, :] >= (longest - lengths)[:, None]).long()
    return {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


class LabelError(ValueError):
    """A decision label this tokenizer cannot score (no tokens, or only unknown tokens)."""


def label_sequences(tokenizer) -> list[list[int]]:
    """Each decision's token ids, in DECISIONS order; refuses a label the tokenizer cannot write."""
    seqs = []
    unk = tokenizer.unk_token_id
    for label in LABEL_TOKENS:
        ids = list(tokenizer.encode(label, add_special_tokens=False))
        if not ids or (unk is not None and all(i == unk for i in ids)):
            raise LabelError(
                f"the tokenizer cannot write the decision label {label!r} "
                f"({'no tokens' if not ids else 'only its unknown token'}); a tokenizer that encodes plain text is needed")
        seqs.append(ids)
    if len({tuple(s) for s in seqs}) != len(seqs):
        raise LabelError("the tokenizer encodes two decision labels as the same tokens; they cannot be told apart")
    return seqs


@dataclass
class LabelScorer:
    """Encodes prompts with the label continuations and reads each label's log-likelihood from the logits."""

    tokenizer: object
    format: PromptFormat

    def __post_init__(self) -> None:
        import torch

        self.labels = label_sequences(self.tokenizer)
        self.continuation = [t for seq in self.labels for t in seq[:-1]]
        # (kept position, token, label) for every label token: the first token is predicted at the last prompt
        # position (kept index 0), token k at the continuation position of token k - 1 of the same label.
        kept, token, label, offset = [], [], [], 0
        for j, seq in enumerate(self.labels):
            for k, t in enumerate(seq):
                kept.append(0 if k == 0 else 1 + offset + k - 1)
                token.append(t)
                label.append(j)
            offset += len(seq) - 1
        self._kept = torch.tensor(kept)
        self._token = torch.tensor(token)
        self._label = torch.tensor(label)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0)

    @classmethod
    def for_tokenizer(cls, tokenizer, fmt: PromptFormat | None = None) -> "LabelScorer":
        return cls(tokenizer, fmt or format_for(tokenizer))

    @property
    def keep(self) -> int:
        """How many final positions' logits a pass needs: the last prompt token and the continuation."""
        return 1 + len(self.continuation)

    @property
    def single_token(self) -> bool:
        return not self.continuation

    def prompt_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=self.format.add_special_tokens)["input_ids"]

    def model_inputs(self, texts: list[str], device=None, dtype=None) -> dict:
        """`input_ids` (left-padded prompt + continuation) and, where needed, the attention mask and positions."""
        import torch

        prompts = self.prompt_ids(texts)
        longest = max(len(p) for p in prompts)
        cont = self.continuation
        ids = torch.tensor([[self.pad_id] * (longest - len(p)) + list(p) + cont for p in prompts], device=device)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        padded = bool((lengths < longest).any())
        if self.single_token and not padded:
            return {"input_ids": ids}
        if self.single_token:
            return {"input_ids": ids, **_left_padding(lengths, longest)}
        start = longest - lengths  # first real token of each row
        return {"input_ids": ids, **self._prefix_mask(start, longest, lengths, device, dtype or torch.float32)}

    def _prefix_mask(self, start, longest: int, lengths, device, dtype) -> dict:
        import torch

        total = longest + len(self.continuation)
        allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
        allowed[:longest, :longest] = torch.tril(torch.ones(longest, longest, dtype=torch.bool, device=device))
        allowed[longest:, :longest] = True  # every continuation token sees the whole prompt
        cont_pos = []
        at = longest
        for seq in self.labels:
            n = len(seq) - 1
            if n:
                allowed[at:at + n, at:at + n] = torch.tril(torch.ones(n, n, dtype=torch.bool, device=device))
                cont_pos.extend(range(n))
            at += n
        cols = torch.arange(total, device=device)
        rows_allowed = allowed[None] & (cols[None, None, :] >= start[:, None, None])
        rows_allowed |= torch.eye(total, dtype=torch.bool, device=device)[None]  # a padding row sees itself (no NaN)
        mask = torch.zeros(rows_allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~rows_allowed, torch.finfo(dtype).min)
        prompt_pos = (torch.arange(longest, device=device)[None, :] - start[:, None]).clamp(min=0)
        cont = torch.tensor(cont_pos, device=device, dtype=prompt_pos.dtype)[None, :] + lengths[:, None]
        return {"attention_mask": mask[:, None], "position_ids": torch.cat([prompt_pos, cont], dim=1)}

    def log_likelihoods(self, kept_logits):
        """(rows, labels) log p(label | prompt) from the logits of the last `keep` positions."""
        import torch

        logp = torch.log_softmax(kept_logits.float(), dim=-1)
        kept, token = self._kept.to(logp.device), self._token.to(logp.device)
        per_token = logp[:, kept, token]  # (rows, label tokens)
        out = torch.zeros(logp.shape[0], len(self.labels), device=logp.device, dtype=logp.dtype)
        return out.index_add_(1, self._label.to(logp.device), per_token)

    def training_rows(self, texts: list[str], decisions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """(input_ids, labels) per row: the prompt then the decision's tokens; loss (labels) on the decision only."""
        inputs, labels = [], []
        for p, d in zip(self.prompt_ids(texts), decisions, strict=True):
            seq = self.labels[_LABEL_INDEX[d]]
            inputs.append(list(p) + seq)
            labels.append([-100] * len(p) + seq)
        return inputs, labels

    def pretraining_tensors(self, texts: list[str], decisions: list[str]) -> dict:
        """Whole-table tensors for a plain next-token loop: inputs left-padded, `targets` right-aligned per row.

        Each row is its prompt then its decision's tokens but the last; the logits of the last
        `targets.shape[1]` positions predict the decision's tokens (-100 where a shorter decision leaves
        a position unused). With one token per decision: the prompts alone and one target each.
        """
        import torch

        seqs = [self.labels[_LABEL_INDEX[d]] for d in decisions]
        rows = [list(p) + s[:-1] for p, s in zip(self.prompt_ids(texts), seqs, strict=True)]
        longest, width = max(len(r) for r in rows), max(len(s) for s in seqs)
        ids = torch.tensor([[self.pad_id] * (longest - len(r)) + r for r in rows])
        targets = torch.tensor([[-100] * (width - len(s)) + s for s in seqs])
        out = {"input_ids": ids, "targets": targets}
        lengths = torch.tensor([len(r) for r in rows])
        if bool((lengths < longest).any()):
            out |= _left_padding(lengths, longest)
        return out
