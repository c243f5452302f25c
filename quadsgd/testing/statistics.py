r"""The statistical tests of :mod:`quadsgd.testing` and of the ``validation`` verdicts, written once.

Numbers in, numbers (or typed results) out; the failure text is :mod:`quadsgd.testing.messages`'s job.
``scipy.stats`` is imported on first use (``import quadsgd`` stays light).

* p-values and combinations: :func:`two_sided_chi2_p` (:math:`\min(1, 2\min(F_{\chi^2_k}(q), 1-F_{\chi^2_k}(q)))`),
  :func:`two_sided_normal_p` (:math:`2(1-\Phi(|z|))`), :func:`sidak` (:math:`1-(1-p_{\min})^n`, independent
  p-values), :func:`fisher` (:math:`-2\sum_k\log p_k\sim\chi^2_{2n}`), :func:`bonferroni`
  (:math:`\min(1, n\,p_{\min})`, any dependence);
* zero-mean Gaussian samples (N i.i.d. rows, mean known to be 0): :func:`wishart_test` (exact test of
  :math:`\mathrm{Cov} = \Sigma_0` by Bartlett's decomposition, :class:`WishartTest`), :func:`variance_chi2_pvalues`
  / :func:`variance_test` (per coordinate :math:`\sum_c x_{c,i}^2/\sigma_i^2\sim\chi^2_N`, :class:`VarianceTest`),
  :func:`covariance_zscores` / :func:`second_moment_zscores` (:math:`\mathrm{Var}\,s_{ij} = (\Sigma_{ii}\Sigma_{jj}
  + \Sigma_{ij}^2)/N`);
* means: :func:`mean_z_test` (two-sided, sample standard deviation, :class:`ZTest`), :func:`hotelling`
  (one-sample :math:`T^2` of a zero mean vector, :class:`HotellingTest`);
* estimates: :func:`slope_with_ci` (least-squares slope, t interval), :func:`bootstrap_se` (rows resampled
  jointly, fixed seed).

Exactness and power of each test: ``docs/testing-formulas.md``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "two_sided_chi2_p", "two_sided_normal_p", "sidak", "fisher", "bonferroni",
    "WishartTest", "wishart_test", "VarianceTest", "variance_test", "variance_chi2_pvalues",
    "covariance_zscores", "second_moment_zscores", "ZTest", "mean_z_test", "HotellingTest", "hotelling",
    "slope_with_ci", "bootstrap_se",
]


def _stats():
    from scipy import stats

    return stats


# ============================================================================ p-values, combinations
def two_sided_chi2_p(q, dof):
    r"""Two-sided p-value of a :math:`\chi^2_{\mathrm{dof}}` statistic: :math:`\min(1, 2\min(F(q), 1-F(q)))`.

    q, dof: arrays (broadcast); returns an array of their broadcast shape.
    """
    stats = _stats()
    return np.minimum(1.0, 2.0 * np.minimum(stats.chi2.cdf(q, dof), stats.chi2.sf(q, dof)))


def two_sided_normal_p(z):
    r"""Two-sided p-value of a standard normal statistic: :math:`2(1-\Phi(|z|))` (elementwise; shape of z)."""
    return np.minimum(1.0, 2.0 * _stats().norm.sf(np.abs(z)))


def sidak(pmin: float, n: int) -> float:
    r"""Sidak-combined p-value of the smallest of ``n`` independent p-values: :math:`1-(1-p_{\min})^n`.

    Computed as ``-expm1(n log1p(-pmin))`` (no cancellation for small ``pmin``); exactly uniform when
    the n p-values are independent and uniform.
    """
    if pmin >= 1.0:
        return 1.0
    return float(-math.expm1(n * math.log1p(-pmin)))


def fisher(pvalues) -> tuple[float, float]:
    r"""Fisher's combination of independent p-values: ``(X, p)``, :math:`X = -2\sum\log p_k`,
    :math:`p = P(\chi^2_{2n} > X)`.

    p-values are floored at 1e-300 (so that a p-value of 0 gives a finite X).
    """
    p = np.maximum(np.asarray(pvalues, dtype=np.float64), 1e-300)
    x = float(-2.0 * np.sum(np.log(p)))
    return x, float(_stats().chi2.sf(x, 2 * p.size))


def bonferroni(pvalues) -> float:
    """Family-wise p-value of a set of p-values under any dependence: ``min(1, n * min p)``."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    return float(min(1.0, p.size * p.min()))


