"""Bootstrap CIs and Spearman against hand-computed numbers."""
import warnings

import numpy as np
import pytest
from scipy.stats import binom

from gazekit.evaluate.stats import bootstrap_ci, spearman


def test_percentile_ci_of_a_proportion_equals_binomial_quantiles():
    # 6 hits of 20: a bootstrap resample's mean is Binomial(20, 0.3)/20, whose 2.5% and 97.5% quantiles are
    # 2/20 and 10/20 (P(X<=1)=0.0076 < .025 <= P(X<=2)=0.0355; P(X<=9)=0.952 < .975 <= P(X<=10)=0.983).
    x = [1] * 6 + [0] * 14
    assert binom.ppf(0.025, 20, 0.3) == 2 and binom.ppf(0.975, 20, 0.3) == 10  # the hand computation above
    ci = bootstrap_ci(x)
    assert ci.mean == pytest.approx(0.3)
    assert ci.n == 20 and ci.method == "percentile"
    assert ci.low == pytest.approx(0.10, abs=0.026)  # within half a grid step (1/20) of the exact quantile
    assert ci.high == pytest.approx(0.50, abs=0.026)


def test_large_sample_percentile_ci_matches_normal_approximation():
    # 100 hits of 400: p=0.25, se = sqrt(.25*.75/400) = 0.02165 → 95% CI 0.2076 .. 0.2924
    ci = bootstrap_ci([1] * 100 + [0] * 300)
    assert ci.low == pytest.approx(0.2076, abs=0.006)
    assert ci.high == pytest.approx(0.2924, abs=0.006)


def test_bca_on_normal_data_matches_t_interval():
    y = np.random.default_rng(3).normal(2.0, 1.0, 200)
    half = 1.96 * y.std(ddof=1) / np.sqrt(len(y))
    ci = bootstrap_ci(y, method="BCa")
    assert ci.method == "BCa"
    assert ci.low == pytest.approx(y.mean() - half, abs=0.02)
    assert ci.high == pytest.approx(y.mean() + half, abs=0.02)


def test_seeded_and_uses_10000_resamples(monkeypatch):
    import scipy.stats
    seen = {}
    real = scipy.stats.bootstrap

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(scipy.stats, "bootstrap", spy)
    a, b = bootstrap_ci([0, 1, 1, 0, 1]), bootstrap_ci([0, 1, 1, 0, 1])
    assert (a.low, a.high) == (b.low, b.high)
    assert seen["n_resamples"] == 10_000 and seen["confidence_level"] == 0.95


def test_all_equal_values_give_a_point_interval():
    for v in ([1, 1, 1, 1], [0.0] * 7, [3.5]):
        ci = bootstrap_ci(v, method="BCa")
        assert (ci.low, ci.mean, ci.high) == (v[0], v[0], v[0])
        assert "degenerate" in ci.method


def test_bca_failure_falls_back_to_percentile(monkeypatch):
    import scipy.stats
    real = scipy.stats.bootstrap

    def flaky(*a, method="percentile", **kw):
        if method == "BCa":
            warnings.warn("The BCa confidence interval cannot be calculated.", scipy.stats.DegenerateDataWarning)
        return real(*a, method=method, **kw)

    monkeypatch.setattr(scipy.stats, "bootstrap", flaky)
    ci = bootstrap_ci([1] * 6 + [0] * 14, method="BCa")
    assert ci.method == "percentile (BCa failed)"
    assert ci.low == pytest.approx(0.10, abs=0.026) and ci.high == pytest.approx(0.50, abs=0.026)


def test_empty_and_bad_method():
    assert np.isnan(bootstrap_ci([]).mean)
    with pytest.raises(ValueError, match="percentile"):
        bootstrap_ci([0, 1], method="basic-ish")


def test_spearman_hand_computed_with_ties():
    # ranks of y = [1, 2, 3.5, 5, 3.5]; centred x ranks (-2,-1,0,1,2), y ranks (-2,-1,.5,2,.5):
    # cov = 4+1+0+2+1 = 8, var_x = 10, var_y = 9.5 → rho = 8 / sqrt(95) = 0.82078
    rho, p = spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert rho == pytest.approx(8 / np.sqrt(95), abs=1e-12)
    assert 0 < p < 1
    assert spearman([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)


def test_spearman_undefined_cases_are_nan():
    assert np.isnan(spearman([1], [2])[0])
    assert np.isnan(spearman([1, 2, 3], [4, 4, 4])[0])
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])
