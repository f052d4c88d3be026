"""Statistics for the protocols: bootstrap confidence intervals of a mean, and Spearman correlation.

Both are thin, documented wrappers over SciPy so that every number in a results table is reproducible:
`bootstrap_ci` uses `scipy.stats.bootstrap` with 10,000 resamples (the paper's setting) and a fixed seed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CI", "bootstrap_ci", "spearman"]


@dataclass(frozen=True)
class CI:
    """A mean with its confidence interval; `n` values were averaged."""

    mean: float
    low: float
    high: float
    n: int
    method: str

    def __iter__(self):  # allows `mean, lo, hi = bootstrap_ci(x)[:3]`-style unpacking via tuple(ci)
        return iter((self.mean, self.low, self.high))

    def __str__(self):
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 10_000,
                 method: str = "percentile", seed: int = 0) -> CI:
    """Mean of `values` with a bootstrap confidence interval (scipy.stats.bootstrap).

    method: "percentile" (default: what the paper's 0/1 accuracies need; stable with any sample) or "BCa".
    When every value is equal, the bootstrap distribution is a single point: the interval is [v, v] (BCa would
    divide by zero). BCa can also fail on tiny samples; it then falls back to the percentile interval and says so
    in `.method`. An empty input gives NaNs.
    """
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if method not in ("percentile", "BCa", "bca"):
        raise ValueError(f"method must be 'percentile' or 'BCa', got {method!r}")
    method = "BCa" if method.lower() == "bca" else "percentile"
    if x.size == 0:
        return CI(float("nan"), float("nan"), float("nan"), 0, "empty")
    m = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return CI(m, m, m, int(x.size), "degenerate (all values equal)")
    from scipy.stats import bootstrap
    rng = np.random.default_rng(seed)

    def run(meth):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a DegenerateDataWarning from BCa must trigger the fallback
            # batch: resample 1,000 at a time, so 10,000 x 3,000 pairs never sit in memory at once (240 MB)
            res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method=meth,
                            random_state=rng, vectorized=True, batch=1000)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise FloatingPointError("non-finite interval")
        return lo, hi

    used = method
    try:
        lo, hi = run(method)
    except Exception:  # noqa: BLE001 — BCa's jackknife breaks on near-constant samples; percentile is always defined
        if method == "percentile":
            raise
        rng = np.random.default_rng(seed)
        lo, hi = run("percentile")
        used = "percentile (BCa failed)"
    return CI(m, lo, hi, int(x.size), used)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation (rho, two-sided p) via scipy.stats.spearmanr; NaN when undefined
    (fewer than 2 pairs or a constant input)."""
    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan"), float("nan")
    from scipy.stats import spearmanr
    r = spearmanr(a, b)
    return float(r.statistic), float(r.pvalue)
