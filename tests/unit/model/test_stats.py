"""The pin statistics against reference implementations (statsmodels)."""

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from modelsmith.stats import discordant, mcnemar_exact, paired_bootstrap, paired_test, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (97, 100), (523, 524), (1, 1)])
def test_wilson_matches_statsmodels(k, n):
    lo, hi = wilson_interval(k, n)
    ref_lo, ref_hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert lo == pytest.approx(ref_lo, abs=1e-12) and hi == pytest.approx(ref_hi, abs=1e-12)


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (5, 1), (99, 0), (12, 10), (3, 30)])
def test_exact_mcnemar_matches_statsmodels(b, c):
    table = [[50, b], [c, 40]]
    assert mcnemar_exact(b, c, "two-sided") == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    # one-sided is half the two-sided tail when the pairs lean towards "worse"
    if b > c:
        assert mcnemar_exact(b, c) == pytest.approx(min(1.0, mcnemar(table, exact=True).pvalue / 2), rel=1e-12)


def test_paired_test_counts_discordant_pairs_and_detects_a_real_drop():
    rng = np.random.default_rng(1)
    ref = np.ones(500, bool)
    cur = ref.copy()
    cur[rng.choice(500, 40, replace=False)] = False
    assert discordant(ref, cur) == (40, 0)
    for test in ("mcnemar", "bootstrap"):
        r = paired_test(ref, cur, test)
        assert r.worse == 40 and r.better == 0 and r.drop == pytest.approx(40 / 500)
        assert r.p_value < 1e-3


def test_noise_is_not_a_regression():
    rng = np.random.default_rng(2)
    ref = rng.random(400) < 0.9
    cur = ref.copy()
    right, wrong = np.flatnonzero(ref), np.flatnonzero(~ref)
    cur[rng.choice(right, 12, replace=False)] = False  # noise: about as many rows worse as better
    cur[rng.choice(wrong, 9, replace=False)] = True
    assert paired_test(ref, cur, "mcnemar").p_value > 0.05
    assert paired_bootstrap(ref, cur, seed=0) > 0.05


def test_paired_vectors_must_align():
    with pytest.raises(ValueError, match="differ in length"):
        discordant(np.ones(3, bool), np.ones(4, bool))