# ============================================================================ zero-mean Gaussian samples
class WishartTest(NamedTuple):
    r"""Result of :func:`wishart_test`.

    pvalue: the combined p-value (exactly uniform under :math:`H_0`). statistic: Sidak: the smallest
    component p-value; Fisher: :math:`-2\sum\log p_k`. component_pvalues: (d(d+1)/2,), the d diagonal
    components first, then the off-diagonal ones in ``np.tril_indices(d, -1)`` order. diag_chi2: (d,)
    :math:`T_{kk}^2`; dof: (d,) their degrees of freedom :math:`N-k`; T: (d, d) the lower Cholesky
    factor of the whitened scatter matrix. combine: "sidak" or "fisher".
    """

    pvalue: float
    statistic: float
    component_pvalues: np.ndarray
    diag_chi2: np.ndarray
    dof: np.ndarray
    T: np.ndarray
    combine: str

    @property
    def smallest(self) -> int:
        """Index of the smallest component p-value (< d: diagonal component k; else off-diagonal)."""
        return int(np.argmin(self.component_pvalues))


def wishart_test(samples, cov, combine: str = "sidak") -> WishartTest:
    r"""Exact test of :math:`\mathrm{Cov} = \Sigma_0` (``cov``) for i.i.d. zero-mean Gaussian rows of ``samples`` (N,
    d).

    Whiten by the hypothesis, :math:`y = L_0^{-1}x` (:math:`\Sigma_0 = L_0L_0^\top`), form
    :math:`W = \sum_c y_cy_c^\top\sim\mathcal W_d(N, I)` under :math:`H_0` and its Cholesky factor
    :math:`W = TT^\top`. By Bartlett's decomposition the :math:`d(d+1)/2` components
    :math:`T_{kk}^2\sim\chi^2_{N-k}` (k = 0..d-1) and :math:`T_{ij}\sim\mathcal N(0,1)` (i > j) are
    independent; each gets its two-sided p-value, combined by :func:`sidak` (the minimum; sensitive to
    a single wrong entry) or :func:`fisher` (sensitive to many small errors). Both combined p-values
    are exactly uniform under :math:`H_0`. :math:`T_{kk}^2` is the residual sum of squares of
    coordinate k regressed on coordinates < k, in the metric of the hypothesis.

    cov must be symmetric positive definite (the caller checks; ``np.linalg.cholesky`` raises otherwise).
    """
    import scipy.linalg as sla

    X = np.asarray(samples, dtype=np.float64)
    N, d = X.shape
    L0 = np.linalg.cholesky(cov)
    Y = sla.solve_triangular(L0, X.T, lower=True)
    T = np.linalg.cholesky(Y @ Y.T)
    dof = N - np.arange(d)
    q = np.diag(T) ** 2
    p_diag = two_sided_chi2_p(q, dof)
    il, jl = np.tril_indices(d, -1)
    p_off = two_sided_normal_p(T[il, jl])
    p_all = np.concatenate([p_diag, p_off])
    if combine == "sidak":
        pmin = float(p_all[int(np.argmin(p_all))])
        return WishartTest(sidak(pmin, p_all.size), pmin, p_all, q, dof, T, combine)
    if combine == "fisher":
        x, p = fisher(p_all)
        return WishartTest(p, x, p_all, q, dof, T, combine)
    raise ValueError(f"combine must be 'sidak' or 'fisher', got {combine!r}")


