"""Statistical agreement of quadsgd.simulate with the exact theory and with independent ground truth.

The stationary and transient tests use quadsgd.testing (the same strategies and assertions the
package offers its users): the final averaged iterates of independent chains after a burn-in of 40
mixing times from u0 = 0 (mean exactly 0, effective sample size = chains) against the independent
Lyapunov covariance by the exact Wishart (Bartlett decomposition) test; the mean loss over chains at
every record against the independent coefficient curve by max |z| with Bonferroni. Several kernels
share one simulation and are Bonferroni-combined: the family-wise false-alarm rate of an example is
<= ALPHA = 1e-4. Hypothesis is derandomized (a fixed set of examples and simulation seeds), so a CI
run is deterministic; the chance that a correct simulator fails a given test function is
<= max_examples * 1e-4. The exact-vs-step test is a two-sample test (own statistics below).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import quadsgd as qs
from quadsgd import testing as qst
from quadsgd.simulation import record_times, simulate

from .simtruth import coefficient_expected_loss, lyapunov_kernel_cov

ALPHA = 1e-4
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- strategies
def models(dmax=3):
    """quadsgd.testing.models over this file's ranges: diagonal / dense / non-normal, d <= dmax,
    momentum 0 (twice as often), 0.5, 0.9, lr 0.2..0.8 of the bound, eigenvalues 0.3..2, mixing <= 150 steps."""
    return qst.models(dim=(1, dmax), kind="any", momentum=(0.0, 0.0, 0.5, 0.9), lr_fraction=(0.2, 0.8),
                      curvature=(0.3, 2.0), max_mixing=150)


@st.composite
def kernel_sets(draw):
    """One kernel of every family (quadsgd.testing.kernels per family) and a Kernel with a zero weight."""
    ks = [qs.Last(), draw(qst.kernels(kind="ema", ema_decay=(0.05, 0.6))),
          draw(qst.kernels(kind="two_point", max_support=26)), draw(qst.kernels(kind="n_point", max_support=25)),
          draw(qst.kernels(kind="swa", max_support=30))]
    w = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6)))
    w[draw(st.integers(0, w.size - 2))] = 0.0  # an interior (or leading) zero weight
    if w[-1] == 0.0:
        w[-1] = 0.5
    ks.append(qs.Kernel(w / w.sum()))
    return tuple(ks)


def _bonferroni_ok(pvals):
    p = np.concatenate([np.ravel(x) for x in pvals])
    return p.min() * p.size > ALPHA, p.min() * p.size


# ============================================================================ stationary
@SETTINGS
@given(m=models(), kernels=kernel_sets(), method=st.sampled_from(["step", "exact"]),
       seed=st.integers(0, 2**32 - 1))
def test_stationary_covariance_every_kernel(m, kernels, method, seed):
    """Final averaged iterates of 20000 independent chains ~ N(0, Lyapunov truth), every kernel at once."""
    truths = []
    for k in kernels:
        theory = np.atleast_2d(qs.stationary_covariance(m, k))
        if m.diagonal:
            theory = np.diag(np.ravel(theory))
        truth = lyapunov_kernel_cov(m, k)
        np.testing.assert_allclose(theory, truth, rtol=1e-7, atol=1e-10 * np.abs(truth).max())
        truths.append(truth)
    qst.assert_stationary_matches(truths, m, kernels, chains=20000, alpha=ALPHA, method=method, seed=seed)


@pytest.mark.parametrize("kind", ["diagonal", "dense", "non_normal"])
@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("method", ["step", "exact"])
def test_stationary_covariance_fixed_cases(kind, beta, method):
    """Each model kind with and without momentum, each method (seeded; alpha 1e-4 per case)."""
    rs = np.random.default_rng(7)
    d = 3
    if kind == "diagonal":
        m = qs.LinearModel(np.array([1.5, 0.6, 0.3]), 0.5 * qs.stability_bound([1.5], beta), momentum=beta)
    elif kind == "dense":
        Q, _ = np.linalg.qr(rs.standard_normal((d, d)))
        om = (Q * np.array([1.5, 0.6, 0.3])) @ Q.T
        om = 0.5 * (om + om.T)
        m = qs.LinearModel(om, 0.5 * qs.stability_bound([1.5], beta), momentum=beta)
    else:
        A = rs.standard_normal((d, d))
        B = rs.standard_normal((d, d))
        m0 = qs.LinearModel.from_quadratic(A @ A.T + 0.5 * np.eye(d), B @ B.T + 0.3 * np.eye(d), lr=1e-4,
                                           momentum=beta)
        m = m0.with_lr(0.5 * m0.lr_bound)
        assert not m.normal
    kernels = (qs.Last(), qs.EMA(0.2), qs.TwoPoint(6), qs.NPoint(3, 4), qs.SWA(7), qs.Kernel([0.6, 0.0, 0.4]))
    assert qst.mixing_time(m) < 150
    qst.assert_stationary_matches([lyapunov_kernel_cov(m, k) for k in kernels], m, kernels, chains=20000,
                                  alpha=ALPHA, method=method, seed=17)


# ============================================================================ transients
@st.composite
def schedules(draw, m, T):
    kind = draw(st.sampled_from(["constant", "constant", "piecewise", "decay"]))
    if kind == "constant":
        return None
    if kind == "piecewise":
        lr = np.full(T, m.lr)
        lr[draw(st.integers(1, T - 1)):] = m.lr * draw(st.floats(0.2, 0.9))
        return lr
    return m.lr * (0.3 + 0.7 * np.cos(0.5 * np.pi * np.arange(T) / T))


@SETTINGS
@given(m=models(), kernels=kernel_sets(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_transient_loss_curve_matches_expected_loss(m, kernels, data, seed):
    """Mean loss over 8000 chains at every record vs the independent coefficient curve (max |z|, Bonferroni)."""
    T = data.draw(st.integers(20, 60))
    every = data.draw(st.integers(1, 7))
    lr = data.draw(schedules(m, T))
    method = "exact" if lr is None or np.unique(lr).size <= 2 else "step"
    method = data.draw(st.sampled_from(["step", method]))
    u0 = np.random.default_rng(seed).uniform(-2, 2, m.dim)
    times = record_times(T, every)
    truths = []
    for k in kernels:
        truth = coefficient_expected_loss(m, k, T, lrs=lr, u0=u0, times=times)
        theory = qs.expected_loss(m, k, steps=T, lr=lr, u0=u0)[times]
        np.testing.assert_allclose(theory, truth, rtol=1e-8, atol=1e-12)
        truths.append(truth)
    # records whose average involves no noise yet (e.g. a pure lag at t = 1) are compared exactly
    qst.assert_curve_matches(truths, m, kernels, T, chains=8000, alpha=ALPHA, lr=lr, u0=u0, record_every=every,
                             method=method, seed=seed)


# ============================================================================ exact vs step
def _two_sample(X1, X2):
    """p-values that X1, X2 (N, d) come from the same Gaussian (unknown mean and covariance).

    Whitened by the pooled covariance (each sample centred by its own mean): per coordinate a Welch
    z-test of the means and an F(N1-1, N2-1) test of the variances; per pair a z-test of the centred
    products (CLT).
    """
    n1, n2 = X1.shape[0], X2.shape[0]
    c1, c2 = X1 - X1.mean(0), X2 - X2.mean(0)
    W = (c1.T @ c1 + c2.T @ c2) / (n1 + n2 - 2)
    L = np.linalg.cholesky(W)
    Y1 = np.linalg.solve(L, X1.T).T
    Y2 = np.linalg.solve(L, X2.T).T
    v1, v2 = Y1.var(0, ddof=1), Y2.var(0, ddof=1)
    p = [2 * stats.norm.sf(np.abs(Y1.mean(0) - Y2.mean(0)) / np.sqrt(v1 / n1 + v2 / n2))]
    f = v1 / v2
    p.append(2 * np.minimum(stats.f.cdf(f, n1 - 1, n2 - 1), stats.f.sf(f, n1 - 1, n2 - 1)))
    d = X1.shape[1]
    if d > 1:
        iu, ju = np.triu_indices(d, 1)
        a = (Y1 - Y1.mean(0))[:, iu] * (Y1 - Y1.mean(0))[:, ju]
        b = (Y2 - Y2.mean(0))[:, iu] * (Y2 - Y2.mean(0))[:, ju]
        z = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0, ddof=1) / n1 + b.var(0, ddof=1) / n2)
        p.append(2 * stats.norm.sf(np.abs(z)))
    return np.concatenate(p)


@SETTINGS
@given(m=models(), kernels=kernel_sets(), data=st.data(), seed=st.integers(0, 2**31))
def test_exact_and_step_agree_in_distribution(m, kernels, data, seed):
    """Two-sample tests (8000 + 8000 chains) of the averaged iterates at T and of the loss curve."""
    T = data.draw(st.integers(5, 80))
    every = data.draw(st.integers(1, T))
    u0 = np.random.default_rng(seed).uniform(-2, 2, m.dim)
    kw = dict(kernels=kernels, u0=u0, record_every=every)
    a = simulate(m, T, 8000, seed=seed, method="step", **kw)
    b = simulate(m, T, 8000, seed=seed + 1, method="exact", **kw)
    pv = [_two_sample(a.final[i].astype(float), b.final[i].astype(float)) for i in range(len(kernels))]
    se = np.sqrt(a.loss_sem**2 + b.loss_sem**2)
    det = se <= 1e-12 * np.abs(a.loss)
    np.testing.assert_allclose(a.loss[det], b.loss[det], rtol=1e-10)
    pv.append(2 * stats.norm.sf(np.abs(a.loss[~det] - b.loss[~det]) / se[~det]))
    ok, pmin = _bonferroni_ok(pv)
    assert ok, f"Bonferroni p = {pmin:.3g} ({m!r}, {kernels})"


def test_paper_fast_slow_system_exact_long_run():
    """The paper's fast/slow system (omega = (1, 0.015), lr 0.05, EMA 1/450), exact method, 10^5 steps:
    the stationary covariance and loss after 75 mixing times (1/(lr*0.015) = 1333 steps), and the loss
    curve from u0 = 0 recorded every 10^4 steps, against the theory (20000 chains, alpha 1e-4 each)."""
    m = qs.LinearModel(np.array([1.0, 0.015]), lr=0.05)
    ks = (qs.Last(), qs.EMA(1 / 450))
    r = qst.assert_stationary_matches([np.diag(qs.stationary_covariance(m, k)) for k in ks], m, ks, chains=20000,
                                      alpha=ALPHA, burn_in=75, seed=31)
    assert r.steps >= 10**5 and r.method == "exact"
    qst.assert_stationary_matches([qs.stationary_loss(m, k) for k in ks], m, ks, chains=20000, alpha=ALPHA,
                                  burn_in=75, seed=31)
    T = 10**5
    r = qst.assert_curve_matches([qs.expected_loss(m, k, steps=T, u0=np.zeros(2)) for k in ks], m, ks, T,
                                 chains=20000, alpha=ALPHA, u0=np.zeros(2), record_every=10**4, method="exact",
                                 seed=31)
    assert r.steps == T
