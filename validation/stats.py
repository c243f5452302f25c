"""Small statistical helpers for the verdicts (fixed seeds; tests state their false-alarm rates)."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["variance_chi2_pvalues", "bonferroni", "slope_with_ci", "covariance_zscores", "bootstrap_se"]


def variance_chi2_pvalues(samples: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    r"""Two-sided p-values of :math:`H_0: \mathrm{Var} = \sigma^2` for zero-mean Gaussian samples.

    samples: (N, ...) independent draws (mean known to be 0); sigma2: (...) hypothesised variances.
    Under H0, :math:`\sum x^2/\sigma^2 \sim \chi^2_N`. Returns p-values of shape (...).
    """
    x = np.asarray(samples, dtype=np.float64)
    N = x.shape[0]
    q = np.sum(x * x, axis=0) / np.asarray(sigma2)
    lo = stats.chi2.cdf(q, N)
    hi = stats.chi2.sf(q, N)
    return np.minimum(1.0, 2.0 * np.minimum(lo, hi))


def bonferroni(pvalues) -> float:
    """Family-wise p-value: min(1, n * min p)."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    return float(min(1.0, p.size * p.min()))


def covariance_zscores(samples: np.ndarray, cov: np.ndarray) -> np.ndarray:
    r"""z-scores of the sample second moments of zero-mean Gaussian samples against ``cov``.

    :math:`s_{ij} = N^{-1}\sum x_i x_j`, :math:`\mathrm{Var}\,s_{ij} = (\Sigma_{ii}\Sigma_{jj} + \Sigma_{ij}^2)/N`
    evaluated under the true covariance ``cov_true`` = the symmetric part of ``cov``. samples: (N, d);
    cov: (d, d) (may be asymmetric: each entry is tested). Returns (d, d).
    """
    x = np.asarray(samples, dtype=np.float64)
    N = x.shape[0]
    S = x.T @ x / N
    C = np.asarray(cov, dtype=np.float64)
    Cs = 0.5 * (C + C.T)
    dg = np.diag(Cs)
    se = np.sqrt((np.outer(dg, dg) + Cs * Cs) / N)
    return (S - C) / se


def slope_with_ci(x, y, level=0.95):
    """Least-squares slope of y on x with its t-based confidence interval; returns (slope, half_width, se)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    res = stats.linregress(x, y)
    n = x.size
    t = stats.t.ppf(0.5 + level / 2, n - 2) if n > 2 else float("inf")
    return float(res.slope), float(t * res.stderr), float(res.stderr)


def bootstrap_se(fn, arrays, n_boot=400, seed=0) -> float:
    """Bootstrap standard error of ``fn(*arrays)`` resampling the first axis jointly (fixed seed)."""
    rng = np.random.default_rng(seed)
    N = arrays[0].shape[0]
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, N, size=N)
        vals.append(fn(*[a[idx] for a in arrays]))
    return float(np.std(vals, ddof=1))


def two_sided_normal_p(z) -> float:
    return float(2.0 * stats.norm.sf(abs(z)))


def rel(a, b) -> float:
    return float(abs(a / b - 1.0)) if b != 0 else math.inf
