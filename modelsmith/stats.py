"""The statistics pins rely on: Wilson intervals, paired tests of a drop, floor tests, and Holm's procedure.

Regression is a paired question (the same scenarios, decided twice), so it is tested on the
discordant pairs: rows the reference got right and the other got wrong (`b`), and the reverse
(`c`). scipy does the arithmetic; `tests/unit/model/test_stats.py` checks it against statsmodels.
"""

from dataclasses import dataclass

import math

import numpy as np
from scipy.stats import binom, binomtest, norm

TESTS = ("mcnemar", "bootstrap")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (no continuity correction); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class PairedResult:
    n: int  # rows both sides decided
    reference_accuracy: float
    accuracy: float
    worse: int  # b: the reference right, this one wrong
    better: int  # c: the reference wrong, this one right
    p_value: float  # one-sided: H1 "this one is less accurate than the reference"
    test: str

    @property
    def drop(self) -> float:
        return self.reference_accuracy - self.accuracy


def discordant(reference_correct: np.ndarray, correct: np.ndarray) -> tuple[int, int]:
    reference_correct, correct = np.asarray(reference_correct, bool), np.asarray(correct, bool)
    if reference_correct.shape != correct.shape:
        raise ValueError(f"paired vectors differ in length: {reference_correct.shape} vs {correct.shape}")
    return int((reference_correct & ~correct).sum()), int((~reference_correct & correct).sum())


def mcnemar_exact(worse: int, better: int, alternative: str = "greater") -> float:
    """Exact McNemar: under H0 a discordant pair is equally likely either way, so `worse` ~ Bin(b + c, 1/2).

    `alternative="greater"` asks whether the pairs lean towards `worse` (a regression);
    "two-sided" is the textbook test (statsmodels' `mcnemar(exact=True)`).
    """
    total = worse + better
    if total == 0:
        return 1.0
    return float(binomtest(worse, total, 0.5, alternative=alternative).pvalue)


def paired_bootstrap(reference_correct: np.ndarray, correct: np.ndarray, resamples: int = 10_000, seed: int = 0) -> float:
    """One-sided p-value of a drop: the share of row resamples where the accuracy difference is <= 0.

    The statistic is the paired difference `reference - this` per row, resampled with replacement;
    p is the bootstrap probability that the mean difference does not exceed zero (no drop).
    """
    diff = np.asarray(reference_correct, np.int8) - np.asarray(correct, np.int8)
    n = diff.size
    if n == 0 or not diff.any():
        return 1.0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)  # resample weights, one row per resample
    means = counts @ diff / n
    return float((means <= 0).mean())


def paired_test(reference_correct: np.ndarray, correct: np.ndarray, test: str = "mcnemar", **kwargs) -> PairedResult:
    """Is `correct` (this version) less accurate than `reference_correct` on the same rows?"""
    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r}; expected one of {TESTS}")
    ref, cur = np.asarray(reference_correct, bool), np.asarray(correct, bool)
    worse, better = discordant(ref, cur)
    p = mcnemar_exact(worse, better) if test == "mcnemar" else paired_bootstrap(ref, cur, **kwargs)
    n = ref.size
    return PairedResult(n, float(ref.mean()) if n else 0.0, float(cur.mean()) if n else 0.0, worse, better, p, test)


def floor_test(correct: int, n: int, floor: float) -> float:
    """One-sided exact binomial p-value of "the accuracy is below `floor`" (H0: accuracy >= floor).

    A segment is judged below its floor on evidence, not on its point estimate: 121 of 128 (0.945)
    against a 0.95 floor is p = 0.39, while 243 of 300 (0.81) is p < 1e-20.
    """
    if n == 0:
        return 1.0
    return float(min(1.0, binom.cdf(correct, n, floor)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error rate), in the input's order.

    Written out rather than taken from statsmodels (a test-only dependency here): five lines, and
    `tests/unit/model/test_stats.py` checks them against `statsmodels.stats.multitest.multipletests`.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def drop_upper_bound(worse: int, better: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a paired drop in accuracy, (worse - better) / n.

    Agresti & Min (2005): the Wald interval of matched proportions with 0.5 added to each of the
    four cells, which keeps its coverage near nominal at the small discordant counts pins see.
    """
    if n == 0:
        return 1.0
    b, c, m = worse + 0.5, better + 0.5, n + 2.0
    d = (b - c) / m
    var = ((b + c) - (b - c) ** 2 / m) / m ** 2
    return float(d + norm.ppf(confidence) * math.sqrt(max(var, 0.0)))


def smallest_significant_worse(alpha: float) -> int:
    """The fewest discordant rows, all one way, that the exact one-sided McNemar test finds significant at `alpha`."""
    return math.floor(math.log2(1.0 / alpha)) + 1


def min_detectable_drop(n: int, alpha: float) -> float:
    """The smallest drop a segment of `n` rows can show as significant at `alpha`, in the best case.

    A drop of d flips at least d*n rows; the best case is that every discordant pair points the same
    way. A segment whose `max_drop` is below this cannot detect it at all: its pin is inconclusive.
    """
    return 1.0 if n == 0 else min(1.0, smallest_significant_worse(alpha) / n)


def over_budget_test(over: int, n: int, quantile: float = 0.99) -> float:
    """One-sided exact binomial p-value of "the `quantile` latency is above the budget", from `over` of `n` decisions over it.

    p99 <= budget means at most 1 % of decisions take longer; one slow micro-batch among 100
    decisions is not evidence of that, a model whose every decision is slow is.
    """
    if over == 0 or n == 0:
        return 1.0
    return float(binom.sf(over - 1, n, 1.0 - quantile))