def _chi2_statistic(samples, sigma2) -> tuple[np.ndarray, int]:
    x = np.asarray(samples, dtype=np.float64)
    return np.sum(x * x, axis=0) / np.asarray(sigma2), x.shape[0]


def variance_chi2_pvalues(samples, sigma2) -> np.ndarray:
    r"""Two-sided p-values of :math:`H_0: \mathrm{Var} = \sigma^2` for zero-mean Gaussian samples.

    samples: (N, ...) independent draws (mean known to be 0); sigma2: (...) hypothesised variances.
    Under H0, :math:`q = \sum x^2/\sigma^2 \sim \chi^2_N`; returns :func:`two_sided_chi2_p` of q, shape (...).
    """
    q, N = _chi2_statistic(samples, sigma2)
    return two_sided_chi2_p(q, N)


class VarianceTest(NamedTuple):
    """Result of :func:`variance_test`: combined pvalue, statistic (Sidak: smallest component p; Fisher:
    -2 sum log p), component_pvalues (d,), chi2 (d,) the statistics :math:`q_i` ~ chi2(dof), dof = N, combine."""

    pvalue: float
    statistic: float
    component_pvalues: np.ndarray
    chi2: np.ndarray
    dof: int
    combine: str


def variance_test(samples, variances, combine: str = "sidak") -> VarianceTest:
    r"""Test of the variances of zero-mean Gaussian rows of ``samples`` (N, d) against ``variances`` (d,).

    Per coordinate :math:`q_i = \sum_c x_{c,i}^2/\sigma_i^2\sim\chi^2_N`, two-sided; combined over the
    d coordinates by :func:`sidak` or :func:`fisher`. Exact when the coordinates are independent,
    conservative (rate <= alpha) otherwise.
    """
    q, N = _chi2_statistic(samples, variances)
    p_all = two_sided_chi2_p(q, N)
    if combine == "sidak":
        pmin = float(p_all[int(np.argmin(p_all))])
        return VarianceTest(sidak(pmin, p_all.size), pmin, p_all, q, N, combine)
    if combine == "fisher":
        x, p = fisher(p_all)
        return VarianceTest(p, x, p_all, q, N, combine)
    raise ValueError(f"combine must be 'sidak' or 'fisher', got {combine!r}")


def second_moment_zscores(S, cov, n: int) -> np.ndarray:
    r"""z-scores of second moments ``S`` (d, d) of n zero-mean Gaussian samples against ``cov`` (d, d).

    :math:`z_{ij} = (S_{ij} - \Sigma_{ij})/\sqrt{(\bar\Sigma_{ii}\bar\Sigma_{jj} + \bar\Sigma_{ij}^2)/n}`
    with :math:`\bar\Sigma` the symmetric part of ``cov`` (an asymmetric ``cov`` has each entry tested).
    """
    C = np.asarray(cov, dtype=np.float64)
    Cs = 0.5 * (C + C.T)
    dg = np.diag(Cs)
    se = np.sqrt((np.outer(dg, dg) + Cs * Cs) / n)
    return (S - C) / se


def covariance_zscores(samples, cov) -> np.ndarray:
    r"""z-scores of the sample second moments :math:`s_{ij} = N^{-1}\sum_c x_{c,i}x_{c,j}` of zero-mean
    Gaussian ``samples`` (N, d) against ``cov`` (d, d); see :func:`second_moment_zscores`. Returns (d, d).
    """
    x = np.asarray(samples, dtype=np.float64)
    N = x.shape[0]
    return second_moment_zscores(x.T @ x / N, cov, N)


# ============================================================================ means
class ZTest(NamedTuple):
    """Result of :func:`mean_z_test`: pvalue, z, the sample mean, its standard error se, n, and
    deterministic (True when se is 0 to rounding: then pvalue is 1 or 0 by a relative tolerance, z 0 or inf)."""

    pvalue: float
    z: float
    mean: float
    se: float
    n: int
    deterministic: bool


