"""Failure traces: the rows a model version failed in its regressed pins, with why it decided as it did.

A trace row is the feature row, the expected and predicted decisions, the label probabilities,
and one attribution per prompt feature: leave-one-feature-out, the drop in the probability of the
predicted label when that feature is hidden (its word replaced by the tokenizer's unknown token in a
compact prompt, its value by `[masked]` in a text prompt). A feature
the decision hinges on has a large attribution. Passing rows of the same segment come along for
contrast (`failed` = False), so a critic can compare the two.
"""

import numpy as np
import polars as pl

from modelsmith.pins import PinSet
from modelsmith.prompt import LABEL_TOKENS, PROMPT_COLUMNS, PROMPT_FEATURES, prompt_words, render

ATTR_PREFIX = "attr_"


def attributions(engine, rows: pl.DataFrame) -> np.ndarray:
    """(rows, features): p(predicted | prompt) - p(predicted | prompt with feature i unknown)."""
    if rows.height == 0:
        return np.zeros((0, len(PROMPT_FEATURES)))
    import torch

    fmt = engine.scorer.format
    unk = engine.tokenizer.unk_token or "<unk>"
    words = [prompt_words(r) for r in rows.select(PROMPT_COLUMNS).iter_rows(named=True)]
    variants = list(words)
    for w in words:
        for i in range(len(w)):
            variants.append(w[:i] + [fmt.mask_word(w[i], unk)] + w[i + 1:])
    texts = render(engine.tokenizer, fmt, variants)
    probs, batch = [], 256  # throughput, not the serving micro-batch: no latency is measured here
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            probs.append(np.asarray(_numpy(engine.label_probabilities(texts[start:start + batch]))))
    p = np.concatenate(probs)
    n, k = len(words), len(PROMPT_FEATURES)
    full, masked = p[:n], p[n:].reshape(n, k, len(LABEL_TOKENS))
    chosen = full.argmax(axis=1)
    return full[np.arange(n), chosen][:, None] - masked[np.arange(n), :, chosen]


def _numpy(probabilities):
    """Engines return a torch tensor (transformers) or an array (vLLM)."""
    return probabilities.cpu().numpy() if hasattr(probabilities, "cpu") else probabilities


def failure_traces(engine, predictions: pl.DataFrame, pins: PinSet, regressed: list[str],
                   contrast_rows: int = 1_000, seed: int = 0, attributed_rows: int = 2_000) -> pl.DataFrame:
    """Failing rows of each regressed pin plus up to `contrast_rows` passing rows of it, with attributions.

    Attributions are computed for at most `attributed_rows` distinct rows (a seeded sample; the rest
    have none): a change across every segment fails thousands of rows, and a real LLM's text prompt
    costs far more per pass than the default model's.

    `predictions` is a stored pin run's predictions (feature columns, predicted, p_*, correct).
    """
    by_name = {p.name: p for p in pins.pins}
    missing = [name for name in regressed if name not in by_name]
    if missing:
        raise KeyError(f"regressed pin(s) {missing} are not in the pin file {pins.source}")
    parts = []
    # a change across 50 pins shares the contrast budget, each pin keeping at least 100 (or all it was given)
    per_pin = max(contrast_rows // max(1, len(regressed)), min(contrast_rows, 100))
    for name in regressed:
        seg = predictions.filter(by_name[name].mask(predictions))
        failing = seg.filter(~pl.col("correct"))
        passing = seg.filter(pl.col("correct"))
        if passing.height > per_pin:
            passing = passing.sample(per_pin, seed=seed)
        both = pl.concat([failing, passing]).with_columns(pl.lit(name).alias("pin"), (~pl.col("correct")).alias("failed"))
        parts.append(both)
    traces = pl.concat(parts) if parts else predictions.clear().with_columns(pl.lit("").alias("pin"), pl.lit(False).alias("failed"))
    unique = traces.unique("row_id", keep="first", maintain_order=True)  # a row of `all` and of its segment pin
    if unique.height > attributed_rows:  # a seeded sample: each row costs len(PROMPT_FEATURES) + 1 passes
        unique = unique.sample(attributed_rows, seed=seed).sort("row_id")
    attr = attributions(engine, unique)
    scores = unique.select("row_id").with_columns(
        *(pl.Series(f"{ATTR_PREFIX}{col}", attr[:, i], dtype=pl.Float64) for i, col in enumerate(PROMPT_COLUMNS)))
    return traces.join(scores, on="row_id", how="left", maintain_order="left").drop("latency_ms", "latency_wall_ms", strict=False)
