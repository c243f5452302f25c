"""quadsgd.theory against independent ground truth (brute-force lagged sums, scipy Lyapunov, shift registers)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quadsgd as qs
from quadsgd import testing as qst

from .groundtruth import brute_expected_loss, brute_stationary_cov, state_system

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- strategies
# quadsgd.testing's strategies over the theory tests' ranges: d <= 4, lr 0.05..0.9 of the stability
# bound, eigenvalues 0.02..2, momentum 0 (twice as often), 0.5, 0.9; no mixing-time bound (nothing
# here is simulated, and slow directions are where closed forms lose digits).
def models(kinds=("diagonal", "dense", "non_normal"), momentum=True, dmax=4):
    return qst.models(dim=(1, dmax), kind=kinds, momentum=(0.0, 0.0, 0.5, 0.9) if momentum else 0.0,
                      lr_fraction=(0.05, 0.9), curvature=(0.02, 2.0), max_mixing=None)


kernels = qst.kernels(max_support=50, ema_decay=(0.03, 1.0), max_weights=12)


def rel_err(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b))


# ----------------------------------------------------------------------------- stationary covariance
@SETTINGS
@given(models(), kernels)
def test_stationary_covariance_matches_brute_force(m, kernel):
    exact = qs.stationary_covariance(m, kernel)
    truth = brute_stationary_cov(m, kernel)
    assert exact.shape == ((m.dim,) if m.diagonal else (m.dim, m.dim))
    assert rel_err(exact, truth) < 1e-9


@SETTINGS
@given(models(), kernels)
def test_lyapunov_fallback_agrees_with_closed_forms(m, kernel):
    a = qs.stationary_covariance(m, kernel)
    b = qs.stationary_covariance(m, kernel, method="lyapunov")
    assert rel_err(b, a) < 1e-9


def test_scalar_check_values_from_field_notes():
    # S = lr/(w(2-lr w)); two-point S(1+g^D)/2; EMA S a/(2-a) (1+(1-a)g)/(1-(1-a)g)
    w, lr, D, a = 0.7, 0.3, 5, 0.2
    g = 1 - lr * w
    S = lr / (w * (2 - lr * w))
    m = qs.LinearModel([w], lr)
    assert qs.stationary_covariance(m)[0] == pytest.approx(S, rel=1e-14)
    assert qs.stationary_covariance(m, qs.TwoPoint(D))[0] == pytest.approx(S * (1 + g**D) / 2, rel=1e-14)
    ema = S * a / (2 - a) * (1 + (1 - a) * g) / (1 - (1 - a) * g)
    assert qs.stationary_covariance(m, qs.EMA(a))[0] == pytest.approx(ema, rel=1e-14)


def _exact_ratio(kernel, g: Fraction) -> Fraction:
    mu = [Fraction(x).limit_denominator(10**9) for x in kernel.weights()]
    tot = sum(mu)
    mu = [x / tot for x in mu]
    L = len(mu)
    c = [sum(mu[j] * mu[j + k] for j in range(L - k)) for k in range(L)]
    acc = Fraction(0)
    for k in range(L - 1, 0, -1):
        acc = (acc + c[k]) * g
    return c[0] + 2 * acc


@pytest.mark.parametrize("kernel", [qs.NPoint(7, 3), qs.SWA(40), qs.TwoPoint(9), qs.Kernel([0.5, 0.25, 0.0, 0.25])])
@pytest.mark.parametrize("one_minus_g", [1e-9, 1e-6, 1e-3, 0.3, 1.7])
def test_variance_ratio_is_accurate_for_slow_and_fast_directions(kernel, one_minus_g):
    # exact rational arithmetic as ground truth; slow directions (g -> 1) are where eq. 21's
    # inverses of (I - Gamma^Delta) lose all digits
    g = 1.0 - one_minus_g
    truth = float(_exact_ratio(kernel, Fraction(g)))
    got = float(qs.kernel_variance_ratio(kernel, np.array([g]))[0])
    assert got == pytest.approx(truth, rel=1e-12)


def test_diagonal_is_order_d_and_handles_a_million_coordinates():
    om = np.exp(np.linspace(np.log(1e-6), np.log(1.0), 1_000_000))
    m = qs.LinearModel(om, 0.5)
    for k in (qs.EMA(1 / 450), qs.NPoint(8, 100), qs.SWA(1000), qs.TwoPoint(10**5)):
        v = qs.stationary_covariance(m, k)
        assert v.shape == (1_000_000,) and np.all(np.isfinite(v)) and np.all(v > 0)
        # averaging never increases the variance of any coordinate
        assert np.all(v <= qs.stationary_covariance(m) * (1 + 1e-12))


# ----------------------------------------------------------------------------- paper formula
@SETTINGS
@given(models(kinds=("diagonal", "dense"), momentum=False), kernels)
def test_paper_formula_is_exact_for_symmetric_omega(m, kernel):
    paper = qs.stationary_covariance(m, kernel, method="paper")
    exact = qs.stationary_covariance(m, kernel)
    # eq. 21 uses (I - Gamma^Delta)^-1: accurate only to ~eps / (lr*kappa*Delta) for slow directions
    assert rel_err(paper, exact) < 1e-7


def test_paper_formula_fails_for_non_normal_omega():
    # A diagonal, C strongly correlated: Omega = Q^-1 A Q is non-normal
    A = np.diag([1.0, 0.05])
    C = np.array([[1.0, 0.95], [0.95, 1.0]])
    m = qs.LinearModel.from_quadratic(A, C, 0.5)
    assert not m.normal
    for k in (qs.Last(), qs.TwoPoint(50), qs.EMA(0.02)):
        paper = qs.stationary_covariance(m, k, method="paper")
        exact = qs.stationary_covariance(m, k)
        truth = brute_stationary_cov(m, k)
        assert rel_err(exact, truth) < 1e-10
        gap = rel_err(paper, exact)
        assert gap > 0.2, gap  # documented: tens of percent off
        assert rel_err(paper, paper.T) > 0.05  # and not symmetric
        # ...yet its loss 0.5 tr(H F) is exact: tr(Q^T A Q f(Omega)) = tr(C A f(A)), and in A's
        # eigenbasis each coordinate of theta evolves on its own (the error sits in the cross terms)
        assert qs.stationary_loss(m, k, method="paper") == pytest.approx(qs.stationary_loss(m, k), rel=1e-10)
    # what the paper's F gets wrong is visible in whitened u-space, e.g. E||u_hat||^2 = tr F
    F = qs.stationary_covariance(m, qs.TwoPoint(50), method="paper")
    E = qs.stationary_covariance(m, qs.TwoPoint(50))
    assert abs(np.trace(F) / np.trace(E) - 1) > 0.1


def test_paper_method_rejects_momentum():
    m = qs.LinearModel([1.0], 0.1, momentum=0.5)
    with pytest.raises(ValueError, match="momentum"):
        qs.stationary_covariance(m, qs.Last(), method="paper")


# ----------------------------------------------------------------------------- loss, effective lr, radius
@SETTINGS
@given(models(kinds=("diagonal", "dense", "non_normal")), kernels)
def test_stationary_loss_is_half_trace(m, kernel):
    C = brute_stationary_cov(m, kernel)
    H = m.loss_matrix()
    truth = 0.5 * (np.dot(H, C) if m.diagonal else np.trace(H @ C))
    assert qs.stationary_loss(m, kernel) == pytest.approx(truth, rel=1e-9)


@SETTINGS
@given(st.floats(1e-3, 1.9), st.integers(1, 10_000))
def test_effective_lr_is_eq20_for_two_point(lr_kappa, delta):
    om = np.array([0.5, 1.0])
    lr = lr_kappa / om.max()
    m = qs.LinearModel(om, lr)
    expected = lr * (1 + (1 - lr * om) ** delta) / 2  # eq. 20
    np.testing.assert_allclose(qs.effective_lr(m, qs.TwoPoint(delta)), expected, rtol=1e-12)


@SETTINGS
@given(models(kinds=("diagonal", "dense")), kernels)
def test_effective_lr_exact_reproduces_the_averaged_variance(m, kernel):
    lr_eff = qs.effective_lr(m, kernel, method="exact")
    lam = np.asarray(m.eigenvalues, dtype=float)
    v_avg = qs.stationary_covariance(qs.LinearModel(lam, m.lr, m.momentum), kernel)
    for i, (lam_i, lr_i) in enumerate(zip(lam, lr_eff)):
        v_sgd = qs.stationary_covariance(qs.LinearModel([lam_i], lr_i, m.momentum))[0]
        assert v_sgd == pytest.approx(v_avg[i], rel=1e-9)
    # and the ratio definition agrees with it to first order in lr*kappa
    np.testing.assert_allclose(qs.effective_lr(m, kernel), lr_eff, rtol=2 * m.lr * lam.max() + 1e-12)


def test_stationary_radius_eq13():
    C = np.diag([1.0, 2.0, 3.0])
    for lr in (1e-3, 1e-2, 1e-1):
        m = qs.LinearModel.from_quadratic(np.eye(3), C, lr)
        exact = qs.stationary_radius(m)
        assert exact == pytest.approx(math.sqrt(6.0 * lr / (2 - lr)), rel=1e-12)
        paper = qs.stationary_radius(m, method="paper")  # eq. 13: ||c|| sqrt(lr/2)
        assert paper == pytest.approx(math.sqrt(6.0 * lr / 2), rel=1e-12)
        assert abs(paper / exact - 1) < lr  # first order in lr
    # sqrt(lr) scaling of the exact radius for a general quadratic
    A = np.diag([1.0, 0.1])
    r = [qs.stationary_radius(qs.LinearModel.from_quadratic(A, C[:2, :2], lr)) for lr in (1e-4, 1e-3)]
    assert r[1] / r[0] == pytest.approx(math.sqrt(10), rel=1e-3)


# ----------------------------------------------------------------------------- Table 1 / Lemma 2
def test_equivalent_schedule_table1_rows():
    k = 6
    lr = np.linspace(0.1, 0.2, k)
    i = np.arange(1, k + 1)  # Table 1's i: 1..k, i = k the last step
    np.testing.assert_allclose(qs.equivalent_schedule(qs.SWA(k), lr), lr * (k + 1 - i) / k)
    np.testing.assert_allclose(qs.equivalent_schedule(qs.TwoPoint(k), lr), lr / 2)
    a = 0.3
    # corrected EMA row: the step r = k + 1 - i steps before the end gets 1 - (1-a)^r
    np.testing.assert_allclose(qs.equivalent_schedule(qs.EMA(a), lr), lr * (1 - (1 - a) ** (k + 1 - i)))


@SETTINGS
@given(st.one_of(st.builds(qs.SWA, st.integers(1, 8)), st.builds(qs.TwoPoint, st.integers(1, 8)),
                 st.builds(qs.NPoint, st.integers(2, 3), st.integers(1, 3))), st.integers(0, 10**6))
def test_lemma2_average_equals_equivalent_side_trip_for_constant_gradients(kernel, seed):
    # gradients that do not depend on theta (Lemma 2's assumption): both paths are exact sums
    rng = np.random.default_rng(seed)
    k, d = kernel.support + 3, 4
    grads = rng.normal(size=(k, d))
    lr = rng.uniform(0.01, 0.1, size=k)
    theta0 = rng.normal(size=d)
    traj = theta0 - np.concatenate([np.zeros((1, d)), np.cumsum(lr[:, None] * grads, axis=0)])
    mu = kernel.weights()
    avg = sum(mu[j] * traj[-1 - j] for j in range(len(mu)))
    side = theta0 - np.sum(qs.equivalent_schedule(kernel, lr)[:, None] * grads, axis=0)
    np.testing.assert_allclose(avg, side, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- transient expected loss
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(dmax=3), kernels.filter(lambda k: not isinstance(k, qs.SWA) or k.window <= 12)
       .filter(lambda k: isinstance(k, qs.EMA) or k.support <= 25), st.integers(1, 60), st.booleans(),
       st.integers(0, 10**6))
def test_expected_loss_matches_shift_register(m, kernel, steps, varying, seed):
    rng = np.random.default_rng(seed)
    lrs = m.lr * rng.uniform(0.2, 1.0, size=steps) if varying else None
    u0 = rng.normal(size=m.dim)
    got = qs.expected_loss(m, kernel, steps=steps, lr=lrs, u0=u0)
    truth = brute_expected_loss(m, kernel, steps, lrs, u0)
    assert got.shape == (steps + 1,)
    np.testing.assert_allclose(got, truth, rtol=1e-9, atol=1e-13 * np.max(np.abs(truth)))


@pytest.mark.parametrize("kernel", [qs.Last(), qs.EMA(0.05), qs.TwoPoint(30), qs.NPoint(3, 10), qs.SWA(20)])
@pytest.mark.parametrize("kind", ["diagonal", "non_normal_momentum"])
def test_expected_loss_converges_to_stationary_loss(kernel, kind):
    if kind == "diagonal":
        m = qs.LinearModel([1.0, 0.2], 0.3)
    else:
        m = qs.LinearModel.from_quadratic(np.diag([1.0, 0.3]), [[1.0, 0.8], [0.8, 1.0]], 0.2, momentum=0.5)
    curve = qs.expected_loss(m, kernel, steps=3000)
    assert curve[-1] == pytest.approx(qs.stationary_loss(m, kernel), rel=1e-10)
    assert curve[0] == pytest.approx(0.5 * np.sum(m.loss_matrix()) if m.diagonal else
                                     0.5 * np.ones(2) @ m.loss_matrix() @ np.ones(2), rel=1e-14)


def test_expected_loss_is_thread_count_independent_in_value():
    m = qs.LinearModel(np.linspace(0.01, 1, 300), 0.5)
    a = qs.expected_loss(m, qs.TwoPoint(7), steps=200)
    b = qs.expected_loss(m, qs.TwoPoint(7), steps=200)
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: qs.LinearModel([1.0, 2.0], 1.0), r"0 < lr < 1"),
    (lambda: qs.LinearModel([1.0], 2.5, momentum=0.2), r"0 < lr < 2.4"),
    (lambda: qs.LinearModel([1.0, -0.1], 0.1), r"omega\[1\]"),
    (lambda: qs.LinearModel([1.0, np.nan], 0.1), "NaN"),
    (lambda: qs.LinearModel([1.0], np.inf), "lr"),
    (lambda: qs.LinearModel([1.0], 0.1, momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
    (lambda: qs.LinearModel(np.array([[0.0, 1.0], [-1.0, 0.0]]), 0.1), "positive real part"),
    (lambda: qs.LinearModel(np.ones((2, 3)), 0.1), "square"),
    (lambda: qs.TwoPoint(0), "delta"),
    (lambda: qs.NPoint(1, 3), "n must be"),
    (lambda: qs.SWA(-2), "window"),
    (lambda: qs.EMA(0.0), r"decay must be in \(0, 1\]"),
    (lambda: qs.EMA(1.5), "decay"),
    (lambda: qs.Kernel([0.5, -0.1, 0.6]), "non-negative"),
    (lambda: qs.Kernel([0.5, 0.4]), "sum to 1"),
    (lambda: qs.LinearModel.from_quadratic(np.eye(2), np.ones((2, 3)), 0.1), "square"),
    (lambda: qs.LinearModel.from_quadratic(np.eye(2), [[1.0, 2.0], [2.0, 1.0]], 0.1), "positive definite"),
    (lambda: qs.LinearModel.from_quadratic(np.eye(2), np.eye(2), 2.5), "unstable"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=0), "steps"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=3, lr=[0.1, 0.1]), "length"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=2, lr=[0.1, 2.0]), "unstable"),
    (lambda: qs.stationary_covariance(qs.LinearModel([1.0], 0.1), qs.Last(), method="magic"), "method"),
    (lambda: qs.stationary_loss(qs.LinearModel(np.array([[1.0, 0.5], [0.0, 1.0]]), 0.1)), "hessian"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=2.5), r"steps must be an integer >= 1"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=True), "steps"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=2, lr="fast"), "lr must be a real array"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=2, lr=[0.1, np.nan]), "lr"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0, 2.0], 0.1), qs.Last(), steps=2, u0=[1.0]), r"u0 .*shape \(2,\)"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), qs.Last(), steps=2, u0=[np.inf]), "u0"),
    (lambda: qs.expected_loss(qs.LinearModel([1.0], 0.1), "ema:0.1", steps=2), "averaging kernel"),
    (lambda: qs.effective_lr(qs.LinearModel([1.0], 0.1), qs.Last(), method="magic"), "method"),
    (lambda: qs.stationary_radius(qs.LinearModel([1.0], 0.1), method="magic"), "method"),
    (lambda: qs.stationary_radius(qs.LinearModel([1.0], 0.1), qs.TwoPoint(3), method="paper"), "Last"),
    (lambda: qs.equivalent_schedule(qs.EMA(0.1), 0.1), "steps must be given"),
    (lambda: qs.equivalent_schedule(qs.SWA(3), 0.1, steps=0), "steps"),
    (lambda: qs.equivalent_schedule(qs.SWA(3), [0.1, -0.1]), "non-negative"),
    (lambda: qs.equivalent_schedule(qs.SWA(3), [0.1, 0.1], steps=3), "does not match"),
    (lambda: qs.LinearModel([1.0], "0.1"), "lr must be a finite real number > 0"),
    (lambda: qs.LinearModel([1.0], 0.0), "lr"),
    (lambda: qs.LinearModel([True, False], 0.1), "omega must be a real array"),
    (lambda: qs.LinearModel([1.0], 0.1).with_lr(5.0), "unstable"),
    (lambda: qs.LinearModel([1.0], 0.1).with_lr(np.nan), "lr"),
    (lambda: qs.stability_bound([1.0], momentum=1.0), "momentum"),
])
def test_bad_input_names_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kernel_autocorrelation_and_cumulative():
    for k in (qs.TwoPoint(3), qs.NPoint(3, 2), qs.SWA(5), qs.Kernel([0.1, 0.6, 0.3])):
        mu = k.weights()
        c = np.array([np.sum(mu[: len(mu) - j] * mu[j:]) for j in range(len(mu))])
        np.testing.assert_allclose(k.autocorrelation(), c, atol=1e-15)
        assert mu.sum() == pytest.approx(1.0)
    e = qs.EMA(0.1)
    mu = e.weights(2000)
    np.testing.assert_allclose(e.autocorrelation(5), [np.sum(mu[: 2000 - j] * mu[j:]) for j in range(5)], rtol=1e-12)


@pytest.mark.parametrize("W", [2, 3, 17, 200])
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_swa_order_T_path_matches_order_TW_path(W, beta):
    # two independent implementations: the block-sum O(T) recursions for SGD SWA, and the generic
    # per-lag propagation (which the shift-register test checks for small windows)
    from quadsgd.theory import _moments

    rng = np.random.default_rng(W)
    lam = np.array([1.0, 0.3, 0.01, 1.9])
    T = 500
    lrs = rng.uniform(0.2, 1.0, T)
    u0 = rng.normal(size=4)
    w = np.full(W, 1.0 / W)
    if beta == 0.0:
        fast = _moments.sgd_diag_cov_loss_swa(lam, lam, lrs, W, 64)
        slow = _moments.sgd_diag_cov_loss(lam, lam, lrs, 1, w, 0.0, 64)
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)
    fast_mean = _moments.mean_loss_diag_swa(lam, lam, u0, lrs * 0.5, beta, W)
    slow_mean = _moments.mean_loss_diag(lam, lam, u0, lrs * 0.5, beta, 1, w, 0.0)
    np.testing.assert_allclose(fast_mean, slow_mean, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("kernel", [qs.NPoint(4, 1), qs.Kernel(np.full(5, 0.2)), qs.SWA(5), qs.TwoPoint(1)], ids=repr)
@pytest.mark.parametrize("beta", [0.0, 0.6])
def test_uniform_windows_of_any_kernel_class_take_the_block_sum_path(kernel, beta):
    # NPoint(n, 1), a uniform Kernel and TwoPoint(1) are uniform windows of consecutive iterates, like
    # SWA: expected_loss gives them the O(dT) path (tracking().uniform_window >= 2); shift register truth
    assert kernel.tracking().uniform_window >= 2
    m = qs.LinearModel(np.array([1.0, 0.3, 0.02]), 0.5, momentum=beta)
    rng = np.random.default_rng(3)
    lrs = m.lr * rng.uniform(0.3, 1.0, 40)
    u0 = rng.normal(size=3)
    truth = brute_expected_loss(m, kernel, 40, lrs, u0)
    np.testing.assert_allclose(qs.expected_loss(m, kernel, steps=40, lr=lrs, u0=u0), truth, rtol=1e-10, atol=0)


def test_paper_radius_takes_any_last_iterate_kernel():
    m = qs.LinearModel.from_quadratic(np.eye(2), np.diag([1.0, 2.0]), 0.01)
    ref = qs.stationary_radius(m, method="paper")
    assert ref == pytest.approx(math.sqrt(3.0 * 0.01 / 2), rel=1e-14)
    for k in (qs.SWA(1), qs.Kernel([1.0]), qs.EMA(1.0)):
        assert k.is_last and qs.stationary_radius(m, k, method="paper") == ref


@pytest.mark.parametrize("beta", [0.0, 0.7])
@pytest.mark.parametrize("ema", [0.0, 0.2])
def test_compiled_transition_is_the_heavy_ball_one_step_matrices(beta, ema):
    # quadsgd.theory._moments._fill_transition is the compiled twin of quadsgd._heavy_ball.one_step_matrices
    from quadsgd._heavy_ball import one_step_matrices
    from quadsgd.theory import _moments

    lam = np.array([1.3, 0.2, 0.01])
    lr = 0.37
    m = qs.LinearModel(lam, lr, momentum=beta)
    M, N = one_step_matrices(m, lr, (ema,) if ema else (), False)
    s = 2 if beta else 1
    ss = s + (1 if ema else 0)
    for i, li in enumerate(lam):
        Mc, Nc = np.zeros((ss, ss)), np.zeros(ss)
        _moments._fill_transition(li, lr, beta, s, ema, Mc, Nc)
        np.testing.assert_allclose(Mc, M[i], rtol=1e-15, atol=0)
        np.testing.assert_allclose(Nc, N[i], rtol=1e-15, atol=0)
    # and both are the oracle's (u, buf) transition
    if not ema:
        Mo, No = state_system(m) if beta else (np.diag(1 - lr * lam), lr * np.eye(3))
        p = 2 if beta else 1
        for i in range(3):
            idx = [i + k * 3 for k in range(p)]
            np.testing.assert_allclose(M[i], Mo[np.ix_(idx, idx)], rtol=1e-15, atol=0)
            np.testing.assert_allclose(N[i], No[idx, i], rtol=1e-15, atol=0)