def mean_z_test(values, predicted: float, rtol: float = 1e-8) -> ZTest:
    r"""Two-sided z-test of :math:`E[v] = ` ``predicted`` from i.i.d. ``values`` (n,).

    :math:`z = (\bar v - \mathrm{predicted})/(s/\sqrt n)` with the sample standard deviation s (CLT:
    the :math:`O(n^{-1/2})` skewness terms cancel in a two-sided test, the rate error is
    :math:`O(1/n)`). Values without spread (se <= 1e-14 x scale) are compared with relative tolerance
    ``rtol`` instead: p = 1 if they agree, else 0.
    """
    vals = np.asarray(values, dtype=np.float64)
    N = vals.size
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1))
    se = sd / math.sqrt(N)
    pred = float(predicted)
    if se <= 1e-14 * max(abs(mean), abs(pred), 1e-300):
        ok = abs(mean - pred) <= rtol * max(abs(pred), abs(mean)) + 1e-300
        return ZTest(1.0 if ok else 0.0, 0.0 if ok else math.inf, mean, se, N, True)
    z = (mean - pred) / se
    return ZTest(float(two_sided_normal_p(z)), float(z), mean, se, N, False)


class HotellingTest(NamedTuple):
    """Result of :func:`hotelling`: pvalue, T2 (Hotelling's statistic), rank (of the sample covariance used)."""

    pvalue: float
    T2: float
    rank: int


def hotelling(E) -> HotellingTest:
    r"""Hotelling's one-sample test of :math:`E[e] = 0` for the i.i.d. rows of ``E`` (N, R).

    :math:`T^2 = N\bar e^\top S^{-1}\bar e` with S the sample covariance (restricted to its
    numerically non-zero eigenvalues, rank r), :math:`\frac{N-r}{r(N-1)}T^2\sim F(r, N-r)` (exact for
    Gaussian rows, asymptotic in N otherwise).
    """
    E = np.asarray(E)
    N = E.shape[0]
    mean = E.mean(axis=0)
    C = np.cov(E, rowvar=False, ddof=1).reshape(E.shape[1], E.shape[1])
    w, V = np.linalg.eigh(C)
    keep = w > 1e-12 * w.max()
    rank = int(keep.sum())
    proj = V[:, keep].T @ mean
    T2 = float(N * np.sum(proj * proj / w[keep]))
    F = T2 * (N - rank) / (rank * (N - 1))
    return HotellingTest(float(_stats().f.sf(F, rank, N - rank)), T2, rank)


# ============================================================================ estimates
def slope_with_ci(x, y, level: float = 0.95) -> tuple[float, float, float]:
    r"""Least-squares slope of y on x with its t-based confidence interval: ``(slope, half_width, se)``.

    half_width = :math:`t_{n-2,(1+\mathrm{level})/2}\,\mathrm{se}` (inf for n <= 2); x, y: (n,).
    """
    stats = _stats()
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    res = stats.linregress(x, y)
    n = x.size
    if n <= 2:  # no residual degrees of freedom: the interval is unbounded
        return float(res.slope), math.inf, float(res.stderr)
    t = stats.t.ppf(0.5 + level / 2, n - 2)
    return float(res.slope), float(t * res.stderr), float(res.stderr)


def bootstrap_se(fn: Callable[..., float], arrays: Sequence[np.ndarray], n_boot: int = 400, seed: int = 0) -> float:
    """Bootstrap standard error of ``fn(*arrays)``: the first axis of every array resampled jointly.

    Draw i (of ``n_boot``) uses ``idx = rng.integers(0, N, size=N)`` from ``np.random.default_rng(seed)``;
    returns the sample standard deviation (ddof 1) of the n_boot values.
    """
    rng = np.random.default_rng(seed)
    N = arrays[0].shape[0]
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, N, size=N)
        vals.append(fn(*[a[idx] for a in arrays]))
    return float(np.std(vals, ddof=1))
